package policy_test

import (
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/policy"
)

// evalPolicy is the policy the evaluation tests ask.
const evalPolicy = `authorities:
  etcd: {}
  web: {}
groups:
  etcd:
    nodes: [etcd1.dc1.example.org]
    patterns: ["etcd*.dc1.example.org"]
  web:
    patterns: ["web*.dc1.example.org"]
  edge: {}
  ops:
    nodes: [web1.dc1.example.org, solo]
grants:
  etcd-peer:
    type: x509
    authority: etcd
    usage: both
    subject:
      common_name: "{{.Node}}"
      organization: [example, "{{.Group}}"]
      organizational_unit: ["{{.Domain}}"]
    dns: ["{{.Node}}", "{{.Short}}.etcd.internal", "{{upper .Node}}"]
    ips: ["{{.IPs}}"]
    uris: ["spiffe://example.org/etcd/{{.Short}}"]
    allow:
      dns: ["*.etcd.internal", "?.short.internal"]
      ips: ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
      uris: ["spiffe://example.org/etcd/*"]
    key_types: [ecdsa-p256]
    lifetime: 720h
    to:
      groups: [etcd]
      nodes: [etcd9.dc2.example.org]
      patterns: ["etcd*.dc2.example.org"]
  web-server:
    type: x509
    authority: web
    usage: server
    subject:
      common_name: "{{.Short}}"
      organizational_unit: ["{{.Group}}"]
    dns: ["{{.Node}}", "{{.Group}}.{{.Domain}}"]
    key_types: [ecdsa-p256, ed25519, rsa-3072]
    to:
      groups: [web, edge]
  client-all:
    type: x509
    authority: web
    usage: client
    subject:
      common_name: "{{.Short}}"
      organization: ["{{.Groups}}"]
      organizational_unit: ["{{.Domain}}"]
    lifetime: 1h
    to: {all: true}
  funcs:
    type: x509
    authority: web
    usage: client
    subject:
      common_name: '{{trimSuffix ".example.org" .Node}}'
      organization: ["{{upper .Short}}", '{{lower "MiXeD"}}']
      organizational_unit: ['{{replace "." "-" .Node}}']
      locality: ['{{trimPrefix "web" .Short}}']
      province: ["{{.Grant}}"]
      country: [NL]
    dns: ['{{lower .Short}}.{{replace "." "-" .Domain}}.internal']
    to:
      nodes: [web1.dc1.example.org]
  odd:
    type: x509
    authority: web
    usage: server
    dns: ["{{.Short}}.{{.Group}}.internal"]
    to:
      groups: [edge]
      patterns: ["odd*.example.org"]
  bundle:
    type: static
    authorities: [etcd]
    to: {all: true}
`

func evalP(t *testing.T) *policy.Policy {
	t.Helper()
	return mustParse(t, evalPolicy)
}

func TestGroupsOf(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		node  string
		token []string
		want  []string
	}{
		{"etcd1.dc1.example.org", nil, []string{"etcd"}}, // by node and by pattern: once
		{"etcd5.dc1.example.org", nil, []string{"etcd"}},
		{"web1.dc1.example.org", []string{"web", "edge", "edge"}, []string{"edge", "ops", "web"}},
		{"etcd5.dc1.example.org", []string{"zeta", "edge"}, []string{"edge", "etcd"}}, // zeta: not declared, gives nothing
		{"solo", nil, []string{"ops"}},
		{"cdn1.example.org", []string{"edge"}, []string{"edge"}},
		{"etcd5.x.dc1.example.org", nil, nil},        // * does not cross a dot
		{"etcd1.dc1.example.org.evil.com", nil, nil}, // nor match a prefix
		{"evil.etcd1.dc1.example.org", nil, nil},     // nor a suffix
		{"web1.dc1.example.org.", nil, nil},          // not a node name
		{"other.example.org", nil, nil},
	} {
		got := p.GroupsOf(policy.Facts{Node: tc.node, Groups: tc.token})
		if !slices.Equal(got, tc.want) {
			t.Errorf("GroupsOf(%s, token %q) = %q, want %q", tc.node, tc.token, got, tc.want)
		}
	}
	// The caller's token groups are not changed.
	token := []string{"web", "edge"}
	p.GroupsOf(policy.Facts{Node: "web1.dc1.example.org", Groups: token})
	if !slices.Equal(token, []string{"web", "edge"}) {
		t.Errorf("GroupsOf changed the facts' groups to %q", token)
	}
}

func TestDecideErrors(t *testing.T) {
	p := evalP(t)
	_, err := p.Decide("nosuch", policy.Facts{Node: "etcd1.dc1.example.org"})
	if !errors.Is(err, policy.ErrUnknownGrant) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("unknown grant: %v, want ErrUnknownGrant naming it", err)
	}
	for _, tc := range []struct {
		grant string
		f     policy.Facts
	}{
		{"etcd-peer", policy.Facts{Node: "web1.dc1.example.org"}},
		{"etcd-peer", policy.Facts{Node: "etcd3.x.dc2.example.org"}},
		{"etcd-peer", policy.Facts{Node: "etcd9.dc3.example.org"}},
		{"etcd-peer", policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"web", "ops"}}},
		{"web-server", policy.Facts{Node: "solo"}},
		{"funcs", policy.Facts{Node: "web2.dc1.example.org", Groups: []string{"web"}}},
		{"odd", policy.Facts{Node: "odd1.dc1.example.org"}},
	} {
		d, err := p.Decide(tc.grant, tc.f)
		if !errors.Is(err, policy.ErrNotGranted) {
			t.Errorf("Decide(%s, %+v) = %v, want ErrNotGranted", tc.grant, tc.f, err)
			continue
		}
		if errors.Is(err, policy.ErrUnknownGrant) || d.Grant != nil || d.Cert != nil {
			t.Errorf("Decide(%s, %+v): a refusal with %+v", tc.grant, tc.f, d)
		}
		if !strings.Contains(err.Error(), tc.f.Node) || !strings.Contains(err.Error(), tc.grant) {
			t.Errorf("refusal %q does not name the grant and node", err)
		}
	}
}

func TestDecideVia(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		grant string
		f     policy.Facts
		via   string
	}{
		{"client-all", policy.Facts{Node: "anything.example.org"}, "all nodes"},
		{"bundle", policy.Facts{Node: "solo"}, "all nodes"},
		// Listed by name, and also matching the pattern: the name wins.
		{"etcd-peer", policy.Facts{Node: "etcd9.dc2.example.org"}, "node etcd9.dc2.example.org"},
		{"etcd-peer", policy.Facts{Node: "etcd1.dc1.example.org"}, "group etcd"},
		{"etcd-peer", policy.Facts{Node: "etcd7.dc1.example.org"}, "group etcd"},
		{"etcd-peer", policy.Facts{Node: "db.example.org", Groups: []string{"etcd"}}, "group etcd"},
		{"etcd-peer", policy.Facts{Node: "etcd3.dc2.example.org"}, "pattern etcd*.dc2.example.org"},
		// The first of the grant's groups, in the grant's order.
		{"web-server", policy.Facts{Node: "web2.dc1.example.org", Groups: []string{"edge"}}, "group web"},
		{"web-server", policy.Facts{Node: "cdn.example.org", Groups: []string{"edge"}}, "group edge"},
		{"funcs", policy.Facts{Node: "web1.dc1.example.org"}, "node web1.dc1.example.org"},
		{"odd", policy.Facts{Node: "odd1.example.org"}, "pattern odd*.example.org"},
	} {
		d, err := p.Decide(tc.grant, tc.f)
		if err != nil {
			t.Errorf("Decide(%s, %s): %v", tc.grant, tc.f.Node, err)
			continue
		}
		if d.Via != tc.via {
			t.Errorf("Decide(%s, %s).Via = %q, want %q", tc.grant, tc.f.Node, d.Via, tc.via)
		}
		if d.Grant != p.Grant(tc.grant) {
			t.Errorf("Decide(%s).Grant is not the policy's grant", tc.grant)
		}
	}
}

func TestDecideStatic(t *testing.T) {
	d, err := evalP(t).Decide("bundle", policy.Facts{Node: "solo"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Cert != nil || d.Err != nil || d.Grant.Type != policy.TypeStatic {
		t.Errorf("static decision %+v, want no Cert nor Err", d)
	}
}

func ips(ss ...string) []net.IP {
	out := make([]net.IP, len(ss))
	for i, s := range ss {
		out[i] = net.IP(netip.MustParseAddr(s).AsSlice())
	}
	return out
}

func uriStrings(c *policy.Cert) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

func TestDecideCert(t *testing.T) {
	p := evalP(t)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, tc := range []struct {
		name  string
		grant string
		f     policy.Facts
		want  policy.Cert // Allow is checked apart
		uris  []string
	}{
		{
			name:  "etcd peer with addresses",
			grant: "etcd-peer",
			f:     policy.Facts{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.5", "2001:db8::5", "10.0.0.5", "::ffff:10.0.0.6", "10.0.0.6"}},
			want: policy.Cert{
				Grant: "etcd-peer", Authority: "etcd", Usage: policy.UsageBoth, Lifetime: 720 * time.Hour, KeyTypes: []string{"ecdsa-p256"},
				ExtKeyUsage: both,
				DNSNames:    []string{"etcd1.dc1.example.org", "etcd1.etcd.internal"}, // {{upper .Node}} lower-cased, then dropped as a duplicate
				IPAddresses: ips("10.0.0.5", "2001:db8::5", "10.0.0.6"),
			},
			uris: []string{"spiffe://example.org/etcd/etcd1"},
		},
		{
			name:  "etcd peer without addresses, by node name",
			grant: "etcd-peer",
			f:     policy.Facts{Node: "etcd9.dc2.example.org"},
			want: policy.Cert{
				Grant: "etcd-peer", Authority: "etcd", Usage: policy.UsageBoth, Lifetime: 720 * time.Hour, KeyTypes: []string{"ecdsa-p256"},
				ExtKeyUsage: both,
				DNSNames:    []string{"etcd9.dc2.example.org", "etcd9.etcd.internal"},
			},
			uris: []string{"spiffe://example.org/etcd/etcd9"},
		},
		{
			name:  "web server in web",
			grant: "web-server",
			f:     policy.Facts{Node: "web2.dc1.example.org", Groups: []string{"edge"}},
			want: policy.Cert{
				Grant: "web-server", Authority: "web", Usage: policy.UsageServer, Lifetime: 168 * time.Hour, KeyTypes: []string{"ecdsa-p256", "ed25519", "rsa-3072"},
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				DNSNames:    []string{"web2.dc1.example.org", "web.dc1.example.org"},
			},
		},
		{
			name:  "web server in edge",
			grant: "web-server",
			f:     policy.Facts{Node: "cdn.example.org", Groups: []string{"edge"}},
			want: policy.Cert{
				Grant: "web-server", Authority: "web", Usage: policy.UsageServer, Lifetime: 168 * time.Hour, KeyTypes: []string{"ecdsa-p256", "ed25519", "rsa-3072"},
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				DNSNames:    []string{"cdn.example.org", "edge.example.org"},
			},
		},
		{
			name:  "client",
			grant: "client-all",
			f:     policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"edge"}, IPs: []string{"10.1.1.1"}},
			want: policy.Cert{
				Grant: "client-all", Authority: "web", Usage: policy.UsageClient, Lifetime: time.Hour, KeyTypes: policy.DefaultKeyTypes,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Decide(tc.grant, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if d.Err != nil {
				t.Fatalf("Decision.Err = %v", d.Err)
			}
			c := d.Cert
			if c == nil {
				t.Fatal("no Cert for an x509 grant")
			}
			w := tc.want
			if c.Grant != w.Grant || c.Authority != w.Authority || c.Usage != w.Usage || c.Lifetime != w.Lifetime {
				t.Errorf("Cert {Grant %q Authority %q Usage %q Lifetime %v}, want {%q %q %q %v}", c.Grant, c.Authority, c.Usage, c.Lifetime, w.Grant, w.Authority, w.Usage, w.Lifetime)
			}
			if !slices.Equal(c.KeyTypes, w.KeyTypes) {
				t.Errorf("KeyTypes = %q, want %q", c.KeyTypes, w.KeyTypes)
			}
			if !slices.Equal(c.ExtKeyUsage, w.ExtKeyUsage) {
				t.Errorf("ExtKeyUsage = %v, want %v", c.ExtKeyUsage, w.ExtKeyUsage)
			}
			if !slices.Equal(c.DNSNames, w.DNSNames) {
				t.Errorf("DNSNames = %q, want %q", c.DNSNames, w.DNSNames)
			}
			if !slices.EqualFunc(c.IPAddresses, w.IPAddresses, func(a, b net.IP) bool { return a.Equal(b) && len(a) == len(b) }) {
				t.Errorf("IPAddresses = %v, want %v", c.IPAddresses, w.IPAddresses)
			}
			if got := uriStrings(c); !slices.Equal(got, tc.uris) {
				t.Errorf("URIs = %q, want %q", got, tc.uris)
			}
		})
	}
}

func TestDecideSubject(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		name    string
		grant   string
		f       policy.Facts
		cn      string
		o, ou   []string
		l, st   []string
		country []string
	}{
		// {{.Group}} is the grant's group the node is in; {{.Domain}} the rest of the name.
		{"etcd group", "etcd-peer", policy.Facts{Node: "etcd1.dc1.example.org"}, "etcd1.dc1.example.org", []string{"example", "etcd"}, []string{"dc1.example.org"}, nil, nil, nil},
		// Given by name, in no group: {{.Group}} is empty and adds nothing.
		{"no group", "etcd-peer", policy.Facts{Node: "etcd9.dc2.example.org"}, "etcd9.dc2.example.org", []string{"example"}, []string{"dc2.example.org"}, nil, nil, nil},
		// In web and edge: web comes first in the grant's to.groups.
		{"first of the grant's groups", "web-server", policy.Facts{Node: "web2.dc1.example.org", Groups: []string{"edge"}}, "web2", nil, []string{"web"}, nil, nil, nil},
		{"edge", "web-server", policy.Facts{Node: "cdn.example.org", Groups: []string{"edge"}}, "cdn", nil, []string{"edge"}, nil, nil, nil},
		// {{.Groups}} prints space-separated; a one-label name has no domain.
		{"groups", "client-all", policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"edge"}}, "web1", []string{"edge ops web"}, []string{"dc1.example.org"}, nil, nil, nil},
		{"one label", "client-all", policy.Facts{Node: "solo"}, "solo", []string{"ops"}, nil, nil, nil, nil},
		{"no groups", "client-all", policy.Facts{Node: "x.example.org"}, "x", nil, []string{"example.org"}, nil, nil, nil},
		{"functions", "funcs", policy.Facts{Node: "web1.dc1.example.org"}, "web1.dc1", []string{"WEB1", "mixed"}, []string{"web1-dc1-example-org"}, []string{"1"}, []string{"funcs"}, []string{"NL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Decide(tc.grant, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if d.Err != nil {
				t.Fatal(d.Err)
			}
			s := d.Cert.Subject
			if s.CommonName != tc.cn {
				t.Errorf("CommonName = %q, want %q", s.CommonName, tc.cn)
			}
			for _, f := range []struct {
				what      string
				got, want []string
			}{
				{"Organization", s.Organization, tc.o},
				{"OrganizationalUnit", s.OrganizationalUnit, tc.ou},
				{"Locality", s.Locality, tc.l},
				{"Province", s.Province, tc.st},
				{"Country", s.Country, tc.country},
			} {
				if !slices.Equal(f.got, f.want) {
					t.Errorf("%s = %q, want %q", f.what, f.got, f.want)
				}
			}
		})
	}
	d, err := p.Decide("funcs", policy.Facts{Node: "web1.dc1.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"web1.dc1-example-org.internal"}; !slices.Equal(d.Cert.DNSNames, want) {
		t.Errorf("funcs DNSNames = %q, want %q", d.Cert.DNSNames, want)
	}
}

func TestDecideRenderError(t *testing.T) {
	p := evalP(t)
	// By pattern and in no group of the grant: "{{.Short}}.{{.Group}}.internal"
	// renders an empty label.
	d, err := p.Decide("odd", policy.Facts{Node: "odd1.example.org"})
	if err != nil {
		t.Fatalf("Decide: %v; a grant that applies is no error", err)
	}
	if d.Via != "pattern odd*.example.org" || d.Grant == nil {
		t.Errorf("decision %+v", d)
	}
	if !errors.Is(d.Err, policy.ErrRender) {
		t.Fatalf("Decision.Err = %v, want ErrRender", d.Err)
	}
	if d.Cert != nil {
		t.Errorf("Cert %+v with a render error", d.Cert)
	}
	for _, w := range []string{`"odd1..internal"`, "odd1.example.org"} {
		if !strings.Contains(d.Err.Error(), w) {
			t.Errorf("Err %q does not contain %q", d.Err, w)
		}
	}
	// The same grant renders for a node in the group.
	d, err = p.Decide("odd", policy.Facts{Node: "odd1.example.org", Groups: []string{"edge"}})
	if err != nil || d.Err != nil || !slices.Equal(d.Cert.DNSNames, []string{"odd1.edge.internal"}) {
		t.Errorf("odd in edge: %v, %+v", err, d)
	}

	// An address from the token that is no address.
	d, err = p.Decide("etcd-peer", policy.Facts{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.1", "not-an-ip"}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(d.Err, policy.ErrRender) || !strings.Contains(d.Err.Error(), `"not-an-ip"`) {
		t.Errorf("bad token address: Err = %v, want ErrRender naming it", d.Err)
	}
}

func TestExplain(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		f          policy.Facts
		groups     []string
		granted    []string
		via        []string
		notGranted []string
	}{
		{
			f:          policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"edge"}},
			groups:     []string{"edge", "ops", "web"},
			granted:    []string{"bundle", "client-all", "funcs", "odd", "web-server"},
			via:        []string{"all nodes", "all nodes", "node web1.dc1.example.org", "group edge", "group web"},
			notGranted: []string{"etcd-peer"},
		},
		{
			f:          policy.Facts{Node: "etcd1.dc1.example.org"},
			groups:     []string{"etcd"},
			granted:    []string{"bundle", "client-all", "etcd-peer"},
			via:        []string{"all nodes", "all nodes", "group etcd"},
			notGranted: []string{"funcs", "odd", "web-server"},
		},
		{
			f:          policy.Facts{Node: "odd7.example.org"},
			groups:     nil,
			granted:    []string{"bundle", "client-all", "odd"},
			via:        []string{"all nodes", "all nodes", "pattern odd*.example.org"},
			notGranted: []string{"etcd-peer", "funcs", "web-server"},
		},
	} {
		groups, granted, notGranted := p.Explain(tc.f)
		if !slices.Equal(groups, tc.groups) {
			t.Errorf("%s: groups %q, want %q", tc.f.Node, groups, tc.groups)
		}
		var names, via []string
		for _, d := range granted {
			names = append(names, d.Grant.Name)
			via = append(via, d.Via)
			if (d.Grant.Type == policy.TypeX509) != (d.Cert != nil || d.Err != nil) {
				t.Errorf("%s: grant %s of type %s with Cert %v Err %v", tc.f.Node, d.Grant.Name, d.Grant.Type, d.Cert, d.Err)
			}
		}
		if !slices.Equal(names, tc.granted) || !slices.Equal(via, tc.via) {
			t.Errorf("%s: granted %q via %q, want %q via %q", tc.f.Node, names, via, tc.granted, tc.via)
		}
		if !slices.Equal(notGranted, tc.notGranted) {
			t.Errorf("%s: not granted %q, want %q", tc.f.Node, notGranted, tc.notGranted)
		}
	}
	// The grant that cannot be rendered for odd7 is still listed, with its error.
	_, granted, _ := p.Explain(policy.Facts{Node: "odd7.example.org"})
	if d := granted[2]; !errors.Is(d.Err, policy.ErrRender) {
		t.Errorf("odd for odd7: Err = %v, want ErrRender", d.Err)
	}
}

// A Cert is the caller's: changing it changes neither the policy nor the
// next decision.
func TestDecideCertIsACopy(t *testing.T) {
	p := evalP(t)
	f := policy.Facts{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.5"}}
	d1, err := p.Decide("etcd-peer", f)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := p.Decide("etcd-peer", f)
	c := d1.Cert
	c.KeyTypes[0] = "rsa-2048"
	c.Allow.DNS[0] = "*"
	c.Allow.IPs[0] = netip.MustParsePrefix("0.0.0.0/0")
	c.Allow.URIs[0] = "*"
	c.DNSNames[0] = "evil.example.org"
	c.Subject.Organization[0] = "evil"
	c.ExtKeyUsage[0] = x509.ExtKeyUsageAny
	d2, err := p.Decide("etcd-peer", f)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d2.Cert, fresh.Cert) {
		t.Errorf("a changed Cert changed the next decision:\n%+v\nwant\n%+v", d2.Cert, fresh.Cert)
	}
	if g := p.Grant("etcd-peer"); !slices.Equal(g.KeyTypes, []string{"ecdsa-p256"}) {
		t.Errorf("grant KeyTypes = %q after a Cert was changed", g.KeyTypes)
	}

	// A grant with the default key types: neither the grant nor the
	// package's defaults change with the Cert.
	defaults := slices.Clone(policy.DefaultKeyTypes)
	d3, err := p.Decide("client-all", f)
	if err != nil {
		t.Fatal(err)
	}
	d3.Cert.KeyTypes[0] = "rsa-2048"
	if !slices.Equal(policy.DefaultKeyTypes, defaults) {
		t.Errorf("DefaultKeyTypes = %q after a Cert was changed, want %q", policy.DefaultKeyTypes, defaults)
	}
	if g := p.Grant("client-all"); !slices.Equal(g.KeyTypes, defaults) {
		t.Errorf("grant KeyTypes = %q after a Cert was changed, want %q", g.KeyTypes, defaults)
	}
	// Nor does a grant's, which is the policy's to keep.
	p.Grant("client-all").KeyTypes[0] = "rsa-2048"
	if !slices.Equal(policy.DefaultKeyTypes, defaults) {
		t.Errorf("DefaultKeyTypes = %q after a grant's were changed", policy.DefaultKeyTypes)
	}
	p.Grant("client-all").KeyTypes[0] = defaults[0]
}

// A policy is read by many requests at once.
func TestDecideConcurrently(t *testing.T) {
	p := evalP(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 50 {
				f := policy.Facts{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.5"}}
				if i%2 == 1 {
					f = policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"edge"}}
				}
				_, granted, _ := p.Explain(f)
				for _, d := range granted {
					if d.Cert != nil {
						d.Cert.KeyTypes[0] = "x"
						d.Cert.Allow = policy.Allow{}
					}
				}
			}
		})
	}
	wg.Wait()
}

// A template renders zero or more names, split at white space; empty
// output adds nothing and duplicates are dropped.
func TestRenderSeveralNames(t *testing.T) {
	const src = `authorities:
  a: {}
groups:
  g1: {}
  g2: {}
grants:
  many:
    type: x509
    authority: a
    usage: server
    dns:
      - "{{.Node}} {{.Short}}.A.internal\n{{.Short}}.b.internal"
      - "{{range .Groups}}{{.}}.g.internal {{end}}"
      - "{{if .Group}}{{.Group}}.first.internal{{end}}"
      - "{{.Short}}.a.internal"
    ips: ["{{.IPs}}", "192.0.2.1"]
    uris: ["spiffe://example.org/{{.Short}} spiffe://example.org/{{.Domain}}"]
    to: {groups: [g2, g1], patterns: ["*.example.org"]}
`
	p := mustParse(t, src)
	for _, tc := range []struct {
		f    policy.Facts
		dns  []string
		ips  []string
		uris []string
	}{
		{
			f:    policy.Facts{Node: "n.example.org", Groups: []string{"g1", "g2"}, IPs: []string{"2001:db8::1", "192.0.2.1"}},
			dns:  []string{"n.example.org", "n.a.internal", "n.b.internal", "g1.g.internal", "g2.g.internal", "g2.first.internal"},
			ips:  []string{"2001:db8::1", "192.0.2.1"},
			uris: []string{"spiffe://example.org/n", "spiffe://example.org/example.org"},
		},
		{
			f:    policy.Facts{Node: "m.example.org"},
			dns:  []string{"m.example.org", "m.a.internal", "m.b.internal"},
			ips:  []string{"192.0.2.1"},
			uris: []string{"spiffe://example.org/m", "spiffe://example.org/example.org"},
		},
	} {
		c := decideCert(t, p, "many", tc.f)
		if !slices.Equal(c.DNSNames, tc.dns) {
			t.Errorf("%s: DNSNames = %q, want %q", tc.f.Node, c.DNSNames, tc.dns)
		}
		if got := ipStrings(c.IPAddresses); !slices.Equal(got, tc.ips) {
			t.Errorf("%s: IPAddresses = %q, want %q", tc.f.Node, got, tc.ips)
		}
		if got := uriStrings(c); !slices.Equal(got, tc.uris) {
			t.Errorf("%s: URIs = %q, want %q", tc.f.Node, got, tc.uris)
		}
	}
}
