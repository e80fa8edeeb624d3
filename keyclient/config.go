package keyclient

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/tokens"
)

// Config is a node's keyclient configuration file, as `keyctl installer`
// writes it.
type Config struct {
	Node        string   `yaml:"node"`
	Servers     []string `yaml:"servers"`
	TrustAnchor string   `yaml:"trust_anchor"` // sha256:<hex> of the keyserver root's SubjectPublicKeyInfo
	Token       string   `yaml:"token,omitempty"`
	TokenFile   string   `yaml:"token_file,omitempty"` // removed once the token is spent
	StateDir    string   `yaml:"state_dir"`
	KeyType     string   `yaml:"key_type,omitempty"` // ecdsa-p256 (default), ed25519, rsa-3072

	// CheckInterval is how often the items' files on disk are checked
	// (read and parsed, no keyserver call); default 1m.
	CheckInterval string `yaml:"check_interval,omitempty"`
	Items         []Item `yaml:"items,omitempty"`
}

// Item is one thing the node keeps fresh besides its CGC: a certificate
// for a policy grant (type x509), a static file (type static), or a
// public certificate the keyserver obtains over ACME, with its key (type
// acme). Fields that do not belong to the item's type are refused.
type Item struct {
	Type string `yaml:"type"` // x509, static or acme

	// x509: the grant, where its key and certificates go, and what to ask
	// for. acme: the paths key, cert, chain and fullchain, and key_type.
	Grant     string   `yaml:"grant,omitempty"`
	Key       string   `yaml:"key,omitempty"`       // required
	Cert      string   `yaml:"cert,omitempty"`      // x509: required; the leaf alone
	Chain     string   `yaml:"chain,omitempty"`     // issuer chain, no root
	FullChain string   `yaml:"fullchain,omitempty"` // leaf + chain
	CA        string   `yaml:"ca,omitempty"`        // the authority's root
	KeyType   string   `yaml:"key_type,omitempty"`  // x509: default ecdsa-p256; acme: ecdsa or rsa, default the label's first
	DNS       []string `yaml:"dns,omitempty"`       // extra names to ask for, within the grant's allow
	IPs       []string `yaml:"ips,omitempty"`
	URIs      []string `yaml:"uris,omitempty"`

	// static: the grant's name and where its content goes.
	Name string `yaml:"name,omitempty"`
	Path string `yaml:"path,omitempty"`

	// acme: the policy's ACME certificate label.
	Label string `yaml:"label,omitempty"`

	// Every type.
	Owner         string `yaml:"owner,omitempty"`          // user name or uid; default: keyclient's own
	Group         string `yaml:"group,omitempty"`          // group name or gid
	Mode          string `yaml:"mode,omitempty"`           // octal; x509 and acme: the key's (default 0600), static: the file's (default 0644)
	Reload        string `yaml:"reload,omitempty"`         // run by /bin/sh -c after the item's files changed
	ReloadTimeout string `yaml:"reload_timeout,omitempty"` // default 30s
	Refresh       string `yaml:"refresh,omitempty"`        // how often the keyserver is asked; default 1h (acme: 15m)
}

// ConfigError is a configuration that cannot work; the command line maps it
// to exit code 2.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// LoadConfig reads and checks a configuration file. Unknown keys are
// refused, and every problem is reported at once.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("keyclient: %w", err)}
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("empty file")
		}
		return nil, &ConfigError{fmt.Errorf("keyclient: config %s: %w", path, err)}
	}
	base := filepath.Dir(path)
	paths := []*string{&c.StateDir, &c.TokenFile}
	for i := range c.Items {
		it := &c.Items[i]
		paths = append(paths, &it.Key, &it.Cert, &it.Chain, &it.FullChain, &it.CA, &it.Path)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if err := c.Check(); err != nil {
		return nil, &ConfigError{fmt.Errorf("keyclient: config %s: %w", path, err)}
	}
	return &c, nil
}

// Check reports every problem with c, the items' included.
func (c *Config) Check() error {
	_, err := c.settings()
	return err
}

// settings checks c and resolves what the items and check_interval say
// into the form the client runs on: durations, modes, owners.
func (c *Config) settings() (*settings, error) {
	var errs []error
	if err := tokens.ValidNodeName(c.Node); err != nil {
		errs = append(errs, fmt.Errorf("node: %w", err))
	}
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("servers: at least one keyserver URL is required"))
	}
	for _, s := range c.Servers {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			errs = append(errs, fmt.Errorf("servers: %q is not an https://host[:port] URL", s))
		}
	}
	if pin, err := authority.ParsePin(c.TrustAnchor); err != nil {
		errs = append(errs, fmt.Errorf("trust_anchor: %w", err))
	} else {
		c.TrustAnchor = pin
	}
	if c.Token != "" && c.TokenFile != "" {
		errs = append(errs, errors.New("token and token_file: give one, not both"))
	}
	if c.Token != "" {
		if _, err := tokens.Parse(c.Token); err != nil {
			errs = append(errs, fmt.Errorf("token: not a valid token (mistyped?): %w", err))
		}
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state_dir: required"))
	}
	if _, err := authority.ParseKeyType(c.KeyType); err != nil {
		errs = append(errs, fmt.Errorf("key_type: %w", err))
	}
	s := &settings{checkInterval: defaultCheckInterval}
	if c.CheckInterval != "" {
		d, err := parseDuration(c.CheckInterval, time.Second, 24*time.Hour)
		if err != nil {
			errs = append(errs, fmt.Errorf("check_interval: %w", err))
		}
		s.checkInterval = d
	}
	specs, itemErrs := c.resolveItems()
	s.items = specs
	errs = append(errs, itemErrs...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// token returns the admission token, from the file when one is named.
func (c *Config) token() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	data, err := os.ReadFile(c.TokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("keyclient: token file: %w", err)
	}
	t := strings.TrimSpace(string(data))
	if _, err := tokens.Parse(t); err != nil {
		return "", &ConfigError{fmt.Errorf("keyclient: token file %s does not hold a valid token (mistyped?): %w", c.TokenFile, err)}
	}
	return t, nil
}

// Marshal encodes c as YAML with a header comment.
func (c *Config) Marshal(header string) ([]byte, error) {
	data, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("keyclient: %w", err)
	}
	var b bytes.Buffer
	for _, line := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString("# " + line + "\n")
	}
	b.Write(data)
	return b.Bytes(), nil
}
