package keyserver_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/dnstest"
	"github.com/keysystem/keysystem/keyserver/acme/pebbletest"
	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

// acmeHarness is a keyserver with ACME on, behind a real nginx front end
// that passes the challenge path to its http-01 listener, against a real
// Pebble that validates through that front end.
func acmeHarness(t *testing.T, certs string) (*harness, *pebbletest.Pebble) {
	t.Helper()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := dnstest.StartNginx(t, hl.Addr().String())
	_, port, _ := net.SplitHostPort(front)
	httpPort, _ := strconv.Atoi(port)
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort})
	pol := fmt.Sprintf("groups: {}\nacme:\n  accounts:\n    pebble: {directory: %q, ca_file: pebble-tls.pem}\n  certificates:\n%s", pb.Directory, certs)
	h := start(t, options{
		policy: pol,
		files:  map[string]string{"pebble-tls.pem": string(pb.RootsPEM)},
		acme:   &keyserver.ACMEConfig{KEK: bytes.Repeat([]byte{7}, 32), HTTP01Probe: front},
		http01: hl,
	})
	return h, pb
}

// acmeStatus is the admin's view of a label.
func (h *harness) acmeStatus(t *testing.T, label string) api.ACMEStatus {
	t.Helper()
	resp, body := h.call(t, h.admin, http.MethodGet, api.PathACME+"/"+label, nil)
	return want[api.ACMEStatus](t, resp, body, http.StatusOK)
}

// waitNext waits (in real time: the CA works in it) for the label's next
// version, failing at once when the order failed.
func (h *harness) waitNext(t *testing.T, label string) api.ACMEStatus {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := h.acmeStatus(t, label)
		switch {
		case s.Next != nil:
			return s
		case s.LastError != "":
			t.Fatalf("the order failed: %s", s.LastError)
		case time.Now().After(deadline):
			t.Fatalf("no certificate after 2 minutes: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type acmeFile struct {
	version int
	etag    string
	body    []byte
}

func (h *harness) acmeGet(t *testing.T, c *http.Client, path string, status int) acmeFile {
	t.Helper()
	resp, body := h.call(t, c, http.MethodGet, api.PathCerts+path, nil)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %s %s, want %d", path, resp.Status, body, status)
	}
	v, _ := strconv.Atoi(resp.Header.Get(api.HeaderACMEVersion))
	return acmeFile{version: v, etag: resp.Header.Get("ETag"), body: body}
}

// keyMatches reports whether the PEM key is the first certificate's.
func keyMatches(t *testing.T, keyPEM, certPEM []byte) bool {
	t.Helper()
	key, err := pemutil.ParseKey(keyPEM)
	if err != nil {
		t.Fatalf("key: %v", err)
	}
	chain, err := pemutil.ParseCertificateBundle(certPEM)
	if err != nil {
		t.Fatalf("certificate: %v", err)
	}
	return key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey)
}

// TestACMECertificates: the keyserver obtains a label's certificates in
// both key types, validated through nginx, serves a marked placeholder
// until then, holds the new version back for the staging time, and hands
// the files to the node the label names only: every file form, one tag
// for a certificate and its key, 304 when unchanged, 403 and an audit
// event for another node; administrators see which version each node
// holds and can force a renewal.
func TestACMECertificates(t *testing.T) {
	h, pb := acmeHarness(t, "    web:\n      sni: [www.example.test, example.test]\n      to: {nodes: [web1]}\n")
	web1, db1 := h.enroll(t, "web1"), h.enroll(t, "db1")
	web, db := h.nodeClient(t, web1.key, web1.cgc), h.nodeClient(t, db1.key, db1.cgc)

	// Before the CA's certificate: the placeholder, marked as such.
	ph := h.acmeGet(t, web, "web/public.pem", http.StatusOK)
	leaf, err := pemutil.ParseCertificate(ph.body)
	if err != nil {
		t.Fatal(err)
	}
	if ph.version != 0 || !strings.Contains(leaf.Subject.String(), acme.PlaceholderOrganization) {
		t.Errorf("before issue: version %d, subject %s; want the placeholder", ph.version, leaf.Subject)
	}

	s := h.waitNext(t, "web")
	if s.Current != nil || len(s.Next.Serials) != 2 || s.OrdersToday != 2 {
		t.Fatalf("after the order: %+v; want version 1 in two key types, held back", s)
	}
	if f := h.acmeGet(t, web, "web/public.pem", http.StatusOK); f.version != 0 {
		t.Errorf("during the staging time: version %d served, want the placeholder", f.version)
	}
	if got := s.Next.ReadyAt.Sub(s.Next.NotBefore); got != keyserver.DefaultACMEStaging {
		t.Errorf("held back for %v, want the default %v", got, keyserver.DefaultACMEStaging)
	}
	h.clock.Advance(s.Next.ReadyAt.Sub(h.clock.Now()))

	roots := pb.IssuerRoots(t)
	pub := h.acmeGet(t, web, "web/public.pem", http.StatusOK)
	priv := h.acmeGet(t, web, "web/private.pem", http.StatusOK)
	if pub.version != 1 || priv.version != 1 || pub.etag == "" || pub.etag != priv.etag || !keyMatches(t, priv.body, pub.body) {
		t.Fatalf("public.pem v%d %s, private.pem v%d %s; want version 1, one tag, matching", pub.version, pub.etag, priv.version, priv.etag)
	}
	chain, _ := pemutil.ParseCertificateBundle(pub.body)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, name := range []string{"www.example.test", "example.test"} {
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// One key type's files.
	rsaCert := h.acmeGet(t, web, "web/rsa/cert.pem", http.StatusOK)
	rsaChain := h.acmeGet(t, web, "web/rsa/chain.pem", http.StatusOK)
	rsaFull := h.acmeGet(t, web, "web/rsa/fullchain.pem", http.StatusOK)
	rsaKey := h.acmeGet(t, web, "web/rsa/key.pem", http.StatusOK)
	if !bytes.Equal(append(bytes.Clone(rsaCert.body), rsaChain.body...), rsaFull.body) {
		t.Error("rsa: cert.pem + chain.pem is not fullchain.pem")
	}
	if !keyMatches(t, rsaKey.body, rsaCert.body) || rsaKey.etag == pub.etag {
		t.Error("rsa: key.pem does not match cert.pem, or shares the ecdsa tag")
	}
	if c, _ := pemutil.ParseCertificate(rsaCert.body); c.PublicKeyAlgorithm != x509.RSA {
		t.Errorf("rsa/cert.pem holds a %v key", c.PublicKeyAlgorithm)
	}
	if f := h.acmeGet(t, web, "web/ecdsa/fullchain.pem", http.StatusOK); !bytes.Equal(f.body, pub.body) {
		t.Error("ecdsa/fullchain.pem is not public.pem")
	}
	h.acmeGet(t, web, "web/dsa/cert.pem", http.StatusNotFound)
	h.acmeGet(t, web, "web/ecdsa/nope.pem", http.StatusNotFound)
	h.acmeGet(t, web, "web/nope.pem", http.StatusNotFound)

	// Unchanged: 304, no body.
	req, _ := http.NewRequest(http.MethodGet, h.url(api.PathCerts+"web/public.pem"), nil)
	req.Header.Set("If-None-Match", pub.etag)
	resp, err := web.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match with the current tag: %s, want 304", resp.Status)
	}

	// Another node, and a label that does not exist, get one answer.
	for _, path := range []string{"web/private.pem", "web/rsa/key.pem", "nosuch/public.pem"} {
		mark := h.mark(t)
		resp, body := h.call(t, db, http.MethodGet, api.PathCerts+path, nil)
		wantError(t, resp, body, http.StatusForbidden, api.CodeGrantDenied)
		if ev := h.event(t, mark, keyserver.EventACMEDeny); ev.Node != "db1" {
			t.Errorf("%s: audited %+v", path, ev)
		}
	}
	resp, body := h.call(t, h.anon, http.MethodGet, api.PathCerts+"web/private.pem", nil)
	wantError(t, resp, body, http.StatusUnauthorized, api.CodeCertRequired)

	// The administrator sees web1 on version 1, fetched once as far as
	// the audit log goes.
	s = h.acmeStatus(t, "web")
	if s.Current == nil || s.Current.Number != 1 || len(s.Nodes) != 2 || s.Placeholder {
		t.Fatalf("status: %+v; want version 1 served, web1's two key types recorded", s)
	}
	for _, n := range s.Nodes {
		if n.Node != "web1" || n.Version != 1 || n.Stale {
			t.Errorf("status node %+v, want web1 on version 1", n)
		}
	}
	keys := 0
	for _, ev := range h.audit.events(t) {
		if ev.Event == keyserver.EventACMEKey {
			keys++
		}
	}
	if keys != 2 {
		t.Errorf("%d %s events, want 2 (one per key type; fetching again is not new)", keys, keyserver.EventACMEKey)
	}

	resp, body = h.call(t, h.admin, http.MethodGet, keyserver.PathMetrics, nil)
	for _, line := range []string{`keysystem_acme_version{label="web"} 1`, `keysystem_acme_placeholder{label="web"} 0`,
		`keysystem_acme_orders_24h{label="web"} 2`, `keysystem_acme_failures{label="web"} 0`, `# TYPE keysystem_acme_not_after_seconds gauge`} {
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), line+"\n") {
			t.Errorf("metrics (%s) lack %q:\n%s", resp.Status, line, body)
		}
	}
	resp, body = h.call(t, web, http.MethodGet, keyserver.PathMetrics, nil)
	wantError(t, resp, body, http.StatusForbidden, api.CodeCertInvalid)

	resp, body = h.call(t, h.admin, http.MethodPost, api.PathACME+"/web"+api.PathACMERenew, nil)
	if s := want[api.ACMEStatus](t, resp, body, http.StatusAccepted); !s.Forced {
		t.Errorf("renew: %+v, want forced", s)
	}
	resp, body = h.call(t, h.admin, http.MethodPost, api.PathACME+"/nosuch"+api.PathACMERenew, nil)
	wantError(t, resp, body, http.StatusNotFound, api.CodeNotFound)
	resp, body = h.call(t, web, http.MethodGet, api.PathACME, nil)
	wantError(t, resp, body, http.StatusForbidden, api.CodeCertInvalid)
	// The forced order runs as the keyserver shuts down: it must stop.
}

// TestACMEPolicyNeedsWhatItUses: a keyserver refuses, at the label's or
// account's line, ACME labels it could not obtain as configured.
func TestACMEPolicyNeedsWhatItUses(t *testing.T) {
	auths, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		acme  *keyserver.ACMEConfig
		certs string
		dns   string
		want  string
	}{
		"no acme section":            {nil, "    web: {sni: [www.example.test], to: {all: true}}\n", "", "policy.yaml:8: the policy has acme certificates, but this keyserver has no acme section"},
		"http-01 without a listener": {&keyserver.ACMEConfig{}, "    web: {sni: [www.example.test], to: {all: true}}\n", "", "policy.yaml:8: acme certificate \"web\": http-01 needs acme.http01_listen"},
		"dns-01 without a zone":      {&keyserver.ACMEConfig{}, "    web: {sni: [\"*.example.test\"], challenge: dns-01, to: {all: true}}\n", "", "policy.yaml:8: acme certificate \"web\": dns-01 without a dns provider on account \"ca\" needs the keyserver's own DNS server: acme.dns"},
		"an unlinked provider":       {&keyserver.ACMEConfig{}, "    web: {sni: [\"*.example.test\"], challenge: dns-01, to: {all: true}}\n", ", dns: {provider: nosuch}", "policy.yaml:4: acme account \"ca\": dns provider \"nosuch\" is not linked into this keyserver"},
	} {
		t.Run(name, func(t *testing.T) {
			if tc.acme != nil {
				tc.acme.KEK = bytes.Repeat([]byte{1}, 32)
			}
			dir := t.TempDir()
			pol := writeFile(t, dir, "policy.yaml", "groups: {}\nacme:\n  accounts:\n    ca: {directory: \"https://127.0.0.1:1/dir\""+tc.dns+"}\n  certificates:\n\n\n"+tc.certs)
			_, err := keyserver.New(keyserver.Config{Names: []string{"127.0.0.1"}, KeyGranting: auths.KeyGranting, Server: auths.Server, Admin: auths.Admin,
				Store: store.NewMemory(), PolicyFile: pol, ACME: tc.acme})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestACMEDNSServer: the keyserver's own DNS server answers the delegated
// zone's dns-01 values from the store, over UDP and TCP, and refuses
// names outside it.
func TestACMEDNSServer(t *testing.T) {
	h := start(t, options{acme: &keyserver.ACMEConfig{KEK: bytes.Repeat([]byte{1}, 32), DNSZone: "acme.example.test", DNSNameservers: []string{"ks1.example.test"}},
		dns: true})
	name := zone.Name("acme.example.test", "*.www.example.test")
	for _, v := range []string{strings.Repeat("a", 43), strings.Repeat("b", 43)} {
		if err := zone.Add(t.Context(), h.store, name, v, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	for _, netw := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: netw, Timeout: 5 * time.Second}
		m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		r, _, err := c.Exchange(m, h.dnsAddr)
		if err != nil || r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 2 {
			t.Errorf("%s: TXT %s: %v, %v", netw, name, r, err)
		}
		m = new(dns.Msg).SetQuestion("www.example.test.", dns.TypeTXT)
		if r, _, err := c.Exchange(m, h.dnsAddr); err != nil || r.Rcode != dns.RcodeRefused {
			t.Errorf("%s: a name outside the zone: %v, %v; want REFUSED", netw, r, err)
		}
	}
}
