package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/tokens"
)

// The file's shape. Maps keyed by name make duplicate names a YAML error
// ("mapping key already defined"), which the decoder reports with lines.
type fileDecl struct {
	CGC         cgcDecl                   `yaml:"cgc"`
	Defaults    defaultsDecl              `yaml:"defaults"`
	Limits      limitsDecl                `yaml:"limits"`
	Authorities map[string]*authorityDecl `yaml:"authorities"`
	Groups      map[string]*groupDecl     `yaml:"groups"`
	Grants      map[string]*grantDecl     `yaml:"grants"`
	ACME        *acmeDecl                 `yaml:"acme"`
}

type cgcDecl struct {
	Lifetime         time.Duration `yaml:"lifetime"`
	RenewAfterExpiry time.Duration `yaml:"renew_after_expiry"`
}

type defaultsDecl struct {
	Lifetime time.Duration `yaml:"lifetime"`
	KeyTypes []string      `yaml:"key_types"`
}

type limitsDecl struct {
	MaxLifetime time.Duration `yaml:"max_lifetime"`
	MaxNames    int           `yaml:"max_names"`
}

type authorityDecl struct {
	MaxLifetime time.Duration `yaml:"max_lifetime"`
}

type groupDecl struct {
	Nodes    []string `yaml:"nodes"`
	Patterns []string `yaml:"patterns"`
}

type grantDecl struct {
	Type        string        `yaml:"type"`
	Authority   string        `yaml:"authority"`
	Usage       string        `yaml:"usage"`
	Subject     *subjectDecl  `yaml:"subject"`
	DNS         []string      `yaml:"dns"`
	IPs         []string      `yaml:"ips"`
	URIs        []string      `yaml:"uris"`
	Allow       *allowDecl    `yaml:"allow"`
	KeyTypes    []string      `yaml:"key_types"`
	Lifetime    time.Duration `yaml:"lifetime"`
	File        string        `yaml:"file"`
	Authorities []string      `yaml:"authorities"`
	To          *toDecl       `yaml:"to"`
}

type subjectDecl struct {
	CommonName         string   `yaml:"common_name"`
	Organization       []string `yaml:"organization"`
	OrganizationalUnit []string `yaml:"organizational_unit"`
	Country            []string `yaml:"country"`
	Province           []string `yaml:"province"`
	Locality           []string `yaml:"locality"`
}

type allowDecl struct {
	DNS  []string `yaml:"dns"`
	IPs  []string `yaml:"ips"`
	URIs []string `yaml:"uris"`
}

type toDecl struct {
	Groups   []string `yaml:"groups"`
	Nodes    []string `yaml:"nodes"`
	Patterns []string `yaml:"patterns"`
	All      bool     `yaml:"all"`
}

// parser collects problems with their lines.
type parser struct {
	file     string
	root     *yaml.Node
	problems Errors
	files    [][]byte // read for the acme: section (not the secret ones), in the order read

	badTemplate bool // a template of the grant being built did not parse
}

// errorf records a problem at the YAML path given (map keys and sequence
// indexes, as strings), or at the deepest part of it that exists.
func (ps *parser) errorf(at []string, format string, args ...any) {
	ps.problems = append(ps.problems, Problem{ps.file, ps.line(at...), fmt.Sprintf(format, args...)})
}

func (ps *parser) line(at ...string) int {
	n := ps.root
	if n == nil {
		return 0
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, k := range at {
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == k {
					line = n.Content[i].Line
					next = n.Content[i+1]
					break
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(k); err == nil && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}

func at(parts ...any) []string {
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = fmt.Sprint(p)
	}
	return out
}

// Parse validates a policy held in memory; file names it in problems, and
// read fetches the static files it names.
func Parse(file string, data []byte, read func(name string) ([]byte, error)) (*Policy, error) {
	ps := &parser{file: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, ps.yamlErrors(err)
	}
	ps.root = &root
	var fd fileDecl
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fd); errors.Is(err, io.EOF) {
		// Most likely a file caught while an editor rewrote it: serving
		// it would silently take every grant away.
		return nil, Errors{{File: file, Msg: "the policy file is empty (a policy with no grants still says so, e.g. grants: {})"}}
	} else if err != nil {
		return nil, ps.yamlErrors(err)
	}
	// The decoder reads one document; a second one would be ignored
	// without a word, so refuse it.
	var next yaml.Node
	if err := dec.Decode(&next); err != nil && !errors.Is(err, io.EOF) {
		return nil, ps.yamlErrors(err)
	} else if err == nil && len(next.Content) > 0 && next.Content[0].Tag != "!!null" {
		ps.problems = append(ps.problems, Problem{file, next.Line, "a second YAML document starts here; a policy file is one document"})
	}
	p := ps.build(&fd, read)
	if len(ps.problems) > 0 {
		slices.SortStableFunc(ps.problems, func(a, b Problem) int { return a.Line - b.Line })
		return nil, ps.problems
	}
	h := sha256.New()
	h.Write(data)
	for _, name := range p.GrantNames() {
		if g := p.grants[name]; g.Type == TypeStatic {
			fmt.Fprintf(h, "\x00%s\x00%d\x00", name, len(g.Content))
			h.Write(g.Content)
		}
	}
	for _, f := range ps.files {
		fmt.Fprintf(h, "\x00%d\x00", len(f))
		h.Write(f)
	}
	p.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return p, nil
}

var (
	yamlLine     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownKey   = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	badValue     = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (.*)$")
	kindReadable = map[string]string{"seq": "a list", "map": "a mapping (key: value)"}
	// The YAML parser's (not scanner's) problems: yaml.v3 numbers their
	// lines from 0 (go-yaml/yaml#205), and leaves line 0 out.
	parserProblems = []string{
		"did not find expected ',' or ']'",
		"did not find expected ',' or '}'",
		"did not find expected '-' indicator",
		"did not find expected <document start>",
		"did not find expected <stream-start>",
		"did not find expected key",
		"did not find expected node content",
		"found duplicate %TAG directive",
		"found duplicate %YAML directive",
		"found incompatible YAML document",
		"found undefined tag handle",
	}
	typeReadable = map[string]string{
		"time.Duration": "a duration such as 720h or 30m",
		"int":           "a whole number",
		"bool":          "true or false",
		"string":        "a string",
		"[]string":      "a list",
	}
)

// yamlErrors turns the YAML decoder's messages into problems with lines,
// in words an operator knows.
func (ps *parser) yamlErrors(err error) Errors {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var out Errors
	for _, m := range msgs {
		pr := Problem{File: ps.file, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			pr.Line, _ = strconv.Atoi(sm[1])
			pr.Msg = sm[2]
		}
		if slices.Contains(parserProblems, pr.Msg) {
			pr.Line++
		}
		if sm := unknownKey.FindStringSubmatch(pr.Msg); sm != nil {
			pr.Msg = fmt.Sprintf("unknown key %q", sm[1])
		} else if sm := badValue.FindStringSubmatch(pr.Msg); sm != nil {
			want := sm[3]
			if r, ok := typeReadable[want]; ok {
				want = r
			} else if strings.HasPrefix(want, "map[") || strings.HasPrefix(want, "policy.") {
				want = "a mapping (key: value)"
			}
			if k, ok := kindReadable[sm[1]]; ok && sm[2] == "" {
				pr.Msg = fmt.Sprintf("found %s, want %s", k, want)
			} else {
				pr.Msg = fmt.Sprintf("%q is not %s", sm[2], want)
			}
		}
		out = append(out, pr)
	}
	slices.SortStableFunc(out, func(a, b Problem) int { return a.Line - b.Line })
	return out
}

func (ps *parser) build(fd *fileDecl, read func(string) ([]byte, error)) *Policy {
	p := Empty()
	p.file = ps.file

	if fd.CGC.Lifetime != 0 {
		p.cgcLifetime = fd.CGC.Lifetime
	}
	if p.cgcLifetime < MinCGCLifetime || p.cgcLifetime > MaxCGCLifetime {
		ps.errorf(at("cgc", "lifetime"), "cgc lifetime %s is outside [%s, %s]", dur(p.cgcLifetime), dur(MinCGCLifetime), dur(MaxCGCLifetime))
	}
	p.renewAfterExpiry = fd.CGC.RenewAfterExpiry
	if p.renewAfterExpiry < 0 || p.renewAfterExpiry > MaxRenewAfterExpiry {
		ps.errorf(at("cgc", "renew_after_expiry"), "renew_after_expiry %s is outside [0, %s]", dur(p.renewAfterExpiry), dur(MaxRenewAfterExpiry))
	} else if p.renewAfterExpiry > p.cgcLifetime {
		// admission refuses this too, but without a line.
		ps.errorf(at("cgc", "renew_after_expiry"), "renew_after_expiry %s is longer than the CGC lifetime %s", dur(p.renewAfterExpiry), dur(p.cgcLifetime))
	}

	maxLifetime := fd.Limits.MaxLifetime
	if maxLifetime == 0 {
		maxLifetime = DefaultMaxLifetime
	}
	if maxLifetime < MinLifetime || maxLifetime > maxLimitLifetime {
		ps.errorf(at("limits", "max_lifetime"), "max_lifetime %s is outside [%s, %s]", dur(maxLifetime), dur(MinLifetime), dur(maxLimitLifetime))
	}
	p.maxNames = fd.Limits.MaxNames
	if p.maxNames == 0 {
		p.maxNames = DefaultMaxNames
	}
	if p.maxNames < 1 || p.maxNames > maxLimitNames {
		ps.errorf(at("limits", "max_names"), "max_names %d is outside [1, %d]", p.maxNames, maxLimitNames)
	}
	defLifetime := fd.Defaults.Lifetime
	if defLifetime == 0 {
		defLifetime = min(DefaultLifetime, maxLifetime)
	}
	if defLifetime < MinLifetime || defLifetime > maxLifetime {
		ps.errorf(at("defaults", "lifetime"), "default lifetime %s is outside [%s, limits.max_lifetime %s]", dur(defLifetime), dur(MinLifetime), dur(maxLifetime))
	}
	defKeyTypes := slices.Clone(DefaultKeyTypes) // the grants' own, not the package's
	if fd.Defaults.KeyTypes != nil {
		defKeyTypes = ps.keyTypes(fd.Defaults.KeyTypes, at("defaults", "key_types"), "defaults")
	}

	for _, name := range sortedKeys(fd.Authorities) {
		d := fd.Authorities[name]
		if d == nil {
			d = &authorityDecl{}
		}
		where := at("authorities", name)
		a := &namedAuthority{Name: name, MaxLifetime: maxLifetime, line: ps.line(where...)}
		if authority.Builtin(name) {
			ps.errorf(where, "authority %q is the keyserver's own and cannot be used by grants; create another with keyctl authority create", name)
		} else if err := ValidName(name); err != nil {
			ps.errorf(where, "authority %v", err)
		}
		if d.MaxLifetime != 0 {
			a.MaxLifetime = d.MaxLifetime
			if d.MaxLifetime < MinLifetime || d.MaxLifetime > maxLifetime {
				ps.errorf(append(where, "max_lifetime"), "authority %q: max_lifetime %s is outside [%s, limits.max_lifetime %s]", name, dur(d.MaxLifetime), dur(MinLifetime), dur(maxLifetime))
			}
		}
		p.authorities[name] = a
	}

	for _, name := range sortedKeys(fd.Groups) {
		d := fd.Groups[name]
		if d == nil {
			d = &groupDecl{}
		}
		where := at("groups", name)
		if err := ValidName(name); err != nil {
			ps.errorf(where, "group %v", err)
		}
		g := &group{Name: name, Nodes: ps.nodeNames(d.Nodes, append(where, "nodes")), Patterns: ps.patterns(d.Patterns, append(where, "patterns"))}
		p.groups[name] = g
	}

	for _, name := range sortedKeys(fd.Grants) {
		d := fd.Grants[name]
		where := at("grants", name)
		if d == nil {
			ps.errorf(where, "grant %q is empty: it needs at least a type and to:", name)
			continue
		}
		if err := ValidName(name); err != nil {
			ps.errorf(where, "grant %v", err)
		}
		g := &Grant{Name: name, Type: d.Type}
		p.lines[g] = ps.line(where...)
		g.to = ps.audience(p, fmt.Sprintf("grant %q", name), d.To, append(where, "to"))
		switch d.Type {
		case TypeX509:
			ps.x509Grant(p, g, d, where, defLifetime, defKeyTypes)
			if d.Lifetime != 0 {
				p.lines[g] = ps.line(append(where, "lifetime")...)
			}
		case TypeStatic:
			ps.staticGrant(p, g, d, where, read)
		case "":
			ps.errorf(where, "grant %q: type is required (x509 or static)", name)
		default:
			ps.errorf(append(where, "type"), "grant %q: unknown type %q (want x509 or static)", name, d.Type)
		}
		p.grants[name] = g
	}
	ps.acme(p, fd.ACME, read)
	return p
}

// keyTypes checks a key_types list; owner says whose it is in messages
// ("defaults", "grant \"web\"").
func (ps *parser) keyTypes(list []string, where []string, owner string) []string {
	if len(list) == 0 {
		ps.errorf(where, "%s: key_types is empty: no key could ever be accepted", owner)
	}
	out := make([]string, 0, len(list))
	for i, kt := range list {
		kt = strings.ToLower(strings.TrimSpace(kt))
		if _, err := authority.ParseKeyType(kt); err != nil || kt == "" {
			ps.errorf(append(where, strconv.Itoa(i)), "%s: unknown key type %q (want one of %s)", owner, list[i], keyTypeNames())
			continue
		}
		if !slices.Contains(out, kt) {
			out = append(out, kt)
		}
	}
	return out
}

func (ps *parser) nodeNames(list []string, where []string) []string {
	for i, n := range list {
		if err := tokens.ValidNodeName(n); err != nil {
			ps.errorf(append(where, strconv.Itoa(i)), "node %q: %v", n, err)
		}
	}
	return list
}

func (ps *parser) patterns(list []string, where []string) []string {
	for i, pat := range list {
		if err := checkNamePattern(pat); err != nil {
			ps.errorf(append(where, strconv.Itoa(i)), "pattern %q: %v", pat, err)
		}
	}
	return list
}

// audience checks a to: list; owner says whose it is in messages
// ("grant \"web\"").
func (ps *parser) audience(p *Policy, owner string, d *toDecl, where []string) audience {
	if d == nil {
		ps.errorf(where[:len(where)-1], "%s is given to no one: add to: with groups, nodes, patterns or all: true", owner)
		return audience{}
	}
	a := audience{
		groups:   d.Groups,
		nodes:    ps.nodeNames(d.Nodes, append(where, "nodes")),
		patterns: ps.patterns(d.Patterns, append(where, "patterns")),
		all:      d.All,
	}
	for i, g := range d.Groups {
		if p.groups[g] == nil {
			ps.errorf(append(where, "groups", strconv.Itoa(i)), "%s: no group %q in groups:", owner, g)
		}
	}
	if !a.all && len(a.groups)+len(a.nodes)+len(a.patterns) == 0 {
		ps.errorf(where, "%s is given to no one: to: needs groups, nodes, patterns or all: true", owner)
	}
	return a
}

func (ps *parser) x509Grant(p *Policy, g *Grant, d *grantDecl, where []string, defLifetime time.Duration, defKeyTypes []string) {
	name := g.Name
	ps.badTemplate = false
	if d.File != "" || d.Authorities != nil {
		ps.errorf(where, "grant %q: file and authorities belong to static grants, not x509", name)
	}
	g.Authority = d.Authority
	a := p.authorities[d.Authority]
	switch {
	case d.Authority == "":
		ps.errorf(where, "grant %q: authority is required", name)
	case authority.Builtin(d.Authority):
		ps.errorf(append(where, "authority"), "grant %q: authority %q is the keyserver's own; grants must use an authority from authorities:", name, d.Authority)
	case a == nil:
		ps.errorf(append(where, "authority"), "grant %q: no authority %q in authorities:", name, d.Authority)
	}
	switch Usage(d.Usage) {
	case UsageServer, UsageClient, UsageBoth:
		g.Usage = Usage(d.Usage)
	case "":
		ps.errorf(where, "grant %q: usage is required (server, client or both)", name)
	default:
		ps.errorf(append(where, "usage"), "grant %q: unknown usage %q (want server, client or both)", name, d.Usage)
	}
	g.KeyTypes = defKeyTypes
	if d.KeyTypes != nil {
		g.KeyTypes = ps.keyTypes(d.KeyTypes, append(where, "key_types"), fmt.Sprintf("grant %q", name))
	}
	g.Lifetime = defLifetime
	if d.Lifetime != 0 {
		g.Lifetime = d.Lifetime
	}
	if a != nil && (g.Lifetime < MinLifetime || g.Lifetime > a.MaxLifetime) {
		lw := append(where, "lifetime")
		if d.Lifetime == 0 {
			lw = where
		}
		ps.errorf(lw, "grant %q: lifetime %s is outside [%s, %s], the most authority %q may give", name, dur(g.Lifetime), dur(MinLifetime), dur(a.MaxLifetime), d.Authority)
	}

	sub := d.Subject
	if sub == nil {
		sub = &subjectDecl{}
	}
	sw := append(where, "subject")
	cn := sub.CommonName
	if cn == "" {
		cn = defaultCommonNameSource
	}
	g.subject = subjectTemplates{
		commonName:         ps.template(cn, append(sw, "common_name")),
		organization:       ps.templates(sub.Organization, append(sw, "organization")),
		organizationalUnit: ps.templates(sub.OrganizationalUnit, append(sw, "organizational_unit")),
		country:            ps.templates(sub.Country, append(sw, "country")),
		province:           ps.templates(sub.Province, append(sw, "province")),
		locality:           ps.templates(sub.Locality, append(sw, "locality")),
	}
	g.dns = ps.templates(d.DNS, append(where, "dns"))
	g.ips = ps.templates(d.IPs, append(where, "ips"))
	g.uris = ps.templates(d.URIs, append(where, "uris"))

	if d.Allow != nil {
		aw := append(where, "allow")
		for i, pat := range d.Allow.DNS {
			if err := checkNamePattern(pat); err != nil {
				ps.errorf(append(aw, "dns", strconv.Itoa(i)), "grant %q: allow.dns pattern %q: %v", name, pat, err)
			}
			g.allow.DNS = append(g.allow.DNS, pat)
		}
		for i, s := range d.Allow.IPs {
			pfx, err := parsePrefix(s)
			if err != nil {
				ps.errorf(append(aw, "ips", strconv.Itoa(i)), "grant %q: allow.ips %q is not an address or a prefix such as 10.0.0.0/8", name, s)
				continue
			}
			g.allow.IPs = append(g.allow.IPs, pfx)
		}
		for i, pat := range d.Allow.URIs {
			if err := checkURIPattern(pat); err != nil {
				ps.errorf(append(aw, "uris", strconv.Itoa(i)), "grant %q: allow.uris pattern %q: %v", name, pat, err)
			}
			g.allow.URIs = append(g.allow.URIs, pat)
		}
	}

	// Render for a made-up node, so that a template that cannot work
	// (an unknown field, a function misused, output that is no name) is
	// found now and not when a node first asks.
	if ps.badTemplate {
		return
	}
	sample := sampleFacts(g)
	c, err := p.render(g, sample, p.GroupsOf(sample))
	if err != nil {
		var te *templateError
		if errors.As(err, &te) {
			ps.errorf(append(where, te.at...), "grant %q: %s", name, te.msg)
		} else {
			ps.errorf(where, "grant %q: %v", name, err)
		}
		return
	}
	if (g.Usage == UsageServer || g.Usage == UsageBoth) && len(c.DNSNames)+len(c.IPAddresses) == 0 && len(g.allow.DNS)+len(g.allow.IPs) == 0 {
		ps.errorf(where, "grant %q: a server certificate needs names: give dns or ips templates (TLS clients ignore the common name)", name)
	}
}

func (ps *parser) staticGrant(p *Policy, g *Grant, d *grantDecl, where []string, read func(string) ([]byte, error)) {
	name := g.Name
	if d.Authority != "" || d.Usage != "" || d.Subject != nil || d.DNS != nil || d.IPs != nil || d.URIs != nil || d.Allow != nil || d.KeyTypes != nil || d.Lifetime != 0 {
		ps.errorf(where, "grant %q: authority, usage, subject, dns, ips, uris, allow, key_types and lifetime belong to x509 grants, not static", name)
	}
	if d.File == "" && len(d.Authorities) == 0 {
		ps.errorf(where, "grant %q: a static grant needs a file, authorities (whose roots it serves), or both", name)
	}
	if d.File != "" && read == nil {
		ps.errorf(append(where, "file"), "grant %q: static files cannot be read here", name)
	} else if d.File != "" {
		data, err := read(d.File)
		if err != nil {
			ps.errorf(append(where, "file"), "grant %q: %v", name, err)
		}
		g.Content = data
	}
	for i, a := range d.Authorities {
		if p.authorities[a] == nil {
			ps.errorf(append(where, "authorities", strconv.Itoa(i)), "grant %q: no authority %q in authorities:", name, a)
		}
	}
	g.Authorities = d.Authorities
}

// template parses one template; problems are recorded, and nil returned.
func (ps *parser) template(src string, where []string) *template.Template {
	name := strings.Join(where, "/")
	t, err := template.New(name).Option("missingkey=error").Funcs(funcs).Parse(src)
	if err != nil {
		ps.errorf(where, "grant %q: template %q: %s", where[1], src, templateMessage(name, err))
		ps.badTemplate = true
		return nil
	}
	return t
}

func (ps *parser) templates(srcs []string, where []string) []*template.Template {
	out := make([]*template.Template, 0, len(srcs))
	for i, s := range srcs {
		if t := ps.template(s, append(where, strconv.Itoa(i))); t != nil {
			out = append(out, t)
		}
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// checkNamePattern checks a pattern over node names: label-wise globs.
func checkNamePattern(pat string) error {
	if pat == "" {
		return errors.New("empty")
	}
	if pat != strings.ToLower(pat) {
		return errors.New("names are matched in lower case, so this pattern would never match; write it in lower case")
	}
	for _, label := range strings.Split(pat, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if strings.ContainsAny(label, "/\\ ") {
			return errors.New(`'/', '\' and spaces have no place in a name`)
		}
		if _, err := path.Match(label, ""); err != nil {
			return fmt.Errorf("bad glob in label %q", label)
		}
	}
	return nil
}

func checkURIPattern(pat string) error {
	if _, err := path.Match(pat, ""); err != nil {
		return errors.New("bad glob")
	}
	if !strings.Contains(pat, ":") {
		return errors.New("not a URI pattern (scheme:...)")
	}
	return nil
}

// dur prints a duration without the trailing zero units Go adds: 720h,
// not 720h0m0s.
func dur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
