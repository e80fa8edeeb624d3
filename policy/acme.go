package policy

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The acme: section: accounts at ACME certificate authorities, and the
// public certificates (labels) the keyserver obtains from them and hands
// to the nodes each label names.

// Challenge types.
const (
	ChallengeHTTP01 = "http-01"
	ChallengeDNS01  = "dns-01"
)

// Directory URLs the policy may name by a short name.
const (
	LetsEncrypt        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

var directoryShorthands = map[string]string{
	"letsencrypt":         LetsEncrypt,
	"letsencrypt-staging": LetsEncryptStaging,
}

// maxACMENames is Let's Encrypt's limit of names in one certificate.
const maxACMENames = 100

// DefaultACMEKeyTypes are the key types a label is issued in unless it
// says: front ends serving old clients need an RSA certificate beside the
// ECDSA one.
var DefaultACMEKeyTypes = []string{"ecdsa-p256", "rsa-2048"}

// ACMEKeyTypes are the key types a label may ask for.
var ACMEKeyTypes = []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"}

// ACMEAccount is an account at an ACME certificate authority.
type ACMEAccount struct {
	Name      string
	Directory string
	// StagingDirectory, when set, is where a label's names are proven
	// first (a certificate obtained and thrown away), so that a mistake
	// costs the staging CA's generous limits, not the real one's.
	StagingDirectory string
	Email            string
	EAB              *EAB
	// Roots, when set, are the only trust anchors for the directory's
	// TLS certificate (a private ACME CA); nil means the system's.
	Roots []*x509.Certificate
	// DNS, when set, answers this account's dns-01 challenges through a
	// lego DNS provider; nil means the keyserver's built-in DNS server.
	DNS *DNSProvider
	// Line is where the account is in the policy file, for problems the
	// keyserver finds with it (a DNS provider it does not link).
	Line int
}

// EAB is an external account binding (RFC 8555 §7.3.4).
type EAB struct {
	KeyID string
	HMAC  []byte
}

// String leaves the HMAC key out, so an EAB printed or logged shows none.
func (e EAB) String() string { return fmt.Sprintf("EAB{KeyID: %s, HMAC: [redacted]}", e.KeyID) }

// DNSProvider names a lego DNS provider and its settings, given as the
// environment variables lego documents for it.
type DNSProvider struct {
	Name string
	Env  map[string]string
}

// String names the settings but not their values, which hold credentials.
func (d DNSProvider) String() string {
	return fmt.Sprintf("DNSProvider{Name: %s, Env: %s}", d.Name, strings.Join(sortedKeys(d.Env), " "))
}

// ACMECert is a label: one set of names, obtained in each key type.
type ACMECert struct {
	Label      string
	Account    string
	CommonName string
	Names      []string // the SNI list, in the policy's order
	Challenge  string
	KeyTypes   []string
	Line       int // where the label is in the policy file
	to         audience
}

// Wildcard reports whether any of c's names is a wildcard.
func (c *ACMECert) Wildcard() bool {
	return slices.ContainsFunc(c.Names, func(n string) bool { return strings.HasPrefix(n, "*.") })
}

// ACMEFor says why a node with these facts may fetch c's keys and
// certificates, or returns ErrNotGranted.
func (p *Policy) ACMEFor(c *ACMECert, f Facts) (string, error) {
	if via := c.to.via(f.Node, p.GroupsOf(f)); via != "" {
		return via, nil
	}
	return "", fmt.Errorf("%w: acme certificate %q is not for node %s", ErrNotGranted, c.Label, f.Node)
}

// ACMEAccounts returns the names of the accounts, sorted.
func (p *Policy) ACMEAccounts() []string { return sortedKeys(p.acmeAccounts) }

// ACMEAccount returns the named account, or nil.
func (p *Policy) ACMEAccount(name string) *ACMEAccount { return p.acmeAccounts[name] }

// ACMELabels returns the labels of the ACME certificates, sorted.
func (p *Policy) ACMELabels() []string { return sortedKeys(p.acmeCerts) }

// ACMECert returns the certificate with this label, or nil.
func (p *Policy) ACMECert(label string) *ACMECert { return p.acmeCerts[label] }

type acmeDecl struct {
	Accounts     map[string]*acmeAccountDecl `yaml:"accounts"`
	Certificates map[string]*acmeCertDecl    `yaml:"certificates"`
}

type acmeAccountDecl struct {
	Directory        string           `yaml:"directory"`
	StagingDirectory string           `yaml:"staging_directory"`
	Email            string           `yaml:"email"`
	EAB              *eabDecl         `yaml:"eab"`
	CAFile           string           `yaml:"ca_file"`
	DNS              *dnsProviderDecl `yaml:"dns"`
}

type eabDecl struct {
	KeyID    string `yaml:"kid"`
	HMACFile string `yaml:"hmac_file"`
}

type dnsProviderDecl struct {
	Provider string            `yaml:"provider"`
	Env      map[string]string `yaml:"env"`
	EnvFile  string            `yaml:"env_file"`
}

type acmeCertDecl struct {
	Account   string   `yaml:"account"`
	CN        string   `yaml:"cn"`
	SNI       []string `yaml:"sni"`
	Challenge string   `yaml:"challenge"`
	KeyTypes  []string `yaml:"key_types"`
	To        *toDecl  `yaml:"to"`
}

var (
	envName      = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	providerName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
)

func (ps *parser) acme(p *Policy, d *acmeDecl, read func(string) ([]byte, error)) {
	if d == nil {
		return
	}
	for _, name := range sortedKeys(d.Accounts) {
		where := at("acme", "accounts", name)
		if a := ps.acmeAccount(name, d.Accounts[name], where, read); a != nil {
			p.acmeAccounts[name] = a
		}
	}
	for _, label := range sortedKeys(d.Certificates) {
		where := at("acme", "certificates", label)
		if c := ps.acmeCert(p, label, d.Certificates[label], where, sortedKeys(d.Accounts)); c != nil {
			p.acmeCerts[label] = c
		}
	}
}

func (ps *parser) acmeAccount(name string, d *acmeAccountDecl, where []string, read func(string) ([]byte, error)) *ACMEAccount {
	owner := fmt.Sprintf("acme account %q", name)
	if err := ValidName(name); err != nil {
		ps.errorf(where, "acme account %v", err)
	}
	if d == nil {
		ps.errorf(where, "%s is empty: it needs at least a directory", owner)
		return nil
	}
	a := &ACMEAccount{Name: name, Email: d.Email, Line: ps.line(where...)}
	if d.Directory == "" {
		ps.errorf(where, "%s: directory is required (a URL, or letsencrypt or letsencrypt-staging)", owner)
	} else {
		a.Directory = ps.directory(d.Directory, append(where, "directory"), owner)
	}
	if d.StagingDirectory != "" {
		a.StagingDirectory = ps.directory(d.StagingDirectory, append(where, "staging_directory"), owner)
	}
	if d.Email != "" {
		if addr, err := mail.ParseAddress(d.Email); err != nil || addr.Address != d.Email {
			ps.errorf(append(where, "email"), "%s: email %q is not a plain e-mail address (name@example.org)", owner, d.Email)
		}
	}
	if d.EAB != nil {
		a.EAB = ps.eab(d.EAB, append(where, "eab"), owner, read)
	}
	if d.CAFile != "" {
		a.Roots = ps.roots(d.CAFile, append(where, "ca_file"), owner, read)
	}
	if d.DNS != nil {
		a.DNS = ps.dnsProvider(d.DNS, append(where, "dns"), owner, read)
	}
	return a
}

// directory checks a directory URL or short name and returns the URL.
func (ps *parser) directory(s string, where []string, owner string) string {
	if full, ok := directoryShorthands[s]; ok {
		return full
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		ps.errorf(where, "%s: directory %q is not an https:// URL (RFC 8555 requires HTTPS), nor letsencrypt or letsencrypt-staging", owner, s)
	}
	return s
}

func (ps *parser) eab(d *eabDecl, where []string, owner string, read func(string) ([]byte, error)) *EAB {
	if d.KeyID == "" || d.HMACFile == "" {
		ps.errorf(where, "%s: eab needs both kid and hmac_file (the file holding the CA's base64url HMAC key)", owner)
		return nil
	}
	data, ok := ps.readFile(read, d.HMACFile, append(where, "hmac_file"), owner, true)
	if !ok {
		return nil
	}
	key, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(string(data)), "="))
	if err != nil || len(key) == 0 {
		ps.errorf(append(where, "hmac_file"), "%s: %s does not hold a base64url HMAC key", owner, d.HMACFile)
		return nil
	}
	return &EAB{KeyID: d.KeyID, HMAC: key}
}

func (ps *parser) roots(file string, where []string, owner string, read func(string) ([]byte, error)) []*x509.Certificate {
	data, ok := ps.readFile(read, file, where, owner, false)
	if !ok {
		return nil
	}
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			ps.errorf(where, "%s: %s: %v", owner, file, err)
			return nil
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		ps.errorf(where, "%s: %s holds no PEM certificate", owner, file)
	}
	return out
}

func (ps *parser) dnsProvider(d *dnsProviderDecl, where []string, owner string, read func(string) ([]byte, error)) *DNSProvider {
	if !providerName.MatchString(d.Provider) {
		ps.errorf(where, "%s: dns provider %q is not a lego DNS provider name such as rfc2136", owner, d.Provider)
	}
	env := map[string]string{}
	if d.EnvFile != "" {
		if data, ok := ps.readFile(read, d.EnvFile, append(where, "env_file"), owner, true); ok {
			sc := bufio.NewScanner(bytes.NewReader(data))
			for n := 1; sc.Scan(); n++ {
				line := strings.TrimSpace(sc.Text())
				if line == "" || line[0] == '#' {
					continue
				}
				k, v, ok := strings.Cut(line, "=")
				if !ok || !envName.MatchString(k) {
					ps.errorf(append(where, "env_file"), "%s: %s line %d is not NAME=value", owner, d.EnvFile, n)
					continue
				}
				env[k] = v
			}
		}
	}
	for _, k := range sortedKeys(d.Env) {
		if !envName.MatchString(k) {
			ps.errorf(append(where, "env", k), "%s: %q is not an environment variable name (A-Z, 0-9, _)", owner, k)
		}
		env[k] = d.Env[k]
	}
	return &DNSProvider{Name: d.Provider, Env: env}
}

// readFile reads a file the policy names, recording it for the digest
// unless it is secret: the digest is shown to every node, and a hash of a
// short secret could be tested against guesses.
func (ps *parser) readFile(read func(string) ([]byte, error), name string, where []string, owner string, secret bool) ([]byte, bool) {
	if read == nil {
		ps.errorf(where, "%s: files cannot be read here", owner)
		return nil, false
	}
	data, err := read(name)
	if err != nil {
		ps.errorf(where, "%s: %v", owner, err)
		return nil, false
	}
	if !secret {
		ps.files = append(ps.files, data)
	}
	return data, true
}

func (ps *parser) acmeCert(p *Policy, label string, d *acmeCertDecl, where []string, accounts []string) *ACMECert {
	owner := fmt.Sprintf("acme certificate %q", label)
	if err := ValidName(label); err != nil {
		ps.errorf(where, "acme certificate label %v", err)
	}
	if d == nil {
		ps.errorf(where, "%s is empty: it needs at least sni and to:", owner)
		return nil
	}
	c := &ACMECert{Label: label, Account: d.Account, Challenge: d.Challenge, Line: ps.line(where...)}
	switch {
	case d.Account == "" && len(accounts) == 1:
		c.Account = accounts[0]
	case d.Account == "" && len(accounts) == 0:
		ps.errorf(where, "%s: there is no account in acme: accounts: to obtain it with", owner)
	case d.Account == "":
		ps.errorf(where, "%s: account is required when there are several (%s)", owner, strings.Join(accounts, ", "))
	case !slices.Contains(accounts, d.Account):
		ps.errorf(append(where, "account"), "%s: no account %q in acme: accounts:", owner, d.Account)
	}

	if len(d.SNI) == 0 {
		ps.errorf(where, "%s: sni is required: the names the certificate is for", owner)
	}
	if len(d.SNI) > maxACMENames {
		ps.errorf(append(where, "sni"), "%s: %d names; an ACME certificate holds at most %d", owner, len(d.SNI), maxACMENames)
	}
	for i, n := range d.SNI {
		name := strings.ToLower(n)
		if err := checkPublicName(name); err != nil {
			ps.errorf(append(where, "sni", strconv.Itoa(i)), "%s: %q is not a DNS name a public CA issues for: %v", owner, n, err)
			continue
		}
		if slices.Contains(c.Names, name) {
			ps.errorf(append(where, "sni", strconv.Itoa(i)), "%s: %q is listed twice", owner, n)
			continue
		}
		c.Names = append(c.Names, name)
	}

	c.CommonName = strings.ToLower(d.CN)
	if d.CN == "" {
		for _, n := range c.Names {
			if len(n) <= 64 {
				c.CommonName = n
				break
			}
		}
	} else if len(d.SNI) > 0 && !slices.Contains(c.Names, c.CommonName) {
		ps.errorf(append(where, "cn"), "%s: cn %q is not one of the sni names", owner, d.CN)
	} else if len(c.CommonName) > 64 {
		ps.errorf(append(where, "cn"), "%s: cn %q is longer than the 64 characters a common name may have", owner, d.CN)
	}

	switch d.Challenge {
	case "":
		c.Challenge = ChallengeHTTP01
		if c.Wildcard() {
			ps.errorf(where, "%s: a wildcard name can only be proven with dns-01: add challenge: dns-01", owner)
		}
	case ChallengeHTTP01:
		if c.Wildcard() {
			ps.errorf(append(where, "challenge"), "%s: http-01 cannot prove a wildcard name; use dns-01", owner)
		}
	case ChallengeDNS01:
	default:
		ps.errorf(append(where, "challenge"), "%s: unknown challenge %q (want http-01 or dns-01)", owner, d.Challenge)
	}

	c.KeyTypes = slices.Clone(DefaultACMEKeyTypes)
	if d.KeyTypes != nil {
		c.KeyTypes = nil
		if len(d.KeyTypes) == 0 {
			ps.errorf(append(where, "key_types"), "%s: key_types is empty", owner)
		}
		families := map[string]bool{}
		for i, kt := range d.KeyTypes {
			kt = strings.ToLower(strings.TrimSpace(kt))
			w := append(where, "key_types", strconv.Itoa(i))
			if !slices.Contains(ACMEKeyTypes, kt) {
				ps.errorf(w, "%s: unknown key type %q (want one of %s)", owner, d.KeyTypes[i], strings.Join(ACMEKeyTypes, ", "))
				continue
			}
			fam, _, _ := strings.Cut(kt, "-")
			if families[fam] {
				// The distribution paths name the family: /certs/LABEL/ecdsa/...
				ps.errorf(w, "%s: one %s key type at most (the files are served as /certs/%s/%s/...)", owner, fam, label, fam)
				continue
			}
			families[fam] = true
			c.KeyTypes = append(c.KeyTypes, kt)
		}
	}
	c.to = ps.audience(p, owner, d.To, append(where, "to"))
	return c
}

// checkPublicName accepts what a public CA issues for: a host name of at
// least two labels of letters, digits and hyphens, or a wildcard over one.
func checkPublicName(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return errors.New("an IP address, not a DNS name")
	}
	if strings.HasSuffix(s, ".") {
		return errors.New("write it without the trailing dot")
	}
	if err := checkDNSName(s); err != nil {
		return err
	}
	if strings.Contains(s, "_") {
		return errors.New("underscores are not allowed in host names")
	}
	if !strings.Contains(strings.TrimPrefix(s, "*."), ".") {
		return errors.New("a public name has at least two labels (example.org)")
	}
	return nil
}
