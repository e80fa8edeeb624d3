package keyserver_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

// The nodes of the tests below and how they come by their groups.
const (
	etcd1 = "etcd1.dc1.example.org" // group etcd, by the group's pattern
	edge1 = "edge1.dc2.example.org" // group edge, by its token
	web1  = "web1.dc1.example.org"  // no group
)

// testPolicy is the policy most tests serve: two named authorities, a
// group by pattern and one by token, an x509 grant for each group, a
// static grant of a file and a root, and one of roots for everyone.
const testPolicy = `cgc:
  lifetime: 24h
authorities:
  etcd: {}
  web:
    max_lifetime: 720h
groups:
  etcd:
    patterns: ["etcd*.dc1.example.org"]
  edge: {}
grants:
  etcd-peer:
    type: x509
    authority: etcd
    usage: both
    subject:
      common_name: "{{.Node}}"
      organization: [example]
      organizational_unit: ["{{.Group}}"]
    dns: ["{{.Node}}", "{{.Short}}.etcd.internal"]
    ips: ["{{.IPs}}"]
    uris: ["spiffe://example.org/etcd/{{.Short}}"]
    allow:
      dns: ["*.etcd.internal"]
      ips: ["10.0.0.0/8"]
      uris: ["spiffe://example.org/etcd/*"]
    key_types: [ecdsa-p256]
    lifetime: 720h
    to:
      groups: [etcd]
  edge-client:
    type: x509
    authority: web
    usage: client
    subject:
      common_name: "edge-{{.Short}}"
    dns: ["{{.Node}}"]
    lifetime: 48h
    to:
      groups: [edge]
  etcd-bundle:
    type: static
    file: files/bundle.pem
    authorities: [etcd]
    to:
      groups: [etcd]
  everyone:
    type: static
    authorities: [web, etcd]
    to:
      all: true
`

// bundleFile is the file etcd-bundle serves before its authority's root.
const bundleFile = "# an outside root, as the operator put it here\nnot really a certificate\n"

func startPolicy(t *testing.T, intermediate bool, text string) *harness {
	t.Helper()
	return start(t, options{
		intermediate: intermediate,
		policy:       text,
		files:        map[string]string{"files/bundle.pem": bundleFile},
		authorities:  []string{"etcd", "web"},
	})
}

// fleet is one node of each kind.
type fleet struct{ etcd, edge, web node }

func (h *harness) enrollFleet(t *testing.T) fleet {
	t.Helper()
	return fleet{
		etcd: h.enrollWith(t, api.TokenRequest{Node: etcd1, IPs: []string{"10.1.2.3", "127.0.0.1"}}),
		edge: h.enrollWith(t, api.TokenRequest{Node: edge1, Groups: []string{"edge"}}),
		web:  h.enroll(t, web1),
	}
}

// csrFor is a CSR for key asking for what tmpl says (nothing when nil).
func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func signBody(t *testing.T, csr string) []byte {
	return mustJSON(t, api.SignRequest{CSR: csr})
}

// sign has n ask for grant's certificate, which must be issued, and
// audited as issued.
func (h *harness) sign(t *testing.T, n node, grant string, key crypto.Signer, tmpl *x509.CertificateRequest) (api.CertificateResponse, *x509.Certificate) {
	t.Helper()
	mark := h.mark(t)
	resp, body := h.call(t, h.nodeClient(t, n.key, n.cgc), http.MethodPost, api.PathSign+grant, signBody(t, csrFor(t, key, tmpl)))
	cr := want[api.CertificateResponse](t, resp, body, http.StatusOK)
	certs := parsePEMCerts(t, cr.Certificate)
	if len(certs) != 1 {
		t.Fatalf("certificate holds %d certificates, want the leaf alone", len(certs))
	}
	leaf := certs[0]
	if cr.Node != n.name || cr.Grant != grant || cr.Serial != authority.SerialText(leaf) || !cr.NotBefore.Equal(leaf.NotBefore) || !cr.NotAfter.Equal(leaf.NotAfter) {
		t.Errorf("answer for node %q, grant %q, serial %s, valid %v to %v; want %s, %s, and the certificate's serial %s and validity %v to %v",
			cr.Node, cr.Grant, cr.Serial, cr.NotBefore, cr.NotAfter, n.name, grant, authority.SerialText(leaf), leaf.NotBefore, leaf.NotAfter)
	}
	if ev := h.event(t, mark, keyserver.EventSign); ev.Actor != "node:"+n.name || ev.Node != n.name || ev.Grant != grant || ev.Serial != cr.Serial {
		t.Errorf("audited %+v, want %s signed for %s, serial %s", ev, grant, n.name, cr.Serial)
	}
	return cr, leaf
}

// issued is what a grant's certificate must carry.
type issued struct {
	authority string
	cn        string
	org, ou   []string
	dns, ips  []string
	uris      []string
	usages    []x509.ExtKeyUsage
	lifetime  time.Duration
	key       crypto.Signer
}

// checkIssued checks a certificate issued now under a grant: it chains,
// through the answer's chain, to the named authority's root and to no
// other root, for exactly the usages wanted, and carries exactly the
// subject, names and lifetime wanted.
func (h *harness) checkIssued(t *testing.T, cr api.CertificateResponse, leaf *x509.Certificate, w issued) {
	t.Helper()
	a := h.named[w.authority]
	if cr.Root != string(authority.EncodePEM(a.Root())) {
		t.Errorf("answer's root is not authority %s's root:\n%s", w.authority, cr.Root)
	}
	if cr.Chain != string(authority.EncodePEM(a.Chain()...)) {
		t.Errorf("answer's chain is not authority %s's chain:\n%s", w.authority, cr.Chain)
	}
	inter := x509.NewCertPool()
	for _, c := range parsePEMCerts(t, cr.Chain) {
		inter.AddCert(c)
	}
	verify := func(root *x509.Certificate, usage x509.ExtKeyUsage) error {
		roots := x509.NewCertPool()
		roots.AddCert(root)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: h.clock.Now(), KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		err := verify(a.Root(), usage)
		if slices.Contains(w.usages, usage) && err != nil {
			t.Errorf("does not verify against the root of %s for usage %v: %v", w.authority, usage, err)
		} else if !slices.Contains(w.usages, usage) && err == nil {
			t.Errorf("verifies for usage %v, which the grant does not give", usage)
		}
	}
	for name, other := range h.named {
		if name != w.authority && verify(other.Root(), w.usages[0]) == nil {
			t.Errorf("verifies against the root of %s too", name)
		}
	}
	if verify(h.auths.KeyGranting.Root(), w.usages[0]) == nil {
		t.Error("verifies against the key-granting root")
	}
	if !w.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("not for the key in the CSR")
	}
	if leaf.IsCA {
		t.Error("a grant's certificate is a CA")
	}
	var ips, uris []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	s := leaf.Subject
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"common name", s.CommonName, w.cn},
		{"organization", s.Organization, w.org},
		{"organizational unit", s.OrganizationalUnit, w.ou},
		{"DNS names", leaf.DNSNames, w.dns},
		{"IP addresses", ips, w.ips},
		{"URIs", uris, w.uris},
		{"e-mail addresses", leaf.EmailAddresses, []string(nil)},
		{"extended key usages", leaf.ExtKeyUsage, w.usages},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s %q, want %q", c.what, c.got, c.want)
		}
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != w.lifetime+authority.Backdate || !leaf.NotAfter.Equal(h.clock.Now().Add(w.lifetime)) {
		t.Errorf("valid %v to %v (%v), want %v from now (%v)", leaf.NotBefore, leaf.NotAfter, got, w.lifetime, h.clock.Now())
	}
}

var (
	grantDenied = refusal{http.StatusForbidden, api.CodeGrantDenied, keyserver.EventSignDeny}
	infoDenied  = refusal{http.StatusForbidden, api.CodeGrantDenied, keyserver.EventGrantDeny}
	staticDeny  = refusal{http.StatusForbidden, api.CodeGrantDenied, keyserver.EventStaticDeny}
)

// signRefused has n ask for grant with csr, which must be refused as
// want says, audited against n and the grant.
func (h *harness) signRefused(t *testing.T, n node, grant, csr string, want refusal) denial {
	t.Helper()
	d := h.refused(t, h.nodeClient(t, n.key, n.cgc), http.MethodPost, api.PathSign+grant, signBody(t, csr), want)
	if ev := d.event; ev.Actor != "node:"+n.name || ev.Node != n.name || ev.Grant != grant || ev.Serial != n.cgc.Serial {
		t.Errorf("audited %+v, want node %s, grant %s, serial %s", ev, n.name, grant, n.cgc.Serial)
	}
	return d
}

// staticRefused has n fetch a static grant, which must be refused.
func (h *harness) staticRefused(t *testing.T, n node, name string) denial {
	t.Helper()
	d := h.refused(t, h.nodeClient(t, n.key, n.cgc), http.MethodGet, api.PathStatic+name, nil, staticDeny)
	if ev := d.event; ev.Actor != "node:"+n.name || ev.Node != n.name || ev.Grant != name {
		t.Errorf("audited %+v, want node %s, grant %s", ev, n.name, name)
	}
	return d
}

func (h *harness) policyStatus(t *testing.T) api.PolicyStatus {
	t.Helper()
	resp, body := h.call(t, h.admin, http.MethodGet, api.PathPolicy, nil)
	return want[api.PolicyStatus](t, resp, body, http.StatusOK)
}

// reload rewrites the policy file and has the administrator reload it,
// which must succeed and be audited with the new digest.
func (h *harness) reload(t *testing.T, text string) api.PolicyStatus {
	t.Helper()
	writeFile(t, filepath.Dir(h.policyFile), filepath.Base(h.policyFile), text)
	mark := h.mark(t)
	resp, body := h.call(t, h.admin, http.MethodPost, api.PathPolicyReload, nil)
	st := want[api.PolicyStatus](t, resp, body, http.StatusOK)
	if ev := h.event(t, mark, keyserver.EventPolicyLoad); ev.Reason != st.Digest {
		t.Errorf("audited %+v, want the new digest %s", ev, st.Digest)
	}
	if st.File != h.policyFile || !st.LoadedAt.Equal(h.clock.Now()) {
		t.Errorf("reloaded %s at %v, want %s now (%v)", st.File, st.LoadedAt, h.policyFile, h.clock.Now())
	}
	if got := h.policyStatus(t); !reflect.DeepEqual(got, st) {
		t.Errorf("after reload the status is %+v, want %+v", got, st)
	}
	h.policyInForce(t)
	return st
}

var problemLine = regexp.MustCompile(`^(.*):([1-9][0-9]*): (.+)$`)

// reloadRefused rewrites the policy file with text the keyserver must
// refuse and checks that nothing changed: not the store, not the policy
// served. It returns the problems the administrator was told.
func (h *harness) reloadRefused(t *testing.T, text string) []string {
	t.Helper()
	old := h.policyStatus(t)
	writeFile(t, filepath.Dir(h.policyFile), filepath.Base(h.policyFile), text)
	before, mark := h.snapshot(t), h.mark(t)
	resp, body := h.call(t, h.admin, http.MethodPost, api.PathPolicyReload, nil)
	e := wantError(t, resp, body, http.StatusUnprocessableEntity, api.CodePolicyInvalid)
	h.sameStore(t, before)
	ev := h.event(t, mark, keyserver.EventPolicyReject)
	if !strings.Contains(ev.Reason, "still serving "+old.Digest) {
		t.Errorf("audited %+v, want the digest still served (%s) in the reason", ev, old.Digest)
	}
	if len(e.Details) == 0 {
		t.Errorf("refused with no details: %+v", e)
	}
	for _, d := range e.Details {
		if m := problemLine.FindStringSubmatch(d); m == nil || m[1] != h.policyFile {
			t.Errorf("detail %q is not %s:line: message", d, h.policyFile)
		}
		if !strings.Contains(ev.Reason, d) {
			t.Errorf("detail %q is not in the audited reason %q", d, ev.Reason)
		}
	}
	if got := h.policyStatus(t); !reflect.DeepEqual(got, old) {
		t.Errorf("after a refused reload the status is %+v, want %+v", got, old)
	}
	return e.Details
}

// lineOf is the line of text on which s first appears.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	i := strings.Index(text, s)
	if i < 0 {
		t.Fatalf("%q is not in the policy", s)
	}
	return strings.Count(text[:i], "\n") + 1
}

func replace(t *testing.T, text, old, new string) string {
	t.Helper()
	if strings.Count(text, old) != 1 {
		t.Fatalf("%q is not in the policy exactly once", old)
	}
	return strings.Replace(text, old, new, 1)
}

func sha256Text(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func rootPEM(a *authority.Authority) []byte { return authority.EncodePEM(a.Root()) }

// TestSignByGroup: a node in a group by its token and one in a group by
// its name each get the certificate of their own group's grant, from the
// grant's authority, with exactly what the grant renders for them, and
// nothing of the other's.
func TestSignByGroup(t *testing.T) {
	t.Parallel()
	for _, intermediate := range []bool{false, true} {
		t.Run(fmt.Sprintf("intermediate=%v", intermediate), func(t *testing.T) {
			t.Parallel()
			h := startPolicy(t, intermediate, testPolicy)
			if got := len(h.named["etcd"].Chain()); (got == 1) != intermediate {
				t.Fatalf("named authority generated with %d intermediates (intermediate %v)", got, intermediate)
			}
			f := h.enrollFleet(t)

			key := newKey(t)
			cr, leaf := h.sign(t, f.etcd, "etcd-peer", key, nil)
			h.checkIssued(t, cr, leaf, issued{
				authority: "etcd",
				cn:        etcd1,
				org:       []string{"example"},
				ou:        []string{"etcd"},
				dns:       []string{etcd1, "etcd1.etcd.internal"},
				ips:       []string{"10.1.2.3", "127.0.0.1"},
				uris:      []string{"spiffe://example.org/etcd/etcd1"},
				usages:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				lifetime:  720 * time.Hour,
				key:       key,
			})

			key = newKey(t)
			cr, leaf = h.sign(t, f.edge, "edge-client", key, nil)
			h.checkIssued(t, cr, leaf, issued{
				authority: "web",
				cn:        "edge-edge1",
				dns:       []string{edge1},
				usages:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
				lifetime:  48 * time.Hour,
				key:       key,
			})

			for _, c := range []struct {
				n     node
				grant string
			}{{f.etcd, "edge-client"}, {f.edge, "etcd-peer"}, {f.web, "etcd-peer"}, {f.web, "edge-client"}} {
				h.signRefused(t, c.n, c.grant, csrFor(t, newKey(t), nil), grantDenied)
			}
		})
	}
}

// TestSignGrantDenied: a grant the node does not have and one that does
// not exist get one answer; the wrong endpoint for a grant the node has
// gets a hint.
func TestSignGrantDenied(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	csr := csrFor(t, newKey(t), nil)

	notYours := h.signRefused(t, f.web, "etcd-peer", csr, grantDenied)
	for _, c := range []struct {
		n     node
		grant string
	}{{f.web, "nope"}, {f.etcd, "edge-client"}, {f.edge, "etcd-bundle"}, {f.etcd, "no-such-grant"}} {
		if d := h.signRefused(t, c.n, c.grant, csr, grantDenied); !bytes.Equal(d.body, notYours.body) {
			t.Errorf("%s asking for %s: told %s, want %s as for a grant not given", c.n.name, c.grant, d.body, notYours.body)
		}
	}
	if strings.Contains(string(notYours.body), "etcd-peer") {
		t.Errorf("the refusal names the grant: %s", notYours.body)
	}

	// A static grant the node has, asked of the sign endpoint.
	d := h.signRefused(t, f.etcd, "everyone", csr, grantDenied)
	if !strings.Contains(d.err.Message, api.PathStatic+"everyone") {
		t.Errorf("sign on a static grant: message %q, want it to point to %s", d.err.Message, api.PathStatic+"everyone")
	}
	// An x509 grant the node has, asked of the static endpoint.
	d = h.staticRefused(t, f.etcd, "etcd-peer")
	if !strings.Contains(d.err.Message, api.PathSign+"etcd-peer") {
		t.Errorf("static on an x509 grant: message %q, want it to point to %s", d.err.Message, api.PathSign+"etcd-peer")
	}
}

// TestSignCSRRefused: the CSR gives the key and may add the names the
// grant allows; anything else is refused, naming what was refused.
func TestSignCSRRefused(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	n := h.enrollWith(t, api.TokenRequest{Node: etcd1, IPs: []string{"127.0.0.1"}})
	ed25519Key, err := authority.GenerateKey(authority.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	badSig := csrDER(t, newKey(t))
	badSig[len(badSig)-1] ^= 1
	uri := func(s string) []*url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*url.URL{u}
	}
	nameNotAllowed := refusal{http.StatusForbidden, api.CodeNameNotAllowed, keyserver.EventSignDeny}
	keyRejected := refusal{http.StatusBadRequest, api.CodeKeyRejected, keyserver.EventSignDeny}
	csrInvalid := refusal{http.StatusBadRequest, api.CodeCSRInvalid, keyserver.EventSignDeny}
	for _, tc := range []struct {
		name    string
		csr     string
		want    refusal
		message string // in the message the node is told
	}{
		{"DNS name outside the allowed", csrFor(t, newKey(t), &x509.CertificateRequest{DNSNames: []string{"evil.example.com"}}), nameNotAllowed, "evil.example.com"},
		{"DNS name across a dot", csrFor(t, newKey(t), &x509.CertificateRequest{DNSNames: []string{"a.b.etcd.internal"}}), nameNotAllowed, "a.b.etcd.internal"},
		{"an allowed name beside one not allowed", csrFor(t, newKey(t), &x509.CertificateRequest{DNSNames: []string{"ok.etcd.internal", "web1.dc1.example.org"}}), nameNotAllowed, "web1.dc1.example.org"},
		{"IP address outside the allowed", csrFor(t, newKey(t), &x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("192.168.1.1")}}), nameNotAllowed, "192.168.1.1"},
		{"IPv6 address", csrFor(t, newKey(t), &x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("2001:db8::1")}}), nameNotAllowed, "2001:db8::1"},
		{"URI outside the allowed", csrFor(t, newKey(t), &x509.CertificateRequest{URIs: uri("spiffe://example.org/web/etcd1")}), nameNotAllowed, "spiffe://example.org/web/etcd1"},
		{"URI across a slash", csrFor(t, newKey(t), &x509.CertificateRequest{URIs: uri("spiffe://example.org/etcd/a/b")}), nameNotAllowed, "spiffe://example.org/etcd/a/b"},
		{"e-mail address", csrFor(t, newKey(t), &x509.CertificateRequest{EmailAddresses: []string{"root@example.org"}}), nameNotAllowed, "root@example.org"},
		{"another common name", csrFor(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "etcd2.dc1.example.org"}}), nameNotAllowed, "etcd2.dc1.example.org"},
		{"Ed25519 key where only ecdsa-p256 goes", csrFor(t, ed25519Key, nil), keyRejected, "ed25519"},
		{"RSA 1024 key", csrFor(t, weakRSA, nil), keyRejected, "RSA"},
		{"not PEM nor DER", "hello", csrInvalid, ""},
		{"bad signature", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: badSig})), csrInvalid, ""},
		{"certificate instead of a CSR", n.cgc.Certificate, csrInvalid, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := h.signRefused(t, n, "etcd-peer", tc.csr, tc.want)
			if !strings.Contains(d.err.Message, tc.message) {
				t.Errorf("told %q, want it to name %q", d.err.Message, tc.message)
			}
		})
	}
	t.Run("malformed JSON", func(t *testing.T) {
		h.refused(t, h.nodeClient(t, n.key, n.cgc), http.MethodPost, api.PathSign+"etcd-peer", []byte(`{"csr":`),
			refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventSignDeny})
	})
}

// TestSignExtraNames: names the grant allows are added to the rendered
// ones; names already rendered are not repeated.
func TestSignExtraNames(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	key := newKey(t)
	u1, _ := url.Parse("spiffe://example.org/etcd/extra")
	u2, _ := url.Parse("spiffe://example.org/etcd/etcd1")
	cr, leaf := h.sign(t, f.etcd, "etcd-peer", key, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "api.etcd.internal"}, // one of the certificate's DNS names: accepted, not used
		DNSNames:    []string{"api.etcd.internal", etcd1},
		IPAddresses: []net.IP{net.ParseIP("10.9.9.9"), net.ParseIP("127.0.0.1")},
		URIs:        []*url.URL{u1, u2},
	})
	h.checkIssued(t, cr, leaf, issued{
		authority: "etcd",
		cn:        etcd1,
		org:       []string{"example"},
		ou:        []string{"etcd"},
		dns:       []string{etcd1, "etcd1.etcd.internal", "api.etcd.internal"},
		ips:       []string{"10.1.2.3", "127.0.0.1", "10.9.9.9"},
		uris:      []string{"spiffe://example.org/etcd/etcd1", "spiffe://example.org/etcd/extra"},
		usages:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		lifetime:  720 * time.Hour,
		key:       key,
	})
}

// TestSignRenderError: a grant that renders for some nodes and not for
// others refuses the others as a policy problem, and says so in their
// grant list.
func TestSignRenderError(t *testing.T) {
	t.Parallel()
	text := testPolicy + `  by-group:
    type: x509
    authority: etcd
    usage: client
    subject:
      common_name: "{{.Groups}}"
    to:
      all: true
`
	h := startPolicy(t, false, text)
	f := h.enrollFleet(t)
	key := newKey(t)
	cr, leaf := h.sign(t, f.edge, "by-group", key, nil)
	h.checkIssued(t, cr, leaf, issued{authority: "etcd", cn: "edge", usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, lifetime: 168 * time.Hour, key: key})

	// In two groups, the common name would be two words.
	both := h.enrollWith(t, api.TokenRequest{Node: "etcd7.dc1.example.org", Groups: []string{"edge"}})
	d := h.signRefused(t, both, "by-group", csrFor(t, newKey(t), nil), refusal{http.StatusInternalServerError, api.CodePolicyInvalid, keyserver.EventSignDeny})
	if !strings.Contains(d.err.Message, "common name") {
		t.Errorf("told %q, want the problem (the common name) named", d.err.Message)
	}
	resp, body := h.call(t, h.nodeClient(t, both.key, both.cgc), http.MethodGet, api.PathGrants+"/by-group", nil)
	if gi := want[api.GrantInfo](t, resp, body, http.StatusOK); gi.Error == "" || gi.CommonName != "" {
		t.Errorf("grant info %+v, want the render error and no names", gi)
	}
}

// TestNodeEndpointsAuth: the grant endpoints need a node's current CGC.
func TestNodeEndpointsAuth(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	resp, body := h.call(t, h.admin, http.MethodPost, api.PathNodes+"/"+etcd1+api.PathRevoke, nil)
	want[api.NodeInfo](t, resp, body, http.StatusOK)
	revoked := h.nodeClient(t, f.etcd.key, f.etcd.cgc)
	for _, ep := range []struct {
		method, path string
		body         []byte
	}{
		{http.MethodPost, api.PathSign + "etcd-peer", signBody(t, csrFor(t, newKey(t), nil))},
		{http.MethodGet, api.PathStatic + "everyone", nil},
		{http.MethodGet, api.PathGrants, nil},
		{http.MethodGet, api.PathGrants + "/everyone", nil},
	} {
		h.refused(t, h.anon, ep.method, ep.path, ep.body, refusal{http.StatusUnauthorized, api.CodeCertRequired, keyserver.EventAuthDeny})
		h.refused(t, h.admin, ep.method, ep.path, ep.body, refusal{http.StatusForbidden, api.CodeCertInvalid, keyserver.EventAuthDeny})
		h.refused(t, revoked, ep.method, ep.path, ep.body, refusal{http.StatusForbidden, api.CodeNodeRevoked, keyserver.EventAuthDeny})
	}
}

// TestStatic: a static grant serves its file, then its authorities'
// roots, with the digest of exactly what it serves.
func TestStatic(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	etcdRoot, webRoot := rootPEM(h.named["etcd"]), rootPEM(h.named["web"])
	for _, tc := range []struct {
		n    node
		name string
		want []byte
	}{
		{f.etcd, "etcd-bundle", append([]byte(bundleFile), etcdRoot...)},
		{f.etcd, "everyone", append(slices.Clone(webRoot), etcdRoot...)},
		{f.web, "everyone", append(slices.Clone(webRoot), etcdRoot...)},
	} {
		resp, body := h.call(t, h.nodeClient(t, tc.n.key, tc.n.cgc), http.MethodGet, api.PathStatic+tc.name, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s fetching %s: status %d (%s)", tc.n.name, tc.name, resp.StatusCode, body)
		}
		if !bytes.Equal(body, tc.want) {
			t.Errorf("%s fetching %s: got\n%s\nwant\n%s", tc.n.name, tc.name, body, tc.want)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("Content-Type %q, want application/octet-stream", ct)
		}
		if got := resp.Header.Get(api.HeaderDigest); got != sha256Text(tc.want) {
			t.Errorf("%s %q, want %q", api.HeaderDigest, got, sha256Text(tc.want))
		}
	}
	notYours := h.staticRefused(t, f.edge, "etcd-bundle")
	for _, name := range []string{"nope", "etcd-bundle"} {
		if d := h.staticRefused(t, f.web, name); !bytes.Equal(d.body, notYours.body) {
			t.Errorf("static %s: told %s, want %s as for a grant not given", name, d.body, notYours.body)
		}
	}
}

// TestGrantList: a node learns exactly its own grants, rendered for it,
// and nothing of the others.
func TestGrantList(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	digest := h.policyStatus(t).Digest
	etcdPin, webPin := authority.SPKIPin(h.named["etcd"].Root()), authority.SPKIPin(h.named["web"].Root())
	bundle := append([]byte(bundleFile), rootPEM(h.named["etcd"])...)
	roots := append(rootPEM(h.named["web"]), rootPEM(h.named["etcd"])...)
	everyone := api.GrantInfo{Name: "everyone", Type: "static", Via: "all nodes", Digest: sha256Text(roots), Size: len(roots)}
	for _, tc := range []struct {
		n    node
		want api.GrantList
	}{
		{f.etcd, api.GrantList{Node: etcd1, Groups: []string{"etcd"}, Policy: digest, Grants: []api.GrantInfo{
			{Name: "etcd-bundle", Type: "static", Via: "group etcd", Digest: sha256Text(bundle), Size: len(bundle)},
			{
				Name: "etcd-peer", Type: "x509", Via: "group etcd", Authority: "etcd", RootPin: etcdPin, Usage: "both",
				CommonName:  etcd1,
				Subject:     "CN=" + etcd1 + ",OU=etcd,O=example",
				DNSNames:    []string{etcd1, "etcd1.etcd.internal"},
				IPAddresses: []string{"10.1.2.3", "127.0.0.1"},
				URIs:        []string{"spiffe://example.org/etcd/etcd1"},
				AllowDNS:    []string{"*.etcd.internal"},
				AllowIPs:    []string{"10.0.0.0/8"},
				AllowURIs:   []string{"spiffe://example.org/etcd/*"},
				KeyTypes:    []string{"ecdsa-p256"},
				Lifetime:    api.Duration(720 * time.Hour),
			},
			everyone,
		}}},
		{f.edge, api.GrantList{Node: edge1, Groups: []string{"edge"}, Policy: digest, Grants: []api.GrantInfo{
			{
				Name: "edge-client", Type: "x509", Via: "group edge", Authority: "web", RootPin: webPin, Usage: "client",
				CommonName: "edge-edge1",
				Subject:    "CN=edge-edge1",
				DNSNames:   []string{edge1},
				KeyTypes:   []string{"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-3072", "rsa-4096"},
				Lifetime:   api.Duration(48 * time.Hour),
			},
			everyone,
		}}},
		{f.web, api.GrantList{Node: web1, Groups: []string{}, Policy: digest, Grants: []api.GrantInfo{everyone}}},
	} {
		c := h.nodeClient(t, tc.n.key, tc.n.cgc)
		resp, body := h.call(t, c, http.MethodGet, api.PathGrants, nil)
		got := want[api.GrantList](t, resp, body, http.StatusOK)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s's grants:\n%+v\nwant\n%+v", tc.n.name, got, tc.want)
		}
		if bytes.Contains(body, []byte("not_granted")) {
			t.Errorf("%s's grants tell what it does not get: %s", tc.n.name, body)
		}
		for _, gi := range tc.want.Grants {
			resp, body := h.call(t, c, http.MethodGet, api.PathGrants+"/"+gi.Name, nil)
			if got := want[api.GrantInfo](t, resp, body, http.StatusOK); !reflect.DeepEqual(got, gi) {
				t.Errorf("%s's grant %s: %+v, want %+v", tc.n.name, gi.Name, got, gi)
			}
		}
	}
	// The digest a grant list gives is the one the file is served with.
	resp, _ := h.call(t, h.nodeClient(t, f.etcd.key, f.etcd.cgc), http.MethodGet, api.PathStatic+"etcd-bundle", nil)
	if got := resp.Header.Get(api.HeaderDigest); got != sha256Text(bundle) {
		t.Errorf("etcd-bundle served with digest %s, listed with %s", got, sha256Text(bundle))
	}

	c := h.nodeClient(t, f.edge.key, f.edge.cgc)
	notYours := h.refused(t, c, http.MethodGet, api.PathGrants+"/etcd-peer", nil, infoDenied)
	if ev := notYours.event; ev.Node != edge1 || ev.Grant != "etcd-peer" {
		t.Errorf("audited %+v, want node %s, grant etcd-peer", ev, edge1)
	}
	if d := h.refused(t, c, http.MethodGet, api.PathGrants+"/nope", nil, infoDenied); !bytes.Equal(d.body, notYours.body) {
		t.Errorf("unknown grant: told %s, want %s as for a grant not given", d.body, notYours.body)
	}
}

// TestNamedCA: a named authority's chain and root are public; only the
// authorities the policy names are served.
func TestNamedCA(t *testing.T) {
	t.Parallel()
	for _, intermediate := range []bool{false, true} {
		h := start(t, options{
			intermediate: intermediate,
			policy:       testPolicy,
			files:        map[string]string{"files/bundle.pem": bundleFile},
			authorities:  []string{"etcd", "web", "spare"}, // spare is not in the policy
		})
		for _, name := range []string{"etcd", "web"} {
			a := h.named[name]
			resp, body := h.call(t, h.anon, http.MethodGet, api.PathCA+name, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/pem-certificate-chain" {
				t.Fatalf("%s (intermediate %v): status %d, type %q", name, intermediate, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			got := parsePEMCerts(t, string(body))
			wantCerts := append(slices.Clone(a.Chain()), a.Root())
			if !slices.EqualFunc(got, wantCerts, (*x509.Certificate).Equal) {
				t.Errorf("%s (intermediate %v): served %d certificates, want its chain then its root (%d)", name, intermediate, len(got), len(wantCerts))
			}
		}
		for _, name := range []string{"spare", "nope"} {
			h.refused(t, h.anon, http.MethodGet, api.PathCA+name, nil, refusal{http.StatusNotFound, api.CodeNotFound, ""})
		}
	}
}

// TestTokenGroups: a token's groups must be the policy's.
func TestTokenGroups(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	for _, groups := range [][]string{{"nope"}, {"edge", "nope"}, {"Edge"}} {
		d := h.refused(t, h.admin, http.MethodPost, api.PathTokens, mustJSON(t, api.TokenRequest{Node: edge1, Groups: groups}),
			refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny})
		bad := groups[len(groups)-1]
		if !strings.Contains(d.err.Message, `"`+bad+`"`) {
			t.Errorf("groups %q: told %q, want the group %q named", groups, d.err.Message, bad)
		}
		if d.event.Actor != "admin:"+adminName {
			t.Errorf("audited %+v, want the administrator", d.event)
		}
	}
	// Groups are kept sorted, once each, and the node has them.
	n := h.enrollWith(t, api.TokenRequest{Node: edge1, Groups: []string{"etcd", "edge", "etcd"}})
	if got := h.self(t, n).Groups; !slices.Equal(got, []string{"edge", "etcd"}) {
		t.Errorf("node's groups %q, want [edge etcd]", got)
	}

	// Without a policy there are no groups at all.
	bare := start(t, options{})
	bare.refused(t, bare.admin, http.MethodPost, api.PathTokens, mustJSON(t, api.TokenRequest{Node: edge1, Groups: []string{"edge"}}),
		refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny})
}

// TestPolicyReload: a valid file takes effect at once; a refused one
// changes nothing, and the administrator learns every problem by line.
func TestPolicyReload(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	first := h.policyStatus(t)
	if want := (api.PolicyStatus{
		File:        h.policyFile,
		Digest:      first.Digest,
		LoadedAt:    h.clock.Now(),
		Authorities: []string{"etcd", "web"},
		Groups:      []string{"edge", "etcd"},
		Grants:      []string{"edge-client", "etcd-bundle", "etcd-peer", "everyone"},
	}); !reflect.DeepEqual(first, want) || !strings.HasPrefix(first.Digest, "sha256:") {
		t.Errorf("status %+v, want %+v", first, want)
	}
	etcdPeer := func(t *testing.T, extra ...string) {
		t.Helper()
		_, leaf := h.sign(t, f.etcd, "etcd-peer", newKey(t), nil)
		if want := append([]string{etcd1, "etcd1.etcd.internal"}, extra...); !slices.Equal(leaf.DNSNames, want) {
			t.Errorf("DNS names %q, want %q", leaf.DNSNames, want)
		}
	}
	etcdPeer(t)

	h.clock.Advance(time.Minute)
	current := replace(t, testPolicy, `dns: ["{{.Node}}", "{{.Short}}.etcd.internal"]`, `dns: ["{{.Node}}", "{{.Short}}.etcd.internal", "{{.Short}}.{{.Group}}.example.net"]`)
	second := h.reload(t, current)
	if second.Digest == first.Digest {
		t.Errorf("the digest stayed %s when the policy changed", first.Digest)
	}
	etcdPeer(t, "etcd1.etcd.example.net")

	// Reloading the same file changes nothing but the time.
	h.clock.Advance(time.Minute)
	if again := h.reload(t, current); again.Digest != second.Digest {
		t.Errorf("the same file reloaded has digest %s, was %s", again.Digest, second.Digest)
	}

	for _, tc := range []struct {
		name  string
		text  string
		words []string // in the problems, in order (TestPolicyReloadLines checks the lines)
	}{
		{"unknown key", replace(t, current, "    usage: both\n", "    usage: both\n    colour: red\n"), []string{`unknown key "colour"`}},
		{"authority without a directory", replace(t, current, "  etcd: {}\n", "  etcd: {}\n  kube: {}\n"), []string{`authority "kube"`}},
		{"two problems", replace(t, replace(t, current, "authority: web", "authority: nope"), "usage: both", "usage: sideways"), []string{`"sideways"`, `"nope"`}},
		{"static file missing", replace(t, current, "files/bundle.pem", "files/missing.pem"), []string{"missing.pem"}},
		{"not YAML", current + "grants: [\n", []string{""}},
		{"renewal window longer than the CGC lifetime", replace(t, current, "  lifetime: 24h\n", "  lifetime: 24h\n  renew_after_expiry: 48h\n"), []string{"renew_after_expiry"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			details := h.reloadRefused(t, tc.text)
			if len(details) != len(tc.words) {
				t.Fatalf("problems %q, want %d", details, len(tc.words))
			}
			prev := 0
			for i, d := range details {
				m := problemLine.FindStringSubmatch(d)
				if m == nil {
					continue // reloadRefused has said so
				}
				var line int
				fmt.Sscan(m[2], &line)
				if line < prev {
					t.Errorf("problems %q are not in file order", details)
				}
				prev = line
				if !strings.Contains(m[3], tc.words[i]) {
					t.Errorf("problem %q, want it to say %q", d, tc.words[i])
				}
			}
			etcdPeer(t, "etcd1.etcd.example.net") // the last good policy still serves
			h.refused(t, h.anon, http.MethodGet, api.PathCA+"kube", nil, refusal{http.StatusNotFound, api.CodeNotFound, ""})
		})
	}

	// A valid policy that drops the edge group, its grant and its
	// authority: all gone at once.
	h.clock.Advance(time.Minute)
	smaller := replace(t, current, "  web:\n    max_lifetime: 720h\n", "")
	smaller = replace(t, smaller, "  edge: {}\n", "")
	smaller = replace(t, smaller, smaller[strings.Index(smaller, "  edge-client:"):strings.Index(smaller, "  etcd-bundle:")], "")
	smaller = replace(t, smaller, "authorities: [web, etcd]", "authorities: [etcd]")
	third := h.reload(t, smaller)
	if !slices.Equal(third.Authorities, []string{"etcd"}) || !slices.Equal(third.Groups, []string{"etcd"}) || slices.Contains(third.Grants, "edge-client") {
		t.Errorf("status %+v, want web, edge and edge-client gone", third)
	}
	h.refused(t, h.anon, http.MethodGet, api.PathCA+"web", nil, refusal{http.StatusNotFound, api.CodeNotFound, ""})
	h.signRefused(t, f.edge, "edge-client", csrFor(t, newKey(t), nil), grantDenied)
	resp, body := h.call(t, h.nodeClient(t, f.edge.key, f.edge.cgc), http.MethodGet, api.PathStatic+"everyone", nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, rootPEM(h.named["etcd"])) {
		t.Errorf("everyone after the reload: status %d, %s; want the etcd root alone", resp.StatusCode, body)
	}
	h.refused(t, h.admin, http.MethodPost, api.PathTokens, mustJSON(t, api.TokenRequest{Node: "edge2", Groups: []string{"edge"}}),
		refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny})
}

// TestPolicyReloadLines: each kind of problem is reported at its line.
func TestPolicyReloadLines(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	for _, tc := range []struct {
		name, text, at, says string // at: the text on the line the problem must be reported at
	}{
		{"unknown key", replace(t, testPolicy, "    usage: both\n", "    usage: both\n    colour: red\n"), "colour: red", `unknown key "colour"`},
		{"authority without a directory", replace(t, testPolicy, "  etcd: {}\n", "  etcd: {}\n  kube: {}\n"), "kube: {}", `authority "kube"`},
		{"undeclared authority", replace(t, testPolicy, "authority: web", "authority: nope"), "authority: nope", `"nope"`},
		{"undeclared group", replace(t, testPolicy, "groups: [edge]", "groups: [edgy]"), "groups: [edgy]", `"edgy"`},
		{"static file missing", replace(t, testPolicy, "files/bundle.pem", "files/missing.pem"), "files/missing.pem", "missing.pem"},
		{"renewal window longer than the CGC lifetime", replace(t, testPolicy, "  lifetime: 24h\n", "  lifetime: 24h\n  renew_after_expiry: 48h\n"), "renew_after_expiry: 48h", "renew_after_expiry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			details := h.reloadRefused(t, tc.text)
			want := fmt.Sprintf("%s:%d: ", h.policyFile, lineOf(t, tc.text, tc.at))
			if len(details) != 1 || !strings.HasPrefix(details[0], want) || !strings.Contains(details[0], tc.says) {
				t.Errorf("problems %q, want one starting %q that says %s", details, want, tc.says)
			}
		})
	}
	t.Run("problems in file order", func(t *testing.T) {
		text := replace(t, replace(t, testPolicy, "authority: web", "authority: nope"), "usage: both", "usage: sideways")
		details := h.reloadRefused(t, text)
		wantPrefixes := []string{
			fmt.Sprintf("%s:%d: ", h.policyFile, lineOf(t, text, "usage: sideways")),
			fmt.Sprintf("%s:%d: ", h.policyFile, lineOf(t, text, "authority: nope")),
		}
		if len(details) != 2 || !strings.HasPrefix(details[0], wantPrefixes[0]) || !strings.HasPrefix(details[1], wantPrefixes[1]) {
			t.Errorf("problems %q, want two, starting %q", details, wantPrefixes)
		}
	})
}

// TestPolicyReloadWithoutPolicy: a keyserver without a policy file has
// nothing to reload.
func TestPolicyReloadWithoutPolicy(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	h.refused(t, h.admin, http.MethodPost, api.PathPolicyReload, nil, refusal{http.StatusConflict, api.CodeConflict, keyserver.EventAdminDeny})
	if st := h.policyStatus(t); st.File != "" || len(st.Grants)+len(st.Groups)+len(st.Authorities) != 0 {
		t.Errorf("status %+v, want an empty policy", st)
	}
}

// TestPolicyAdminOnly: the policy endpoints are an administrator's.
func TestPolicyAdminOnly(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	n := h.enroll(t, web1)
	for _, c := range []struct {
		client *http.Client
		want   refusal
	}{
		{h.anon, refusal{http.StatusUnauthorized, api.CodeCertRequired, keyserver.EventAuthDeny}},
		{h.nodeClient(t, n.key, n.cgc), refusal{http.StatusForbidden, api.CodeCertInvalid, keyserver.EventAuthDeny}},
	} {
		h.refused(t, c.client, http.MethodGet, api.PathPolicy, nil, c.want)
		h.refused(t, c.client, http.MethodPost, api.PathPolicyReload, nil, c.want)
		h.refused(t, c.client, http.MethodPost, api.PathPolicyExplain, mustJSON(t, api.ExplainRequest{Node: web1}), c.want)
	}
}

// TestNewRefusesBadPolicy: a keyserver does not start with a policy it
// would refuse on reload.
func TestNewRefusesBadPolicy(t *testing.T) {
	t.Parallel()
	auths, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		text  string // "" writes no policy file
		says  []string
		valid bool
	}{
		{"valid", testPolicy, nil, true},
		{"authority without a directory", replace(t, testPolicy, "  web:\n", "  kube: {}\n  web:\n"), []string{`authority "kube"`, "keyctl authority create kube", fmt.Sprintf(":%d: ", lineOf(t, replace(t, testPolicy, "  web:\n", "  kube: {}\n  web:\n"), "kube: {}"))}, false},
		{"unknown key", "cgc:\n  lifetime: 24h\n  colour: red\n", []string{`:3: unknown key "colour"`}, false},
		{"no policy file", "", []string{"policy.yaml"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, name := range []string{"etcd", "web"} {
				a, err := authority.Generate(authority.Config{Name: "test " + name})
				if err != nil {
					t.Fatal(err)
				}
				if err := a.Save(filepath.Join(dir, "authorities", name)); err != nil {
					t.Fatal(err)
				}
			}
			writeFile(t, dir, "bundle.pem", bundleFile)
			file := filepath.Join(dir, "policy.yaml")
			if tc.text != "" {
				writeFile(t, dir, "policy.yaml", strings.ReplaceAll(tc.text, "files/bundle.pem", "bundle.pem"))
			}
			_, err := keyserver.New(keyserver.Config{
				Names:        []string{"127.0.0.1"},
				KeyGranting:  auths.KeyGranting,
				Server:       auths.Server,
				Admin:        auths.Admin,
				Store:        store.NewMemory(),
				PolicyFile:   file,
				AuthorityDir: filepath.Join(dir, "authorities"),
				Logger:       slog.New(slog.DiscardHandler),
			})
			if tc.valid {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New accepted the policy")
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("New: %v; want it to say %q", err, s)
				}
			}
		})
	}
}

// TestPolicyExplain: an administrator sees how the running policy treats
// a node, admitted (with what its token gave it) or not yet.
func TestPolicyExplain(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, testPolicy)
	f := h.enrollFleet(t)
	digest := h.policyStatus(t).Digest
	explain := func(t *testing.T, req api.ExplainRequest) api.GrantList {
		t.Helper()
		before, mark := h.snapshot(t), h.mark(t)
		resp, body := h.call(t, h.admin, http.MethodPost, api.PathPolicyExplain, mustJSON(t, req))
		l := want[api.GrantList](t, resp, body, http.StatusOK)
		h.sameStore(t, before)
		h.event(t, mark, "")
		if l.Node != req.Node || l.Policy != digest {
			t.Errorf("explained %q under %s, want %q under %s", l.Node, l.Policy, req.Node, digest)
		}
		return l
	}
	names := func(l api.GrantList) []string {
		var out []string
		for _, g := range l.Grants {
			out = append(out, g.Name)
		}
		return out
	}

	// An admitted node: what it sees itself, and what it does not get.
	resp, body := h.call(t, h.nodeClient(t, f.etcd.key, f.etcd.cgc), http.MethodGet, api.PathGrants, nil)
	own := want[api.GrantList](t, resp, body, http.StatusOK)
	own.NotGranted = []string{"edge-client"}
	if got := explain(t, api.ExplainRequest{Node: etcd1}); !reflect.DeepEqual(got, own) {
		t.Errorf("explained\n%+v\nwant\n%+v", got, own)
	}

	// Its token's addresses are kept, and groups in the request added.
	got := explain(t, api.ExplainRequest{Node: etcd1, Groups: []string{"edge"}, IPs: []string{"10.7.7.7"}})
	if !slices.Equal(got.Groups, []string{"edge", "etcd"}) || !slices.Equal(names(got), []string{"edge-client", "etcd-bundle", "etcd-peer", "everyone"}) || len(got.NotGranted) != 0 {
		t.Errorf("explained %+v, want groups edge and etcd, and every grant", got)
	}
	if ips := got.Grants[2].IPAddresses; !slices.Equal(ips, []string{"10.1.2.3", "127.0.0.1", "10.7.7.7"}) {
		t.Errorf("etcd-peer for %s with an extra address: IPs %q", etcd1, ips)
	}

	// A name not admitted, with the groups and addresses of a token to come.
	got = explain(t, api.ExplainRequest{Node: "db1.example.org", Groups: []string{"etcd"}, IPs: []string{"192.0.2.7"}})
	if !slices.Equal(got.Groups, []string{"etcd"}) || !slices.Equal(names(got), []string{"etcd-bundle", "etcd-peer", "everyone"}) || !slices.Equal(got.NotGranted, []string{"edge-client"}) {
		t.Errorf("explained %+v, want db1 in etcd with its grants", got)
	}
	if g := got.Grants[1]; g.Via != "group etcd" || g.CommonName != "db1.example.org" ||
		!slices.Equal(g.DNSNames, []string{"db1.example.org", "db1.etcd.internal"}) ||
		!slices.Equal(g.IPAddresses, []string{"192.0.2.7"}) ||
		!slices.Equal(g.URIs, []string{"spiffe://example.org/etcd/db1"}) {
		t.Errorf("etcd-peer for db1: %+v", g)
	}
	got = explain(t, api.ExplainRequest{Node: "edge7.dc9.example.org"})
	if !slices.Equal(got.Groups, []string{}) || !slices.Equal(names(got), []string{"everyone"}) || !slices.Equal(got.NotGranted, []string{"edge-client", "etcd-bundle", "etcd-peer"}) {
		t.Errorf("explained %+v, want no group and everyone alone", got)
	}

	// One grant: given, or not given.
	got = explain(t, api.ExplainRequest{Node: etcd1, Grant: "etcd-peer"})
	if !slices.Equal(names(got), []string{"etcd-peer"}) || len(got.NotGranted) != 0 || !reflect.DeepEqual(got.Grants[0], own.Grants[1]) {
		t.Errorf("explained %+v, want etcd-peer alone", got)
	}
	got = explain(t, api.ExplainRequest{Node: etcd1, Grant: "edge-client"})
	if len(got.Grants) != 0 || !slices.Equal(got.NotGranted, []string{"edge-client"}) {
		t.Errorf("explained %+v, want edge-client not granted and nothing else", got)
	}

	h.refused(t, h.admin, http.MethodPost, api.PathPolicyExplain, mustJSON(t, api.ExplainRequest{Node: etcd1, Grant: "nope"}),
		refusal{http.StatusNotFound, api.CodeNotFound, keyserver.EventAdminDeny})
	h.refused(t, h.admin, http.MethodPost, api.PathPolicyExplain, mustJSON(t, api.ExplainRequest{Node: "Etcd_1"}),
		refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny})
	h.refused(t, h.admin, http.MethodPost, api.PathPolicyExplain, []byte(`{"node":"etcd1","role":"x"}`),
		refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny})
}

// TestCGCLifetimeFromPolicy: the policy's cgc.lifetime is what new CGCs
// live, from admission and from renewal, and a reload changes it.
func TestCGCLifetimeFromPolicy(t *testing.T) {
	t.Parallel()
	h := startPolicy(t, false, replace(t, testPolicy, "lifetime: 24h", "lifetime: 100h"))
	n := h.enroll(t, web1)
	leaf := parsePEMCerts(t, n.cgc.Certificate)[0]
	if got := leaf.NotAfter.Sub(h.clock.Now()); got != 100*time.Hour {
		t.Errorf("a new CGC lives %v, want the policy's 100h", got)
	}
	h.clock.Advance(time.Hour)
	h.reload(t, replace(t, testPolicy, "lifetime: 24h", "lifetime: 50h"))
	next := h.renew(t, n)
	leaf = parsePEMCerts(t, next.cgc.Certificate)[0]
	if got := leaf.NotAfter.Sub(h.clock.Now()); got != 50*time.Hour {
		t.Errorf("a renewed CGC lives %v, want the reloaded policy's 50h", got)
	}
}

// TestRenewAfterExpiry: within the policy's renew_after_expiry a node
// whose CGC has expired may renew it, and do nothing else with it.
func TestRenewAfterExpiry(t *testing.T) {
	t.Parallel()
	const life = 72 * time.Hour
	for _, tc := range []struct {
		name    string
		window  string
		expired time.Duration // how long ago the CGC expired
		renews  bool
	}{
		{"no window", "0s", time.Hour, false},
		{"within the window", "48h", time.Hour, true},
		{"near the end of the window", "48h", 47 * time.Hour, true},
		{"past the window", "48h", 49 * time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := startPolicy(t, false, replace(t, testPolicy, "  lifetime: 24h\n", "  lifetime: 72h\n  renew_after_expiry: "+tc.window+"\n"))
			n := h.enrollWith(t, api.TokenRequest{Node: etcd1})
			h.clock.Advance(life + tc.expired)
			expired := refusal{http.StatusUnauthorized, api.CodeCertExpired, keyserver.EventAuthDeny}
			c := h.nodeClient(t, n.key, n.cgc)
			h.refused(t, c, http.MethodGet, api.PathGrants, nil, expired)
			h.refused(t, c, http.MethodPost, api.PathSign+"etcd-peer", signBody(t, csrFor(t, newKey(t), nil)), expired)
			h.refused(t, c, http.MethodGet, api.PathNode, nil, expired)
			if !tc.renews {
				h.refused(t, c, http.MethodPost, api.PathRenew, renewBody(t, newKey(t)), expired)
				return
			}
			next := h.renew(t, n)
			resp, body := h.call(t, h.nodeClient(t, next.key, next.cgc), http.MethodGet, api.PathGrants, nil)
			if l := want[api.GrantList](t, resp, body, http.StatusOK); l.Node != etcd1 {
				t.Errorf("grants with the renewed CGC: %+v", l)
			}
			// The expired one is superseded now, not a second way in.
			h.refused(t, c, http.MethodPost, api.PathRenew, renewBody(t, newKey(t)), refusal{http.StatusForbidden, api.CodeCertSuperseded, keyserver.EventKeyTheft})
		})
	}
}
