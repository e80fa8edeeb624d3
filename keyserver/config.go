package keyserver

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.step.sm/crypto/pemutil"
	"gopkg.in/yaml.v3"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
)

// FileConfig is the keyserver's configuration file, keyserver.yaml.
// Relative paths in it are relative to the file's own directory.
type FileConfig struct {
	Listen      string      `yaml:"listen"`
	Names       []string    `yaml:"names"`
	Authorities string      `yaml:"authorities"` // directory with keygranting/, server/, admin/ and the policy's named authorities
	Policy      string      `yaml:"policy,omitempty"`
	Store       StoreConfig `yaml:"store"`
	AuditLog    string      `yaml:"audit_log"`
	LogLevel    string      `yaml:"log_level,omitempty"` // debug, info, warn, error

	AdmissionGrace time.Duration `yaml:"admission_grace,omitempty"`
	TokenTTL       time.Duration `yaml:"token_ttl,omitempty"`

	// Load shedding of the requests that sign: see Config.MaxInFlight.
	MaxConns    int `yaml:"max_conns,omitempty"`
	MaxInFlight int `yaml:"max_in_flight,omitempty"`
	MaxQueue    int `yaml:"max_queue,omitempty"`
	// Profiling serves Go's profiles to administrators (PathProfile).
	Profiling bool `yaml:"profiling,omitempty"`
	// OldCGCLifetime is the key earlier versions had here; it is refused
	// with a pointer to where the setting went.
	OldCGCLifetime time.Duration `yaml:"cgc_lifetime,omitempty"`
	MaxTokenTTL    time.Duration `yaml:"max_token_ttl,omitempty"`

	// ACME turns on the policy's public certificates (acme: in the
	// policy). Their private keys are sealed in the store under the
	// key-encryption key in acme.kek, next to this file.
	ACME *ACMEFileConfig `yaml:"acme,omitempty"`

	dir string // the file's directory
}

// ACMEFileConfig is keyserver.yaml's acme section.
type ACMEFileConfig struct {
	// HTTP01Listen is the plain-HTTP listener answering ACME http-01
	// challenges (front ends proxy /.well-known/acme-challenge/ to it).
	HTTP01Listen string `yaml:"http01_listen,omitempty"`
	// HTTP01Probe is where the keyserver fetches its own answer before
	// telling the CA: best a front end's address, so the whole path is
	// checked; default the http-01 listener itself.
	HTTP01Probe     string         `yaml:"http01_probe,omitempty"`
	StagingTime     time.Duration  `yaml:"staging_time,omitempty"`
	MaxOrdersPerDay int            `yaml:"max_orders_per_day,omitempty"`
	DNS             *ACMEDNSConfig `yaml:"dns,omitempty"`
}

// ACMEDNSConfig is the dns-01 part of keyserver.yaml's acme section.
type ACMEDNSConfig struct {
	// Listen, Zone and Nameservers run the keyserver's own DNS server
	// (UDP and TCP on Listen) for Zone, which the parent zone delegates
	// to Nameservers (these keyservers' names); operators point
	// _acme-challenge.<name> at <name>.<zone> by CNAME.
	Listen      string   `yaml:"listen,omitempty"`
	Zone        string   `yaml:"zone,omitempty"`
	Nameservers []string `yaml:"nameservers,omitempty"`
	// Resolvers are the recursive resolvers (host:port) the keyserver
	// asks, for DNS providers, to follow CNAMEs and find the servers to
	// check an answer on; default /etc/resolv.conf's.
	Resolvers []string `yaml:"resolvers,omitempty"`
}

// StoreConfig chooses the store.
type StoreConfig struct {
	Type string `yaml:"type"` // "bolt" (embedded, the default)
	Path string `yaml:"path"`
}

// decodeYAML decodes exactly one YAML document, refusing unknown keys.
func decodeYAML(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: empty file", path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// LoadConfig reads and checks a keyserver configuration file.
func LoadConfig(path string) (*FileConfig, error) {
	var c FileConfig
	if err := decodeYAML(path, &c); err != nil {
		return nil, fmt.Errorf("keyserver: config %w", err)
	}
	base := filepath.Dir(path)
	rel := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	rel(&c.Authorities)
	rel(&c.Store.Path)
	rel(&c.AuditLog)
	rel(&c.Policy)
	c.dir = base
	var problems []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		problems = append(problems, fmt.Errorf("listen: %q is not host:port", c.Listen))
	}
	if len(c.Names) == 0 {
		problems = append(problems, errors.New("names: at least one name for the keyserver's certificate is required"))
	}
	if c.Authorities == "" {
		problems = append(problems, errors.New("authorities: a directory is required"))
	}
	switch c.Store.Type {
	case "", "bolt":
		if c.Store.Path == "" {
			problems = append(problems, errors.New("store.path: required for the bolt store"))
		}
	default:
		problems = append(problems, fmt.Errorf("store.type: unknown store %q (want bolt)", c.Store.Type))
	}
	if c.MaxConns < 0 || c.MaxInFlight < 0 || c.MaxQueue < 0 {
		problems = append(problems, errors.New("max_conns, max_in_flight, max_queue: must not be negative"))
	}
	if c.OldCGCLifetime != 0 {
		problems = append(problems, errors.New("cgc_lifetime: moved into the policy file, as cgc: {lifetime: ...}; remove it here"))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		problems = append(problems, err)
	}
	if a := c.ACME; a != nil {
		if a.HTTP01Listen != "" {
			if _, _, err := net.SplitHostPort(a.HTTP01Listen); err != nil {
				problems = append(problems, fmt.Errorf("acme.http01_listen: %q is not host:port", a.HTTP01Listen))
			}
		}
		if a.HTTP01Probe != "" {
			if _, _, err := net.SplitHostPort(a.HTTP01Probe); err != nil {
				problems = append(problems, fmt.Errorf("acme.http01_probe: %q is not host:port", a.HTTP01Probe))
			}
		}
		if a.StagingTime < 0 || a.MaxOrdersPerDay < 0 {
			problems = append(problems, errors.New("acme.staging_time, acme.max_orders_per_day: must not be negative"))
		}
		if d := a.DNS; d != nil {
			if (d.Listen == "") != (d.Zone == "") || d.Zone != "" && len(d.Nameservers) == 0 {
				problems = append(problems, errors.New("acme.dns: the keyserver's own DNS server needs listen, zone and nameservers together"))
			}
			if d.Listen != "" {
				if _, _, err := net.SplitHostPort(d.Listen); err != nil {
					problems = append(problems, fmt.Errorf("acme.dns.listen: %q is not host:port", d.Listen))
				}
			}
			for _, r := range d.Resolvers {
				if _, _, err := net.SplitHostPort(r); err != nil {
					problems = append(problems, fmt.Errorf("acme.dns.resolvers: %q is not host:port", r))
				}
			}
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("keyserver: config %s: %w", path, err)
	}
	return &c, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log_level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

// Level is the configured log level.
func (c *FileConfig) Level() slog.Level {
	l, _ := parseLevel(c.LogLevel)
	return l
}

// Open builds a Server from a configuration file's settings: it loads the
// authorities and opens the store and the audit log. Close the returned
// closer after the server has stopped.
func Open(c *FileConfig, logger *slog.Logger) (*Server, io.Closer, error) {
	auths := map[string]*authority.Authority{}
	for _, name := range []string{authority.KeyGranting, authority.Server, authority.Admin} {
		a, err := authority.Load(filepath.Join(c.Authorities, name), name, authority.Options{})
		if err != nil {
			return nil, nil, err
		}
		auths[name] = a
	}
	st, err := store.OpenBolt(c.Store.Path, store.BoltOptions{})
	if err != nil {
		return nil, nil, err
	}
	closers := closerFuncs{st.Close}
	var audit io.Writer = io.Discard
	if c.AuditLog != "" {
		f, err := OpenAuditFile(c.AuditLog)
		if err != nil {
			closers.Close()
			return nil, nil, err
		}
		audit = f
		closers = append(closers, f.Close)
	}
	var acmeCfg *ACMEConfig
	if a := c.ACME; a != nil {
		kek, err := acme.LoadKEK(c.dir)
		if err != nil {
			closers.Close()
			return nil, nil, fmt.Errorf("keyserver: %w (keyctl init writes it; for an older directory, run keyctl acme kek --dir %s)", err, c.dir)
		}
		acmeCfg = &ACMEConfig{KEK: kek, HTTP01Probe: a.probeAddr(), Staging: a.StagingTime, MaxOrdersPerDay: a.MaxOrdersPerDay}
		if d := a.DNS; d != nil {
			acmeCfg.DNSZone, acmeCfg.DNSNameservers, acmeCfg.DNSResolvers = d.Zone, d.Nameservers, d.Resolvers
		}
	}
	srv, err := New(Config{
		Names:        c.Names,
		KeyGranting:  auths[authority.KeyGranting],
		Server:       auths[authority.Server],
		Admin:        auths[authority.Admin],
		Store:        st,
		PolicyFile:   c.Policy,
		MaxConns:     c.MaxConns,
		MaxInFlight:  c.MaxInFlight,
		MaxQueue:     c.MaxQueue,
		Profiling:    c.Profiling,
		AuthorityDir: c.Authorities,
		Grace:        c.AdmissionGrace,
		TokenTTL:     c.TokenTTL,
		MaxTokenTTL:  c.MaxTokenTTL,
		Audit:        audit,
		Logger:       logger,
		ACME:         acmeCfg,
	})
	if err != nil {
		closers.Close()
		return nil, nil, err
	}
	return srv, closers, nil
}

// probeAddr is where the http-01 self-probe connects: the configured
// probe, else the listener itself (on loopback when it listens on every
// address).
func (a *ACMEFileConfig) probeAddr() string {
	if a.HTTP01Probe != "" || a.HTTP01Listen == "" {
		return a.HTTP01Probe
	}
	host, port, _ := net.SplitHostPort(a.HTTP01Listen)
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

type closerFuncs []func() error

func (cs closerFuncs) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// AdminConfig is keyctl's configuration: where the keyserver is, how to
// recognise it, and the administrator's client credential. Relative paths
// are relative to the file's own directory.
type AdminConfig struct {
	Servers  []string `yaml:"servers"`   // https:// URLs
	ServerCA string   `yaml:"server_ca"` // the server authority's root certificate
	Cert     string   `yaml:"cert"`      // administrator's certificate (and chain)
	Key      string   `yaml:"key"`
}

// LoadAdminConfig reads keyctl's configuration file.
func LoadAdminConfig(path string) (*AdminConfig, error) {
	var c AdminConfig
	if err := decodeYAML(path, &c); err != nil {
		return nil, fmt.Errorf("keyctl: config %w", err)
	}
	if len(c.Servers) == 0 || c.ServerCA == "" || c.Cert == "" || c.Key == "" {
		return nil, fmt.Errorf("keyctl: config %s: servers, server_ca, cert and key are all required", path)
	}
	base := filepath.Dir(path)
	for _, p := range []*string{&c.ServerCA, &c.Cert, &c.Key} {
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return &c, nil
}

// ServerRoot reads the keyserver's trust anchor named by the config.
func (c *AdminConfig) ServerRoot() (*x509.Certificate, error) {
	root, err := pemutil.ReadCertificate(c.ServerCA)
	if err != nil {
		return nil, fmt.Errorf("keyctl: server_ca: %w", err)
	}
	return root, nil
}

// TLSConfig is the client side of an administrator's mutual TLS: the
// keyserver is verified against server_ca, and the admin certificate is
// presented.
func (c *AdminConfig) TLSConfig() (*tls.Config, error) {
	root, err := c.ServerRoot()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("keyctl: admin credential: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{pair}}, nil
}
