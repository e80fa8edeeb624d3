package keyserver

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
	"github.com/keysystem/keysystem/keyserver/acme"
)

// Files that Init writes, relative to its directory.
const (
	ConfigFile      = "keyserver.yaml"
	AdminConfigFile = "keyctl.yaml"
	AuthoritiesDir  = "authorities"
	AdminDir        = "admin"
	StoreFile       = "keyserver.db"
	AuditFile       = "audit.log"
	PolicyFile      = "policy.yaml"
)

// ExampleAuthority is the named authority Init creates for the example
// policy it writes.
const ExampleAuthority = "internal"

// AdminCertLifetime is the lifetime of the administrator certificate that
// Init writes.
const AdminCertLifetime = 365 * 24 * time.Hour

// InitOptions say what keyserver directory Init writes.
type InitOptions struct {
	Dir     string
	Listen  string            // host:port the keyserver listens on
	Names   []string          // extra DNS names or IPs for its certificate
	KeyType authority.KeyType // of every authority Init creates
	// Intermediate makes every authority Init creates (the built-ins and
	// the example's) sign with an intermediate, so its root key can be
	// moved offline.
	Intermediate bool
}

// Authorities are the three built-in authorities.
type Authorities struct {
	KeyGranting, Server, Admin *authority.Authority
}

// GenerateAuthorities creates the three built-in authorities in memory.
func GenerateAuthorities(kt authority.KeyType, intermediate bool) (*Authorities, error) {
	var as Authorities
	for _, a := range []struct {
		name string
		dst  **authority.Authority
	}{{authority.KeyGranting, &as.KeyGranting}, {authority.Server, &as.Server}, {authority.Admin, &as.Admin}} {
		ca, err := authority.Generate(authority.Config{Name: "keysystem " + a.name, KeyType: kt, Intermediate: intermediate})
		if err != nil {
			return nil, err
		}
		*a.dst = ca
	}
	return &as, nil
}

// ServerNames is the list of names the keyserver's certificate carries:
// the given names, then the listen host when it is specific, then loopback
// names when nothing else was given.
func ServerNames(listen string, names []string) ([]string, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("keyserver: listen address %q: %w", listen, err)
	}
	out := slices.Clone(names)
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) && !slices.Contains(out, host) {
		out = append(out, host)
	}
	if len(out) == 0 {
		out = []string{"localhost", "127.0.0.1", "::1"}
	}
	return out, nil
}

// ServerURL is the URL clients use to reach a keyserver listening on
// listen and named names[0].
func ServerURL(listen string, names []string) string {
	host, port, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = names[0]
	}
	return (&url.URL{Scheme: "https", Host: net.JoinHostPort(host, port)}).String()
}

// Init writes a complete keyserver directory: the three built-in
// authorities, the named authority ExampleAuthority, an example policy
// (policy.yaml) that uses it, keyserver.yaml (which names the policy), an
// administrator credential and keyctl.yaml. It refuses a directory that
// already holds a keyserver.
func Init(opts InitOptions) error {
	if opts.Dir == "" || opts.Listen == "" {
		return errors.New("keyserver: init needs a directory and a listen address")
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, ConfigFile)); err == nil {
		return fmt.Errorf("keyserver: %s already holds a keyserver (%s exists); refusing to overwrite its keys", opts.Dir, ConfigFile)
	}
	names, err := ServerNames(opts.Listen, opts.Names)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	as, err := GenerateAuthorities(opts.KeyType, opts.Intermediate)
	if err != nil {
		return err
	}
	example, err := authority.Generate(authority.Config{Name: "keysystem " + ExampleAuthority, KeyType: opts.KeyType, Intermediate: opts.Intermediate})
	if err != nil {
		return err
	}
	for name, a := range map[string]*authority.Authority{authority.KeyGranting: as.KeyGranting, authority.Server: as.Server, authority.Admin: as.Admin, ExampleAuthority: example} {
		if err := a.Save(filepath.Join(opts.Dir, AuthoritiesDir, name)); err != nil {
			return err
		}
	}
	if err := keyfile.Write(filepath.Join(opts.Dir, PolicyFile), []byte(examplePolicy), 0o644); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	var quoted []string
	for _, n := range names {
		quoted = append(quoted, strconv.Quote(n))
	}
	conf := fmt.Sprintf(configTemplate, strconv.Quote(opts.Listen), strings.Join(quoted, ", "),
		AuthoritiesDir, PolicyFile, StoreFile, AuditFile)
	if err := acme.CreateKEK(opts.Dir, nil); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	if err := keyfile.Write(filepath.Join(opts.Dir, ConfigFile), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	return WriteAdminCredential(opts.Dir, as.Admin, as.Server, []string{ServerURL(opts.Listen, names)})
}

const configTemplate = `# keyserver configuration, written by keyctl init.
# Relative paths are relative to this file's directory.

listen: %s
# Names (DNS names or IP addresses) in the keyserver's TLS certificate:
# every name nodes and administrators use to reach it.
names: [%s]

# keygranting/ (signs nodes' CGCs), server/ (signs this server's TLS
# certificate) and admin/ (signs administrators' certificates), and the
# named authorities of the policy (keyctl authority create NAME). With an
# intermediate, the root key may be moved offline.
authorities: %s

# Which nodes may get what, and the CGC lifetime (keyctl policy reload
# after editing it).
policy: %s

store:
  type: bolt            # the embedded single-file store
  path: %s
audit_log: %s           # append-only JSON lines: every issue, admit, deny, renew, revoke
log_level: info

admission_grace: 10m    # a node whose answer was lost may retry its token with the same key
token_ttl: 1h           # default lifetime of an admission token
max_token_ttl: 168h     # longest lifetime keyctl token issue --ttl may ask for

# Under a storm: at most max_conns connections are served at once (the
# rest wait to be accepted), and requests that sign (admit, renew, sign)
# beyond these get 503 with Retry-After instead of piling up.
max_conns: 256
max_in_flight: 64       # at once
max_queue: 1024         # waiting (up to 5s) for a turn
# Memory: the keyserver runs Go's collector at GOGC=400 with a 128MiB soft
# limit (GOMEMLIMIT); set either in its environment to change them.

# Public certificates over ACME: the policy's acme: section (docs/acme.md).
# Their private keys are sealed in the store under the key in acme.kek:
# copy that file to every keyserver sharing the store.
acme:
  # The plain-HTTP listener answering ACME http-01 challenges; front ends
  # proxy /.well-known/acme-challenge/ to it. Needed for http-01 labels.
  # http01_listen: "0.0.0.0:8080"
  # Where the keyserver fetches its own answer before telling the CA
  # (default: the listener); a front end's address checks the whole path.
  # http01_probe: "www.example.org:80"
  staging_time: 1h        # a new certificate is handed out this long after its NotBefore
  max_orders_per_day: 10  # per label, one per key type; failures back off from 5m to 4h
  # dns-01 through the keyserver's own DNS server: delegate the zone to
  # the keyservers (NS records naming them), and CNAME each
  # _acme-challenge.<name> to <name>.<zone>. Accounts with a dns provider
  # in the policy do not need it.
  # dns:
  #   listen: "0.0.0.0:53"
  #   zone: acme.example.org
  #   nameservers: [keyserver1.example.org, keyserver2.example.org]
`

// examplePolicy is the policy Init writes: short, and valid as written.
// docs/policy.md has every key and a fuller example.
const examplePolicy = `# keyserver policy, written by keyctl init: which nodes may get what.
# Edit it, then run keyctl policy reload; a bad file is refused with
# file:line and the keyserver keeps the policy it had. docs/policy.md
# describes every key and has a fuller example.

cgc:
  lifetime: 720h          # certificate-granting certificates live 30 days; nodes renew at ~2/3
  renew_after_expiry: 0s  # so a node whose CGC has expired needs a new token

# Named X.509 authorities, each in authorities/<name>/ next to the built-in
# ones; keyctl authority create NAME [--parent ROOT] makes more.
authorities:
  internal: {}

# A node's groups: those whose nodes or patterns match its name, and those
# its token was issued with (keyctl token issue --group).
groups:
  all-web:
    patterns: ["web*.example.org"]   # label-wise glob: * and ? never cross a dot

# What a node may ask for, and which nodes may: to: {all: true} is every
# admitted node; or to: {groups: [all-web], nodes: [...], patterns: [...]}.
grants:
  node-tls:               # keyclient item: {type: x509, grant: node-tls, key: ..., cert: ...}
    type: x509
    authority: internal
    usage: both           # server | client | both
    subject:
      common_name: "{{.Node}}"
    dns: ["{{.Node}}"]
    ips: ["{{.IPs}}"]     # the addresses its token was issued with (keyctl token issue --ip)
    lifetime: 168h
    to: {all: true}
  internal-ca:            # keyclient item: {type: static, name: internal-ca, path: ...}
    type: static
    authorities: [internal]   # the root certificate of internal, as PEM
    to: {all: true}
`

// WriteAdminCredential issues an administrator certificate and writes it,
// its key, the keyserver's trust anchor and keyctl.yaml into dir.
func WriteAdminCredential(dir string, admin, server *authority.Authority, servers []string) error {
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		return err
	}
	cert, err := admin.Sign(authority.Request{
		PublicKey:   key.Public(),
		CommonName:  "admin",
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		Lifetime:    AdminCertLifetime,
	})
	if err != nil {
		return err
	}
	keyPEM, err := authority.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	adir := filepath.Join(dir, AdminDir)
	if err := os.MkdirAll(adir, 0o700); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"admin.key", keyPEM, 0o600},
		{"admin.crt", authority.EncodePEM(append([]*x509.Certificate{cert}, admin.Chain()...)...), 0o644},
		{"keyserver-ca.crt", authority.EncodePEM(server.Root()), 0o644},
	}
	for _, f := range files {
		if err := keyfile.Write(filepath.Join(adir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	ac := AdminConfig{
		Servers:  servers,
		ServerCA: filepath.Join(AdminDir, "keyserver-ca.crt"),
		Cert:     filepath.Join(AdminDir, "admin.crt"),
		Key:      filepath.Join(AdminDir, "admin.key"),
	}
	return writeYAML(filepath.Join(dir, AdminConfigFile), "keyctl configuration: the administrator's credential; keep it as secret as the keys it names", ac)
}

func writeYAML(path, comment string, v any) error {
	data, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	data = append([]byte("# "+comment+"\n"), data...)
	if err := keyfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("keyserver: %w", err)
	}
	return nil
}
