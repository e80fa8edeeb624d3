package policy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/keysystem/keysystem/authority"
)

// Facts are what the keyserver knows of a node: its name, and what its
// token recorded.
type Facts struct {
	Node   string
	Groups []string // from the token
	IPs    []string // from the token
}

// Errors of evaluation a caller must tell apart.
var (
	ErrUnknownGrant    = errors.New("policy: no such grant")
	ErrNotGranted      = errors.New("policy: grant not given to this node")
	ErrWrongType       = errors.New("policy: grant of another type")
	ErrNameNotAllowed  = errors.New("policy: name not allowed by the grant")
	ErrKeyTypeRejected = errors.New("policy: key type not allowed by the grant")
	ErrRender          = errors.New("policy: grant cannot be rendered for this node")
)

// NameError is a name a CSR asked for that the grant does not allow.
type NameError struct {
	Grant string
	Kind  string // "DNS name", "IP address", "URI", "e-mail address", "common name"
	Name  string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("grant %s does not allow the %s %q", e.Grant, e.Kind, e.Name)
}

func (e *NameError) Unwrap() error { return ErrNameNotAllowed }

// GroupsOf is every group a node is in: those its token gave it that the
// policy declares, and those whose names or patterns match it, sorted.
func (p *Policy) GroupsOf(f Facts) []string {
	// A token's group the policy does not declare gives nothing (nor
	// shows in .Groups) for as long as it is not declared; the node
	// record keeps it, so declaring the name again gives it back.
	out := slices.DeleteFunc(slices.Clone(f.Groups), func(g string) bool { return p.groups[g] == nil })
	for name, g := range p.groups { // sorted below
		if slices.Contains(g.Nodes, f.Node) || matchAny(g.Patterns, f.Node) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// via says why a node with these groups has g, or "" when it does not.
func (g *Grant) via(node string, groups []string) string { return g.to.via(node, groups) }

// via says why a node with these groups is in a, or "" when it is not.
func (a audience) via(node string, groups []string) string {
	switch {
	case a.all:
		return "all nodes"
	case slices.Contains(a.nodes, node):
		return "node " + node
	}
	if grp := a.firstGroup(groups); grp != "" {
		return "group " + grp
	}
	for _, pat := range a.patterns {
		if matchName(pat, node) {
			return "pattern " + pat
		}
	}
	return ""
}

// firstGroup is the first of the audience's groups the node is in: the
// {{.Group}} of a grant's templates.
func (a audience) firstGroup(groups []string) string {
	for _, grp := range a.groups {
		if slices.Contains(groups, grp) {
			return grp
		}
	}
	return ""
}

// Decision is one grant as it applies to one node.
type Decision struct {
	Grant *Grant
	Via   string // why the node has it: "group web", "node web1", "pattern web*", "all nodes"
	Cert  *Cert  // for x509 grants: what the certificate carries
	Err   error  // the grant applies but cannot be rendered for this node (ErrRender)
}

// Decide says whether a node may have a grant, and what it yields. The
// errors are ErrUnknownGrant and ErrNotGranted; a grant that applies but
// cannot be rendered has Decision.Err set.
func (p *Policy) Decide(grant string, f Facts) (Decision, error) {
	g := p.grants[grant]
	if g == nil {
		return Decision{}, fmt.Errorf("%w: %q", ErrUnknownGrant, grant)
	}
	return p.decide(g, f, p.GroupsOf(f))
}

// decide is Decide for a grant that exists, with the node's groups as
// GroupsOf gives them.
func (p *Policy) decide(g *Grant, f Facts, groups []string) (Decision, error) {
	via := g.via(f.Node, groups)
	if via == "" {
		return Decision{}, fmt.Errorf("%w: %q is not for node %s", ErrNotGranted, g.Name, f.Node)
	}
	d := Decision{Grant: g, Via: via}
	if g.Type == TypeX509 {
		d.Cert, d.Err = p.render(g, f, groups)
	}
	return d, nil
}

// Explain evaluates every grant for a node: its groups, the grants it
// gets (sorted by name) and the names of those it does not.
func (p *Policy) Explain(f Facts) (groups []string, granted []Decision, notGranted []string) {
	groups = p.GroupsOf(f)
	for _, name := range p.GrantNames() {
		d, err := p.decide(p.grants[name], f, groups)
		if err != nil {
			notGranted = append(notGranted, name)
			continue
		}
		granted = append(granted, d)
	}
	return groups, granted, notGranted
}

// Cert is what a certificate under an X.509 grant carries for one node.
type Cert struct {
	Grant       string
	Authority   string
	Subject     pkix.Name
	DNSNames    []string
	IPAddresses []net.IP
	URIs        []*url.URL
	ExtKeyUsage []x509.ExtKeyUsage
	Usage       Usage
	Lifetime    time.Duration
	KeyTypes    []string
	Allow       Allow // extra names a CSR may add
	maxNames    int
}

// ExtKeyUsage is what a certificate for usage u carries as its extended
// key usage; nil for a usage that is not one of the three (a policy never
// holds one; a client reading a grant off the wire may).
func (u Usage) ExtKeyUsage() []x509.ExtKeyUsage {
	switch u {
	case UsageServer:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case UsageClient:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageBoth:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return nil
}

// facts as templates see them.
type templateData struct {
	Node   string
	Short  string
	Domain string
	Group  string
	Groups list
	IPs    list
	Grant  string
}

// list prints as its elements separated by spaces, so "{{.IPs}}" renders
// to one name per address.
type list []string

func (l list) String() string { return strings.Join(l, " ") }

var funcs = template.FuncMap{
	"lower":      strings.ToLower,
	"upper":      strings.ToUpper,
	"replace":    func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
	"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
	"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
}

// templateError is a template that failed, with where it is in the file.
type templateError struct {
	at  []string
	msg string
}

func (e *templateError) Error() string { return e.msg }
func (e *templateError) Unwrap() error { return ErrRender }

const knownFields = ".Node .Short .Domain .Group .Groups .IPs .Grant"

// templateMessage words a template error for an operator: without the
// template's name and position, which mean nothing to them.
func templateMessage(name string, err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "can't evaluate field "); i >= 0 {
		if f := strings.Fields(msg[i+len("can't evaluate field "):]); len(f) > 0 {
			return fmt.Sprintf("unknown field .%s (known: %s)", f[0], knownFields)
		}
	}
	// Parsing: "template: NAME:LINE: msg". Executing: "template:
	// NAME:LINE:COL: executing "NAME" at <CONTEXT>: msg".
	rest, ok := strings.CutPrefix(msg, "template: "+name+":")
	if !ok {
		return msg
	}
	if _, exec, ok := strings.Cut(rest, ": executing "); ok {
		if _, m, ok := strings.Cut(exec, ">: "); ok {
			return m
		}
		return msg
	}
	if _, m, ok := strings.Cut(rest, ": "); ok {
		return m
	}
	return msg
}

// render makes what g yields for a node with facts f, in groups (as
// GroupsOf gives them).
func (p *Policy) render(g *Grant, f Facts, groups []string) (*Cert, error) {
	short, domain, _ := strings.Cut(f.Node, ".")
	data := templateData{Node: f.Node, Short: short, Domain: domain, Group: g.to.firstGroup(groups), Groups: groups, IPs: f.IPs, Grant: g.Name}
	run := func(t *template.Template) ([]string, error) {
		s, err := execute(t, data)
		return strings.Fields(s), err
	}
	all := func(ts []*template.Template) ([]string, error) {
		var out []string
		for _, t := range ts {
			vs, err := run(t)
			if err != nil {
				return nil, err
			}
			for _, v := range vs {
				if !slices.Contains(out, v) {
					out = append(out, v)
				}
			}
		}
		return out, nil
	}
	// KeyTypes and Allow are copies: a caller may change its Cert, never
	// the policy other requests are answered with.
	c := &Cert{Grant: g.Name, Authority: g.Authority, Usage: g.Usage, Lifetime: g.Lifetime, KeyTypes: slices.Clone(g.KeyTypes), Allow: g.allow.clone(), maxNames: p.maxNames}
	c.ExtKeyUsage = g.Usage.ExtKeyUsage()
	cn, err := run(g.subject.commonName)
	if err != nil {
		return nil, err
	}
	if len(cn) > 1 {
		return nil, &templateError{at: []string{"subject", "common_name"}, msg: fmt.Sprintf("common name renders to %d words %q; it must be one", len(cn), cn)}
	}
	if len(cn) == 1 {
		c.Subject.CommonName = cn[0]
	}
	for _, part := range []struct {
		dst *[]string
		src []*template.Template
	}{
		{&c.Subject.Organization, g.subject.organization},
		{&c.Subject.OrganizationalUnit, g.subject.organizationalUnit},
		{&c.Subject.Country, g.subject.country},
		{&c.Subject.Province, g.subject.province},
		{&c.Subject.Locality, g.subject.locality},
	} {
		for _, t := range part.src {
			s, err := execute(t, data)
			if err != nil {
				return nil, err
			}
			if s = strings.TrimSpace(s); s != "" {
				*part.dst = append(*part.dst, s)
			}
		}
	}
	dns, err := all(g.dns)
	if err != nil {
		return nil, err
	}
	for _, d := range dns {
		d = strings.ToLower(d)
		if err := checkDNSName(d); err != nil {
			return nil, &templateError{at: []string{"dns"}, msg: fmt.Sprintf("renders %q for node %s, which is no DNS name: %v", d, f.Node, err)}
		}
		if !slices.Contains(c.DNSNames, d) {
			c.DNSNames = append(c.DNSNames, d)
		}
	}
	ips, err := all(g.ips)
	if err != nil {
		return nil, err
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, &templateError{at: []string{"ips"}, msg: fmt.Sprintf("renders %q for node %s, which is no IP address", s, f.Node)}
		}
		ip := net.IP(a.Unmap().AsSlice())
		if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
			c.IPAddresses = append(c.IPAddresses, ip)
		}
	}
	uris, err := all(g.uris)
	if err != nil {
		return nil, err
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
			return nil, &templateError{at: []string{"uris"}, msg: fmt.Sprintf("renders %q for node %s, which is no absolute URI", s, f.Node)}
		}
		c.URIs = append(c.URIs, u)
	}
	if n := len(c.DNSNames) + len(c.IPAddresses) + len(c.URIs); n > p.maxNames {
		return nil, &templateError{msg: fmt.Sprintf("renders %d names for node %s, over limits.max_names %d", n, f.Node, p.maxNames)}
	}
	return c, nil
}

// execute runs one of a grant's templates; its error is a templateError
// placed where the template is in the file (its name, as parsed).
func execute(t *template.Template, data templateData) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", &templateError{at: strings.Split(t.Name(), "/")[2:], msg: fmt.Sprintf("template %q: %s", t.Root.String(), templateMessage(t.Name(), err))}
	}
	return b.String(), nil
}

func sampleFacts(g *Grant) Facts {
	f := Facts{Node: "node1.example.org", IPs: []string{"192.0.2.10", "2001:db8::10"}}
	if len(g.to.groups) > 0 {
		f.Groups = []string{g.to.groups[0]}
	}
	return f
}

// Request checks a CSR against what the grant yields and returns the
// certificate to issue: the rendered names plus the extra names the CSR
// asks for that the grant allows. The CSR's key must be of an allowed
// type; its common name, when it has one, must be the rendered one or one
// of the certificate's DNS names. Anything else is refused, naming it.
func (c *Cert) Request(csr *x509.CertificateRequest) (*Cert, error) {
	kt := authority.KeyTypeOf(csr.PublicKey)
	if !slices.Contains(c.KeyTypes, kt) {
		if kt == "" {
			kt = fmt.Sprintf("%T", csr.PublicKey)
		}
		return nil, fmt.Errorf("%w: grant %s takes %s keys, not %s", ErrKeyTypeRejected, c.Grant, strings.Join(c.KeyTypes, ", "), kt)
	}
	out := c.clone()
	deny := func(kind, name string) error { return &NameError{Grant: c.Grant, Kind: kind, Name: name} }
	if len(csr.EmailAddresses) > 0 {
		return nil, deny("e-mail address", csr.EmailAddresses[0])
	}
	for _, d := range csr.DNSNames {
		d = strings.ToLower(d)
		if slices.Contains(out.DNSNames, d) {
			continue
		}
		if checkDNSName(d) != nil || !slices.ContainsFunc(c.Allow.DNS, func(p string) bool { return matchDNS(p, d) }) {
			return nil, deny("DNS name", d)
		}
		out.DNSNames = append(out.DNSNames, d)
	}
	for _, ip := range csr.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		a = a.Unmap()
		if slices.ContainsFunc(out.IPAddresses, func(x net.IP) bool { return x.Equal(ip) }) {
			continue
		}
		if !ok || !slices.ContainsFunc(c.Allow.IPs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return nil, deny("IP address", ip.String())
		}
		out.IPAddresses = append(out.IPAddresses, net.IP(a.AsSlice()))
	}
	for _, u := range csr.URIs {
		s := u.String()
		if slices.ContainsFunc(out.URIs, func(x *url.URL) bool { return x.String() == s }) {
			continue
		}
		if !plainURI(u) || !slices.ContainsFunc(c.Allow.URIs, func(p string) bool { ok, _ := path.Match(p, s); return ok }) {
			return nil, deny("URI", s)
		}
		v := *u
		out.URIs = append(out.URIs, &v)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != c.Subject.CommonName && !slices.Contains(out.DNSNames, strings.ToLower(cn)) {
		return nil, deny("common name", cn)
	}
	if n := len(out.DNSNames) + len(out.IPAddresses) + len(out.URIs); n > c.maxNames {
		return nil, fmt.Errorf("%w: grant %s: %d names, over the limit of %d", ErrNameNotAllowed, c.Grant, n, c.maxNames)
	}
	return out, nil
}

// plainURI reports whether an extra URI a CSR asks for is one an
// allow.uris glob can be trusted with: no user, query, fragment or
// escapes, and no "." or ".." segments, any of which would let a * that
// "does not cross a '/'" reach another path once the URI is read.
func plainURI(u *url.URL) bool {
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(u.String(), "%") {
		return false
	}
	if u.Path == "" {
		return true
	}
	// Every segment after the leading slash names something: no empty,
	// "." or ".." one, so "…/etcd/*" allows "…/etcd/a" but not "…/etcd/".
	for seg := range strings.SplitSeq(strings.TrimPrefix(u.Path, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// clone is a deep copy of c.
func (c *Cert) clone() *Cert {
	out := *c
	out.Subject.Country = slices.Clone(c.Subject.Country)
	out.Subject.Organization = slices.Clone(c.Subject.Organization)
	out.Subject.OrganizationalUnit = slices.Clone(c.Subject.OrganizationalUnit)
	out.Subject.Locality = slices.Clone(c.Subject.Locality)
	out.Subject.Province = slices.Clone(c.Subject.Province)
	out.Subject.StreetAddress = slices.Clone(c.Subject.StreetAddress)
	out.Subject.PostalCode = slices.Clone(c.Subject.PostalCode)
	out.Subject.Names = slices.Clone(c.Subject.Names)
	out.Subject.ExtraNames = slices.Clone(c.Subject.ExtraNames)
	out.DNSNames = slices.Clone(c.DNSNames)
	out.IPAddresses = nil
	for _, ip := range c.IPAddresses {
		out.IPAddresses = append(out.IPAddresses, slices.Clone(ip))
	}
	out.URIs = nil
	for _, u := range c.URIs {
		v := *u
		if u.User != nil {
			ui := *u.User
			v.User = &ui
		}
		out.URIs = append(out.URIs, &v)
	}
	out.ExtKeyUsage = slices.Clone(c.ExtKeyUsage)
	out.KeyTypes = slices.Clone(c.KeyTypes)
	out.Allow = c.Allow.clone()
	return &out
}

func (a Allow) clone() Allow {
	return Allow{DNS: slices.Clone(a.DNS), IPs: slices.Clone(a.IPs), URIs: slices.Clone(a.URIs)}
}

// matchDNS matches a name a CSR asks for against an allow.dns pattern. A
// wildcard name ("*.x") is allowed only by a pattern whose first label is
// "*" itself: "?.x" allows one-letter names, and a certificate for *.x
// would be good for every name under x.
func matchDNS(pattern, name string) bool {
	if strings.HasPrefix(name, "*.") && !strings.HasPrefix(pattern, "*.") {
		return false
	}
	return matchName(pattern, name)
}

// matchName matches a node or DNS name against a label-wise glob: the
// pattern and the name have the same number of labels, and each label
// matches, so * never reaches across a dot.
// It runs for every pattern on every request, so it splits nothing.
func matchName(pattern, name string) bool {
	if strings.Count(pattern, ".") != strings.Count(name, ".") {
		return false
	}
	for {
		pl, prest, more := strings.Cut(pattern, ".")
		nl, nrest, _ := strings.Cut(name, ".")
		if ok, err := path.Match(pl, nl); err != nil || !ok {
			return false
		}
		if !more {
			return true
		}
		pattern, name = prest, nrest
	}
}

func matchAny(patterns []string, name string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return matchName(p, name) })
}

// checkDNSName accepts host names of letters, digits, hyphens and
// underscores, with an optional leading "*." wildcard label.
func checkDNSName(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return errors.New("length must be 1 to 253")
	}
	if s == "*" {
		return errors.New("a wildcard needs a domain: *.example.org, not *")
	}
	for i, label := range strings.Split(s, ".") {
		if label == "*" && i == 0 {
			continue
		}
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("label %q must be 1 to 63 characters", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("label %q has character %q", label, r)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
	}
	return nil
}
