// Package policy is the keyserver's policy file: which nodes, by name,
// pattern or group, may have which grants, and what each grant yields.
// It parses and validates a file, reporting every problem as
// file:line: message, and evaluates a valid policy for one node: its
// groups, its grants, and the exact subject and names an X.509 grant's
// certificate carries for it.
//
// The package decides and never serves, stores or signs: the keyserver
// asks it, then signs with the authority the grant names. A policy is
// immutable once loaded, so the keyserver can swap a new one in while
// requests are being answered with the old.
package policy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/keysystem/keysystem/authority"
)

// Defaults and bounds.
const (
	DefaultCGCLifetime      = 30 * 24 * time.Hour
	MinCGCLifetime          = time.Hour
	MaxCGCLifetime          = 366 * 24 * time.Hour
	MaxRenewAfterExpiry     = 30 * 24 * time.Hour
	DefaultLifetime         = 7 * 24 * time.Hour
	DefaultMaxLifetime      = 90 * 24 * time.Hour
	MinLifetime             = 5 * time.Minute
	DefaultMaxNames         = 100
	MaxStaticBytes          = 1 << 20
	maxLimitLifetime        = 10 * 366 * 24 * time.Hour
	maxLimitNames           = 1000
	defaultCommonNameSource = "{{.Node}}"
)

// Grant types.
const (
	TypeX509   = "x509"
	TypeStatic = "static"
)

// DefaultKeyTypes are the key types a grant accepts unless it says.
var DefaultKeyTypes = []string{"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-3072", "rsa-4096"}

// Usage is what an X.509 grant's certificate may be used for.
type Usage string

// Usages.
const (
	UsageServer Usage = "server"
	UsageClient Usage = "client"
	UsageBoth   Usage = "both"
)

// Policy is a validated policy file.
type Policy struct {
	file   string
	digest string

	cgcLifetime      time.Duration
	renewAfterExpiry time.Duration
	maxNames         int

	authorities map[string]*namedAuthority
	groups      map[string]*group
	grants      map[string]*Grant
	lines       map[*Grant]int // for problems found after parsing (CheckAuthorities)

	acmeAccounts map[string]*ACMEAccount
	acmeCerts    map[string]*ACMECert
}

// namedAuthority is a named X.509 authority the policy may sign with.
type namedAuthority struct {
	Name        string
	MaxLifetime time.Duration
	line        int
}

// group is a named set of nodes: those given it by their token, and those
// whose names the group lists or matches.
type group struct {
	Name     string
	Nodes    []string
	Patterns []string
}

// Grant is one thing a node may ask for.
type Grant struct {
	Name string
	Type string // TypeX509 or TypeStatic

	// X.509 grants.
	Authority string
	Usage     Usage
	KeyTypes  []string
	Lifetime  time.Duration
	subject   subjectTemplates
	dns       []*template.Template
	ips       []*template.Template
	uris      []*template.Template
	allow     Allow

	// Static grants: the file's content, then the roots of Authorities.
	Content     []byte
	Authorities []string

	to audience
}

// Allow holds the patterns of extra names a CSR may ask for.
type Allow struct {
	DNS  []string       // label-wise globs: * and ? never cross a dot
	IPs  []netip.Prefix // a bare address is a one-address prefix
	URIs []string       // globs in which * does not cross a '/'
}

type audience struct {
	groups   []string
	nodes    []string
	patterns []string
	all      bool
}

type subjectTemplates struct {
	commonName         *template.Template
	organization       []*template.Template
	organizationalUnit []*template.Template
	country            []*template.Template
	province           []*template.Template
	locality           []*template.Template
}

// File is the path the policy was read from.
func (p *Policy) File() string { return p.file }

// Digest is "sha256:<hex>" over the policy file and every static file it
// serves, so two keyservers can tell whether they serve the same policy.
func (p *Policy) Digest() string { return p.digest }

// CGCLifetime is the lifetime of the certificate-granting certificates.
func (p *Policy) CGCLifetime() time.Duration { return p.cgcLifetime }

// RenewAfterExpiry is how long after its CGC expired a node may still
// renew it; 0 means an expired CGC is useless and the node needs a token.
func (p *Policy) RenewAfterExpiry() time.Duration { return p.renewAfterExpiry }

// Authorities are the named authorities, sorted by name.
func (p *Policy) Authorities() []string { return sortedKeys(p.authorities) }

// Groups are the group names, sorted.
func (p *Policy) Groups() []string { return sortedKeys(p.groups) }

// HasGroup reports whether the policy declares a group.
func (p *Policy) HasGroup(name string) bool { return p.groups[name] != nil }

// GrantNames are the grant names, sorted.
func (p *Policy) GrantNames() []string { return sortedKeys(p.grants) }

// Grant returns a grant by name, or nil.
func (p *Policy) Grant(name string) *Grant { return p.grants[name] }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Empty is the policy of a keyserver that has none: no grants, default
// CGC lifetimes.
func Empty() *Policy {
	p := &Policy{
		cgcLifetime: DefaultCGCLifetime,
		maxNames:    DefaultMaxNames,
		authorities: map[string]*namedAuthority{},
		groups:      map[string]*group{},
		grants:      map[string]*Grant{},
		lines:       map[*Grant]int{},

		acmeAccounts: map[string]*ACMEAccount{},
		acmeCerts:    map[string]*ACMECert{},
	}
	sum := sha256.Sum256(nil)
	p.digest = "sha256:" + hex.EncodeToString(sum[:])
	return p
}

// Load reads and validates a policy file. Static files it names are read
// relative to its directory. The error, when the file is refused, is an
// Errors listing every problem.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	dir := filepath.Dir(path)
	return Parse(path, data, func(name string) ([]byte, error) {
		if !filepath.IsAbs(name) {
			name = filepath.Join(dir, name)
		}
		return readLimited(name, MaxStaticBytes)
	})
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	// Read what was opened, never more than the limit: the file may grow
	// between the Stat and the read.
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is over the limit of %d bytes", path, limit)
	}
	return data, nil
}

// Problem is one thing wrong with a policy file.
type Problem struct {
	File string
	Line int // 0 when the problem has no one place
	Msg  string
}

func (p Problem) String() string {
	if p.Line == 0 {
		return p.File + ": " + p.Msg
	}
	return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
}

// Errors is every problem found in a policy file, in file order.
type Errors []Problem

func (e Errors) Error() string { return strings.Join(e.Lines(), "\n") }

// Lines is every problem as file:line: message.
func (e Errors) Lines() []string {
	out := make([]string, len(e))
	for i, p := range e {
		out[i] = p.String()
	}
	return out
}

// Problems extracts the problems from an error returned by this package;
// any other error becomes one problem without a line.
func Problems(file string, err error) Errors {
	var e Errors
	if errors.As(err, &e) {
		return e
	}
	return Errors{{File: file, Msg: err.Error()}}
}

// CheckAuthorities checks the policy against the authorities' material
// as of now: every named authority must load and be valid, and no grant
// may ask for a lifetime longer than its authority's issuing certificate
// lives in total. issuer returns the certificate that signs for a name
// (the intermediate when there is one).
func (p *Policy) CheckAuthorities(now time.Time, issuer func(name string) (*x509.Certificate, error)) error {
	var errs Errors
	life := map[string]time.Duration{}
	for _, name := range p.Authorities() {
		a := p.authorities[name]
		c, err := issuer(name)
		switch {
		case err != nil:
			errs = append(errs, Problem{p.file, a.line, fmt.Sprintf("authority %q: %v", name, err)})
			continue
		case !now.Before(c.NotAfter):
			errs = append(errs, Problem{p.file, a.line, fmt.Sprintf("authority %q expired on %s: it can sign nothing", name, c.NotAfter.UTC().Format(time.RFC3339))})
			continue
		}
		life[name] = c.NotAfter.Sub(c.NotBefore)
	}
	for _, name := range p.GrantNames() {
		g := p.grants[name]
		l, ok := life[g.Authority]
		if g.Type != TypeX509 || !ok {
			continue
		}
		if g.Lifetime > l {
			errs = append(errs, Problem{p.file, p.lines[g], fmt.Sprintf("grant %q: lifetime %s is longer than authority %q's own certificate lives (%s)", name, dur(g.Lifetime), g.Authority, dur(l.Round(time.Hour)))})
		}
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b Problem) int { return a.Line - b.Line })
		return errs
	}
	return nil
}

// GrantProblem is a problem with a grant found outside this package (the
// keyserver's view of its static content), placed at the grant's line.
func (p *Policy) GrantProblem(grant, msg string) Problem {
	return Problem{p.file, p.lines[p.grants[grant]], fmt.Sprintf("grant %q: %s", grant, msg)}
}

// ValidName checks the name of an authority, group or grant.
func ValidName(s string) error {
	if len(s) == 0 || len(s) > 63 {
		return fmt.Errorf("name %q must be 1 to 63 characters", s)
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (i > 0 && i < len(s)-1 && strings.ContainsRune("._-", r))
		if !ok {
			return fmt.Errorf("name %q: use lower-case letters, digits, and . _ - inside", s)
		}
	}
	return nil
}

// keyTypeNames lists the key types a policy may name.
func keyTypeNames() string {
	names := make([]string, len(authority.KeyTypes))
	for i, k := range authority.KeyTypes {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}
