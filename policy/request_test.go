package policy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/policy"
)

// Keys are made once: RSA is slow.
var testKeys = sync.OnceValue(func() map[string]crypto.Signer {
	must := func(k crypto.Signer, err error) crypto.Signer {
		if err != nil {
			panic(err)
		}
		return k
	}
	return map[string]crypto.Signer{
		"ecdsa-p256": must(authority.GenerateKey(authority.ECDSAP256)),
		"ed25519":    must(authority.GenerateKey(authority.Ed25519)),
		"ecdsa-p384": must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)),
		"rsa-2048":   must(rsa.GenerateKey(rand.Reader, 2048)),
	}
})

// csrSpec is what a CSR asks for.
type csrSpec struct {
	key    string // testKeys name; "" is ecdsa-p256
	cn     string
	dns    []string
	ips    []string
	uris   []string
	emails []string
}

func makeCSR(t *testing.T, s csrSpec) *x509.CertificateRequest {
	t.Helper()
	if s.key == "" {
		s.key = "ecdsa-p256"
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: s.cn}, DNSNames: s.dns, EmailAddresses: s.emails}
	for _, ip := range s.ips {
		a := net.ParseIP(ip)
		if a == nil {
			t.Fatalf("bad test address %q", ip)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, a)
	}
	for _, u := range s.uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, testKeys()[s.key])
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func decideCert(t *testing.T, p *policy.Policy, grant string, f policy.Facts) *policy.Cert {
	t.Helper()
	d, err := p.Decide(grant, f)
	if err != nil {
		t.Fatal(err)
	}
	if d.Err != nil {
		t.Fatal(d.Err)
	}
	return d.Cert
}

var etcd1 = policy.Facts{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.5"}}

func ipStrings(ips []net.IP) []string {
	var out []string
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

func TestRequestAllowed(t *testing.T) {
	p := evalP(t)
	rendered := struct{ dns, ips, uris []string }{
		[]string{"etcd1.dc1.example.org", "etcd1.etcd.internal"},
		[]string{"10.0.0.5"},
		[]string{"spiffe://example.org/etcd/etcd1"},
	}
	for _, tc := range []struct {
		name                  string
		csr                   csrSpec
		addDNS, addIPs, addUs []string // what the result has beyond the rendered names
	}{
		{name: "nothing extra", csr: csrSpec{}},
		{name: "rendered names again", csr: csrSpec{
			cn:   "etcd1.dc1.example.org",
			dns:  []string{"etcd1.dc1.example.org", "ETCD1.ETCD.internal"},
			ips:  []string{"10.0.0.5", "::ffff:10.0.0.5"},
			uris: []string{"spiffe://example.org/etcd/etcd1"},
		}},
		{name: "extra DNS names by pattern", csr: csrSpec{dns: []string{"a.etcd.internal", "B.etcd.internal", "a.etcd.internal"}},
			addDNS: []string{"a.etcd.internal", "b.etcd.internal"}},
		{name: "one-letter label by ?", csr: csrSpec{dns: []string{"x.short.internal"}}, addDNS: []string{"x.short.internal"}},
		// * allows any one label, and so the wildcard of them all.
		{name: "wildcard by *", csr: csrSpec{dns: []string{"*.etcd.internal"}}, addDNS: []string{"*.etcd.internal"}},
		{name: "extra addresses in prefixes", csr: csrSpec{ips: []string{"10.200.0.1", "fd00::1", "192.0.2.7", "10.255.255.255"}},
			addIPs: []string{"10.200.0.1", "fd00::1", "192.0.2.7", "10.255.255.255"}},
		{name: "extra URI", csr: csrSpec{uris: []string{"spiffe://example.org/etcd/extra"}}, addUs: []string{"spiffe://example.org/etcd/extra"}},
		{name: "CN is the rendered CN", csr: csrSpec{cn: "etcd1.dc1.example.org"}},
		{name: "CN is a rendered DNS name", csr: csrSpec{cn: "etcd1.etcd.internal"}},
		{name: "CN is an extra DNS name", csr: csrSpec{cn: "A.etcd.internal", dns: []string{"a.etcd.internal"}}, addDNS: []string{"a.etcd.internal"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := decideCert(t, p, "etcd-peer", etcd1)
			got, err := c.Request(makeCSR(t, tc.csr))
			if err != nil {
				t.Fatalf("Request: %v", err)
			}
			if want := append(slices.Clone(rendered.dns), tc.addDNS...); !slices.Equal(got.DNSNames, want) {
				t.Errorf("DNSNames = %q, want %q", got.DNSNames, want)
			}
			if want := append(slices.Clone(rendered.ips), tc.addIPs...); !slices.Equal(ipStrings(got.IPAddresses), want) {
				t.Errorf("IPAddresses = %q, want %q", ipStrings(got.IPAddresses), want)
			}
			if want := append(slices.Clone(rendered.uris), tc.addUs...); !slices.Equal(uriStrings(got), want) {
				t.Errorf("URIs = %q, want %q", uriStrings(got), want)
			}
			// The rest is the grant's, whatever the CSR says.
			if got.Subject.CommonName != "etcd1.dc1.example.org" || got.Grant != "etcd-peer" || got.Authority != "etcd" ||
				got.Lifetime != c.Lifetime || !slices.Equal(got.ExtKeyUsage, c.ExtKeyUsage) || !reflect.DeepEqual(got.Subject, c.Subject) {
				t.Errorf("Request changed more than names: %+v", got)
			}
		})
	}
}

func TestRequestRefused(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		name string
		csr  csrSpec
		kind string
		bad  string
	}{
		{"DNS name two labels deep", csrSpec{dns: []string{"a.b.etcd.internal"}}, "DNS name", "a.b.etcd.internal"},
		{"DNS name of the pattern's parent", csrSpec{dns: []string{"etcd.internal"}}, "DNS name", "etcd.internal"},
		{"DNS name elsewhere", csrSpec{dns: []string{"a.etcd.internal", "www.example.org"}}, "DNS name", "www.example.org"},
		{"DNS name with a suffix", csrSpec{dns: []string{"a.etcd.internal.evil.org"}}, "DNS name", "a.etcd.internal.evil.org"},
		{"DNS name that is no name", csrSpec{dns: []string{"a!.etcd.internal"}}, "DNS name", "a!.etcd.internal"},
		{"DNS name with an empty label", csrSpec{dns: []string{".etcd.internal"}}, "DNS name", ".etcd.internal"},
		{"DNS label too long for ?", csrSpec{dns: []string{"xy.short.internal"}}, "DNS name", "xy.short.internal"},
		// ? allows one-letter names; the wildcard covers every name.
		{"wildcard by ?", csrSpec{dns: []string{"*.short.internal"}}, "DNS name", "*.short.internal"},
		{"wildcard deeper", csrSpec{dns: []string{"*.a.etcd.internal"}}, "DNS name", "*.a.etcd.internal"},
		{"bare wildcard", csrSpec{dns: []string{"*"}}, "DNS name", "*"},
		{"address outside", csrSpec{ips: []string{"10.0.0.9", "192.168.1.1"}}, "IP address", "192.168.1.1"},
		{"address next to a bare one", csrSpec{ips: []string{"192.0.2.8"}}, "IP address", "192.0.2.8"},
		{"IPv6 address outside", csrSpec{ips: []string{"fe80::1"}}, "IP address", "fe80::1"},
		{"URI deeper", csrSpec{uris: []string{"spiffe://example.org/etcd/a/b"}}, "URI", "spiffe://example.org/etcd/a/b"},
		{"URI elsewhere", csrSpec{uris: []string{"spiffe://example.org/web/a"}}, "URI", "spiffe://example.org/web/a"},
		{"URI of another scheme", csrSpec{uris: []string{"https://example.org/etcd/a"}}, "URI", "https://example.org/etcd/a"},
		// A * that does not cross '/' must not do so once the URI is read.
		{"URI with an escaped slash", csrSpec{uris: []string{"spiffe://example.org/etcd/a%2Fb"}}, "URI", "spiffe://example.org/etcd/a%2Fb"},
		{"URI going up", csrSpec{uris: []string{"spiffe://example.org/etcd/.."}}, "URI", "spiffe://example.org/etcd/.."},
		{"URI of this segment", csrSpec{uris: []string{"spiffe://example.org/etcd/."}}, "URI", "spiffe://example.org/etcd/."},
		{"URI with a query", csrSpec{uris: []string{"spiffe://example.org/etcd/a?b=c"}}, "URI", "spiffe://example.org/etcd/a?b=c"},
		{"URI with a fragment", csrSpec{uris: []string{"spiffe://example.org/etcd/a#b"}}, "URI", "spiffe://example.org/etcd/a#b"},
		{"URI with a user", csrSpec{uris: []string{"spiffe://root@example.org/etcd/a"}}, "URI", "spiffe://root@example.org/etcd/a"},
		{"e-mail address", csrSpec{emails: []string{"root@example.org"}}, "e-mail address", "root@example.org"},
		{"CN of another name", csrSpec{cn: "evil.example.org"}, "common name", "evil.example.org"},
		{"CN allowed but not asked for", csrSpec{cn: "b.etcd.internal"}, "common name", "b.etcd.internal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := decideCert(t, p, "etcd-peer", etcd1)
			got, err := c.Request(makeCSR(t, tc.csr))
			if err == nil {
				t.Fatalf("Request allowed it: %+v", got)
			}
			if got != nil {
				t.Errorf("a Cert with the error: %+v", got)
			}
			if !errors.Is(err, policy.ErrNameNotAllowed) {
				t.Errorf("error %v is not ErrNameNotAllowed", err)
			}
			var ne *policy.NameError
			if !errors.As(err, &ne) {
				t.Fatalf("error %v is a %T, want *policy.NameError", err, err)
			}
			if ne.Grant != "etcd-peer" || ne.Kind != tc.kind || ne.Name != tc.bad {
				t.Errorf("NameError %+v, want grant etcd-peer, kind %q, name %q", ne, tc.kind, tc.bad)
			}
			if !strings.Contains(err.Error(), tc.bad) || !strings.Contains(err.Error(), "etcd-peer") {
				t.Errorf("message %q does not name %q and the grant", err, tc.bad)
			}
		})
	}
}

func TestRequestKeyTypes(t *testing.T) {
	p := evalP(t)
	for _, tc := range []struct {
		grant string
		key   string
		ok    bool
	}{
		{"etcd-peer", "ecdsa-p256", true},
		{"etcd-peer", "ed25519", false},
		{"etcd-peer", "ecdsa-p384", false},
		{"etcd-peer", "rsa-2048", false},
		{"web-server", "ed25519", true},
		{"web-server", "ecdsa-p256", true},
		{"web-server", "rsa-2048", false},
		{"web-server", "ecdsa-p384", false},
		{"client-all", "ecdsa-p384", true}, // defaults.key_types
		{"client-all", "rsa-2048", false},  // known, but not a default
	} {
		t.Run(tc.grant+"/"+tc.key, func(t *testing.T) {
			f := policy.Facts{Node: "web1.dc1.example.org", Groups: []string{"web"}}
			if tc.grant == "etcd-peer" {
				f = etcd1
			}
			c := decideCert(t, p, tc.grant, f)
			got, err := c.Request(makeCSR(t, csrSpec{key: tc.key}))
			if tc.ok {
				if err != nil || got == nil {
					t.Errorf("Request: %v", err)
				}
				return
			}
			if !errors.Is(err, policy.ErrKeyTypeRejected) {
				t.Fatalf("Request = %v, want ErrKeyTypeRejected", err)
			}
			if errors.Is(err, policy.ErrNameNotAllowed) {
				t.Errorf("a key refusal %v is also a name refusal", err)
			}
			if !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.grant) {
				t.Errorf("message %q does not name the key type %s and the grant", err, tc.key)
			}
		})
	}
}

func TestRequestMaxNames(t *testing.T) {
	const src = `limits:
  max_names: 4
authorities:
  a: {}
grants:
  g:
    type: x509
    authority: a
    usage: server
    dns: ["{{.Node}}", "{{.Short}}.internal"]
    allow:
      dns: ["*.x.internal"]
      ips: ["10.0.0.0/8"]
    to: {all: true}
`
	p := mustParse(t, src)
	c := decideCert(t, p, "g", policy.Facts{Node: "n.example.org"})
	// Two more make four, the limit; names already there do not count twice.
	got, err := c.Request(makeCSR(t, csrSpec{dns: []string{"a.x.internal", "n.example.org"}, ips: []string{"10.0.0.1"}}))
	if err != nil {
		t.Fatalf("four names: %v", err)
	}
	if n := len(got.DNSNames) + len(got.IPAddresses); n != 4 {
		t.Errorf("%d names, want 4", n)
	}
	// Three more are five.
	_, err = c.Request(makeCSR(t, csrSpec{dns: []string{"a.x.internal", "b.x.internal"}, ips: []string{"10.0.0.1"}}))
	if !errors.Is(err, policy.ErrNameNotAllowed) {
		t.Fatalf("five names: %v, want ErrNameNotAllowed", err)
	}
	var ne *policy.NameError
	if errors.As(err, &ne) {
		t.Errorf("too many names reported as the one name %q", ne.Name)
	}
	if !strings.Contains(err.Error(), "5 names") || !strings.Contains(err.Error(), "4") {
		t.Errorf("message %q does not say how many and the limit", err)
	}
}

// The Cert Request returns is a new one: changing it leaves the one the
// request was checked against as it was.
func TestRequestDoesNotAlias(t *testing.T) {
	p := evalP(t)
	c := decideCert(t, p, "etcd-peer", etcd1)
	want := decideCert(t, p, "etcd-peer", etcd1)
	csr := makeCSR(t, csrSpec{dns: []string{"a.etcd.internal"}, ips: []string{"10.0.0.9"}, uris: []string{"spiffe://example.org/etcd/x"}})
	got, err := c.Request(csr)
	if err != nil {
		t.Fatal(err)
	}
	got.DNSNames[0] = "evil.example.org"
	got.DNSNames = append(got.DNSNames[:1], "more.example.org")
	got.IPAddresses[0][0] = 99
	got.URIs[0].Host = "evil.example.org"
	got.URIs[0].Path = "/evil"
	got.URIs[1].Path = "/evil"
	got.Subject.CommonName = "evil"
	got.Subject.Organization[0] = "evil"
	got.Subject.OrganizationalUnit[0] = "evil"
	got.ExtKeyUsage[0] = x509.ExtKeyUsageAny
	got.KeyTypes[0] = "rsa-2048"
	got.Allow.DNS[0] = "*"
	got.Allow.IPs = got.Allow.IPs[:0]
	got.Allow.URIs[0] = "*"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("changing Request's result changed the Cert:\n%+v\nwant\n%+v", c, want)
	}
	// Nor does the result share the CSR's URIs.
	if u := csr.URIs[0].String(); u != "spiffe://example.org/etcd/x" {
		t.Errorf("CSR URI became %q", u)
	}
	// And the request still works the same.
	again, err := c.Request(makeCSR(t, csrSpec{dns: []string{"a.etcd.internal"}}))
	if err != nil || !slices.Equal(again.DNSNames, []string{"etcd1.dc1.example.org", "etcd1.etcd.internal", "a.etcd.internal"}) {
		t.Errorf("Request after changes: %v, %q", err, again.DNSNames)
	}
}
