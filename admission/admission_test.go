package admission_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/tokens"
)

// t0 is where every test clock starts; whole seconds, as X.509 times are.
var t0 = time.Date(2031, time.March, 4, 5, 6, 7, 0, time.UTC)

const (
	web1    = "web-1.example"
	web2    = "web-2.example"
	cgcLife = 48 * time.Hour // not the default, so the test sees it is used
	grace   = 10 * time.Minute
)

// env is a Service over a memory store, with an injected clock shared by
// the service and its key-granting authority.
type env struct {
	now time.Time // the clock; move it with advance
	st  *store.Memory
	ka  *authority.Authority
	svc *admission.Service

	// Every CGC admit and renew returned, and its key, by serial.
	certs map[string]*x509.Certificate
	keys  map[string]crypto.Signer
}

// newEnv makes an env; opts may change the service's configuration.
func newEnv(t *testing.T, opts ...func(*admission.Config)) *env {
	t.Helper()
	e := &env{now: t0, st: store.NewMemory(), certs: map[string]*x509.Certificate{}, keys: map[string]crypto.Signer{}}
	ka, err := authority.Generate(authority.Config{Name: authority.KeyGranting, Now: e.clock})
	if err != nil {
		t.Fatalf("authority.Generate: %v", err)
	}
	e.ka = ka
	cfg := admission.Config{
		Store:       e.st,
		KeyGranting: ka,
		CGCLifetime: cgcLife,
		Grace:       grace,
		Now:         e.clock,
		Rand:        mrand.NewChaCha8([32]byte{42}),
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.svc, err = admission.New(cfg)
	if err != nil {
		t.Fatalf("admission.New: %v", err)
	}
	return e
}

func (e *env) clock() time.Time        { return e.now }
func (e *env) advance(d time.Duration) { e.now = e.now.Add(d) }

// issue issues a token; spec.Node defaults to web1.
func (e *env) issue(t *testing.T, spec admission.TokenSpec) tokens.Token {
	t.Helper()
	if spec.Node == "" {
		spec.Node = web1
	}
	tok, _, err := e.svc.IssueToken(t.Context(), spec)
	if err != nil {
		t.Fatalf("IssueToken(%+v): %v", spec, err)
	}
	return tok
}

func (e *env) admit(t *testing.T, tok tokens.Token, key crypto.Signer) *admission.Issued {
	t.Helper()
	iss, err := e.svc.Admit(t.Context(), admission.AdmitRequest{Token: tok.String(), CSR: csrPEM(t, key)})
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	e.certs[admission.SerialHex(iss.Cert)], e.keys[admission.SerialHex(iss.Cert)] = iss.Cert, key
	return iss
}

func (e *env) auth(t *testing.T, cert *x509.Certificate) *admission.Caller {
	t.Helper()
	c, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{cert})
	if err != nil {
		t.Fatalf("Authenticate(%s): %v", admission.SerialHex(cert), err)
	}
	return c
}

func (e *env) renew(t *testing.T, caller *admission.Caller, key crypto.Signer) *admission.Issued {
	t.Helper()
	iss, err := e.svc.Renew(t.Context(), caller, csrPEM(t, key))
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	e.certs[admission.SerialHex(iss.Cert)], e.keys[admission.SerialHex(iss.Cert)] = iss.Cert, key
	return iss
}

// node returns the inventory's record of name.
func (e *env) node(t *testing.T, name string) admission.Node {
	t.Helper()
	nodes, err := e.svc.ListNodes(t.Context())
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	for _, n := range nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("node %s not in the inventory %+v", name, nodes)
	return admission.Node{}
}

// record returns the stored (unredacted) record of token id.
func (e *env) record(t *testing.T, id string) tokens.Record {
	t.Helper()
	raw, err := e.st.Get(t.Context(), "tokens/"+id)
	if err != nil {
		t.Fatalf("token %s: %v", id, err)
	}
	var r tokens.Record
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("token %s: %v", id, err)
	}
	return r
}

// snapshot returns everything in the store.
func snapshot(t *testing.T, st *store.Memory) []store.KV {
	t.Helper()
	kvs, err := st.List(t.Context(), "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return kvs
}

// unchanged runs f and fails the test if f changed anything in the store.
func unchanged(t *testing.T, st *store.Memory, f func()) {
	t.Helper()
	before := snapshot(t, st)
	f()
	if after := snapshot(t, st); !reflect.DeepEqual(before, after) {
		t.Errorf("store changed:\nbefore: %s\nafter:  %s", showKVs(before), showKVs(after))
	}
}

// refused runs f, which must fail with an error matching every one of want
// and leave the store as it was; it returns f's error.
func refused(t *testing.T, st *store.Memory, f func() error, want ...error) error {
	t.Helper()
	var err error
	unchanged(t, st, func() { err = f() })
	if err == nil {
		t.Fatalf("succeeded, want %v", want)
	}
	for _, w := range want {
		if !errors.Is(err, w) {
			t.Errorf("error %q is not %q", err, w)
		}
	}
	return err
}

func showKVs(kvs []store.KV) string {
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "\n  %s = %s", kv.Key, kv.Value)
	}
	return b.String()
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	return ecKey(t, elliptic.P256())
}

func ecKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(crand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// evil is what test CSRs ask for by default: names a CGC must never carry.
func evil() *x509.CertificateRequest {
	return &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "evil", Organization: []string{"system:masters"}},
		DNSNames:       []string{"evil.example", web2},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:           []*url.URL{admission.NodeURI(web2)},
		EmailAddresses: []string{"root@evil.example"},
	}
}

func csrDER(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(crand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func toPEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// csrPEM is a PEM CSR for key asking for the evil names.
func csrPEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	return toPEM("CERTIFICATE REQUEST", csrDER(t, key, evil()))
}

// badSignature returns a DER CSR for key that parses but whose signature
// does not verify.
func badSignature(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der := csrDER(t, key, evil())
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndex(der, csr.Signature) + len(csr.Signature) - 1
	der[i] ^= 1
	if _, err := x509.ParseCertificateRequest(der); err != nil {
		t.Fatalf("corrupted CSR no longer parses: %v", err)
	}
	return der
}

// flip changes the character at i of a token's text to another one of the
// token alphabet.
func flip(s string, i int) string {
	c := byte('0')
	if s[i] == c {
		c = '1'
	}
	return s[:i] + string(c) + s[i+1:]
}

func samePub(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func clientAuth() []x509.ExtKeyUsage { return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }

// sign has a authority sign a certificate naming cn and uris directly,
// bypassing admission.
func sign(t *testing.T, a *authority.Authority, cn string, uris []*url.URL, eku x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	c, err := a.Sign(authority.Request{
		PublicKey:   newKey(t).Public(),
		CommonName:  cn,
		URIs:        uris,
		ExtKeyUsage: []x509.ExtKeyUsage{eku},
		Lifetime:    cgcLife,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkCGC checks that cert, just issued, is a CGC for node and key and
// nothing else: every name comes from the token, none from the CSR.
func checkCGC(t *testing.T, e *env, cert *x509.Certificate, node string, key crypto.PublicKey) {
	t.Helper()
	if cert.Subject.CommonName != node || len(cert.Subject.Organization) != 0 {
		t.Errorf("subject %q, want CN=%s", cert.Subject, node)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "keysystem://node/"+node {
		t.Errorf("URIs %v, want [keysystem://node/%s]", cert.URIs, node)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Errorf("names from the CSR leaked: DNS %v, IP %v, email %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
	}
	if !slices.Equal(cert.ExtKeyUsage, clientAuth()) || len(cert.UnknownExtKeyUsage) != 0 {
		t.Errorf("ExtKeyUsage %v %v, want client auth only", cert.ExtKeyUsage, cert.UnknownExtKeyUsage)
	}
	if cert.IsCA {
		t.Error("CGC is a CA")
	}
	if want := e.now.Add(-authority.Backdate); !cert.NotBefore.Equal(want) {
		t.Errorf("NotBefore %v, want %v", cert.NotBefore, want)
	}
	if want := e.now.Add(cgcLife); !cert.NotAfter.Equal(want) {
		t.Errorf("NotAfter %v, want %v (the configured lifetime)", cert.NotAfter, want)
	}
	if !samePub(cert.PublicKey, key) {
		t.Error("certificate is not for the CSR's key")
	}
	if err := e.ka.Verify(cert, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("certificate does not verify against the key-granting authority: %v", err)
	}
	if name, err := admission.NodeName(cert); name != node || err != nil {
		t.Errorf("NodeName = %q, %v, want %q", name, err, node)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name string
		cfg  admission.Config
		ok   bool
	}{
		{"defaults", admission.Config{Store: e.st, KeyGranting: e.ka}, true},
		{"one-minute CGC", admission.Config{Store: e.st, KeyGranting: e.ka, CGCLifetime: time.Minute}, true},
		{"no store", admission.Config{KeyGranting: e.ka}, false},
		{"no authority", admission.Config{Store: e.st}, false},
		{"CGC under a minute", admission.Config{Store: e.st, KeyGranting: e.ka, CGCLifetime: 59 * time.Second}, false},
		{"CGC at the maximum", admission.Config{Store: e.st, KeyGranting: e.ka, CGCLifetime: admission.MaxCGCLifetime}, true},
		{"CGC over the maximum", admission.Config{Store: e.st, KeyGranting: e.ka, CGCLifetime: admission.MaxCGCLifetime + time.Second}, false},
		{"negative grace", admission.Config{Store: e.st, KeyGranting: e.ka, Grace: -time.Second}, false},
		{"token TTL over max", admission.Config{Store: e.st, KeyGranting: e.ka, TokenTTL: 2 * time.Hour, MaxTokenTTL: time.Hour}, false},
		{"negative token TTL", admission.Config{Store: e.st, KeyGranting: e.ka, TokenTTL: -time.Hour}, false},
		{"negative token TTLs", admission.Config{Store: e.st, KeyGranting: e.ka, TokenTTL: -2 * time.Hour, MaxTokenTTL: -time.Hour}, false},
		{"default token TTL over max", admission.Config{Store: e.st, KeyGranting: e.ka, MaxTokenTTL: 30 * time.Minute}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := admission.New(tc.cfg); (err == nil) != tc.ok {
				t.Errorf("New: %v, want ok = %v", err, tc.ok)
			}
		})
	}
}

func TestIssueTokenRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec admission.TokenSpec
	}{
		{"empty name", admission.TokenSpec{}},
		{"upper case", admission.TokenSpec{Node: "Web-1.example"}},
		{"underscore", admission.TokenSpec{Node: "web_1"}},
		{"slash", admission.TokenSpec{Node: "web/1"}},
		{"leading hyphen", admission.TokenSpec{Node: "-web"}},
		{"empty label", admission.TokenSpec{Node: "web..example"}},
		{"label of 64", admission.TokenSpec{Node: strings.Repeat("a", 64)}},
		{"name of 254", admission.TokenSpec{Node: strings.Repeat("abc.", 63) + "ab"}},
		{"negative TTL", admission.TokenSpec{Node: web1, TTL: -time.Second}},
		{"TTL over max", admission.TokenSpec{Node: web1, TTL: admission.DefaultMaxTokenTTL + time.Nanosecond}},
		{"bad IP", admission.TokenSpec{Node: web1, IPs: []string{"192.0.2.256"}}},
		{"host name for IP", admission.TokenSpec{Node: web1, IPs: []string{"192.0.2.7", "host.example"}}},
		{"CIDR for IP", admission.TokenSpec{Node: web1, IPs: []string{"192.0.2.0/24"}}},
		{"empty IP", admission.TokenSpec{Node: web1, IPs: []string{""}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			refused(t, e.st, func() error {
				_, _, err := e.svc.IssueToken(t.Context(), tc.spec)
				return err
			}, admission.ErrInvalid)
		})
	}
}

func TestIssueToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		spec    admission.TokenSpec
		wantTTL time.Duration
		wantIPs []string
	}{
		{"default TTL", admission.TokenSpec{Node: web1}, admission.DefaultTokenTTL, nil},
		{"given TTL", admission.TokenSpec{Node: web1, TTL: 5 * time.Minute}, 5 * time.Minute, nil},
		{"max TTL", admission.TokenSpec{Node: web1, TTL: admission.DefaultMaxTokenTTL}, admission.DefaultMaxTokenTTL, nil},
		{"long name", admission.TokenSpec{Node: strings.Repeat("abc.", 63) + "a"}, admission.DefaultTokenTTL, nil},
		{
			"IPs canonicalised",
			admission.TokenSpec{Node: web1, Creator: "admin:alice", IPs: []string{" 192.0.2.7 ", "::ffff:198.51.100.1", "2001:DB8:0:0::1"}},
			admission.DefaultTokenTTL,
			[]string{"192.0.2.7", "198.51.100.1", "2001:db8::1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tok, rec, err := e.svc.IssueToken(t.Context(), tc.spec)
			if err != nil {
				t.Fatalf("IssueToken: %v", err)
			}
			if _, err := tokens.Parse(tok.String()); err != nil {
				t.Errorf("issued token does not parse: %v", err)
			}
			stored := e.record(t, tok.ID)
			if !bytes.Equal(stored.Hash, tok.Hash()) {
				t.Errorf("stored hash %x, want %x", stored.Hash, tok.Hash())
			}
			if rec.Hash != nil || rec.KeyHash != nil || rec.Cert != nil {
				t.Errorf("returned record is not redacted: %+v", rec)
			}
			for _, r := range []tokens.Record{rec, stored} {
				if r.ID != tok.ID || r.Node != tc.spec.Node || r.Creator != tc.spec.Creator || r.State != tokens.StatePending {
					t.Errorf("record %+v does not match token %s and spec %+v", r, tok.ID, tc.spec)
				}
				if !r.Created.Equal(t0) || !r.Expires.Equal(t0.Add(tc.wantTTL)) {
					t.Errorf("record valid %v to %v, want %v to %v", r.Created, r.Expires, t0, t0.Add(tc.wantTTL))
				}
				if !slices.Equal(r.IPs, tc.wantIPs) {
					t.Errorf("record IPs %q, want %q", r.IPs, tc.wantIPs)
				}
			}
		})
	}
}

// TestIssueTokenStoresNoSecret checks every value in the store, with tokens
// in every state, for any token's secret or full text.
func TestIssueTokenStoresNoSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	redeemed := e.issue(t, admission.TokenSpec{})
	revoked := e.issue(t, admission.TokenSpec{Node: web2})
	pending := e.issue(t, admission.TokenSpec{Node: "db-1.example", IPs: []string{"192.0.2.7"}, Creator: "admin:alice"})
	e.admit(t, redeemed, newKey(t))
	if _, err := e.svc.RevokeToken(t.Context(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	kvs := snapshot(t, e.st)
	if len(kvs) != 7 {
		t.Fatalf("store holds %d keys, want 3 tokens, their 3 prune entries and 1 node:%s", len(kvs), showKVs(kvs))
	}
	for _, tok := range []tokens.Token{redeemed, revoked, pending} {
		for _, kv := range kvs {
			for _, secret := range []string{tok.Secret, tok.String()} {
				if strings.Contains(strings.ToLower(kv.Key+string(kv.Value)), secret) {
					t.Errorf("%s holds the secret of token %s: %s", kv.Key, tok.ID, kv.Value)
				}
			}
		}
	}
	recs, err := e.svc.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Hash != nil || r.KeyHash != nil || r.Cert != nil {
			t.Errorf("ListTokens returns hashes or certificate: %+v", r)
		}
	}
}

func TestAdmit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := e.issue(t, admission.TokenSpec{IPs: []string{"192.0.2.7"}})
	e.advance(time.Minute)
	key := newKey(t)
	iss, err := e.svc.Admit(t.Context(), admission.AdmitRequest{
		Token:  tok.String(),
		CSR:    csrPEM(t, key), // asks for CN "evil", other DNS names and URIs
		Source: netip.MustParseAddr("192.0.2.7"),
	})
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if iss.Node != web1 || iss.Replay || !reflect.DeepEqual(iss.Chain, e.ka.Chain()) {
		t.Errorf("Issued = node %q, replay %v, chain %v", iss.Node, iss.Replay, iss.Chain)
	}
	checkCGC(t, e, iss.Cert, web1, key.Public())

	serial := admission.SerialHex(iss.Cert)
	want := admission.Node{
		Name:       web1,
		IPs:        []string{"192.0.2.7"},
		TokenID:    tok.ID,
		AdmittedAt: e.now,
		Serial:     serial,
		NotAfter:   iss.Cert.NotAfter,
		Key:        keyHash(t, key),
		Cert:       sha256Hex(iss.Cert.Raw),
	}
	if got := e.node(t, web1); !reflect.DeepEqual(got, want) {
		t.Errorf("node record\n got %+v\nwant %+v", got, want)
	}
	rec := e.record(t, tok.ID)
	spki := sha256.Sum256(iss.Cert.RawSubjectPublicKeyInfo)
	if rec.State != tokens.StateRedeemed || rec.Serial != serial || !rec.RedeemedAt.Equal(e.now) ||
		!bytes.Equal(rec.KeyHash, spki[:]) || !bytes.Equal(rec.Cert, iss.Cert.Raw) {
		t.Errorf("token record after Admit: %+v", rec)
	}
	if c := e.auth(t, iss.Cert); c.Serial != serial || c.Node.Name != web1 {
		t.Errorf("Authenticate = %+v", c)
	}
}

func TestAdmitAccepts(t *testing.T) {
	t.Parallel()
	bound := func(ips ...string) admission.TokenSpec { return admission.TokenSpec{IPs: ips} }
	tests := []struct {
		name string
		spec admission.TokenSpec
		wait time.Duration
		edit func(t *testing.T, r *admission.AdmitRequest, key crypto.Signer)
	}{
		{"node stated", admission.TokenSpec{}, 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) { r.Node = web1 }},
		{"token typed loosely", admission.TokenSpec{}, 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Token = " " + strings.ToUpper(r.Token) + "\n"
		}},
		{"DER CSR", admission.TokenSpec{}, 0, func(t *testing.T, r *admission.AdmitRequest, key crypto.Signer) {
			r.CSR = csrDER(t, key, evil())
		}},
		{"last second", admission.TokenSpec{}, admission.DefaultTokenTTL - time.Second, nil},
		{"bound to IPv4", bound("192.0.2.7"), 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Source = netip.MustParseAddr("192.0.2.7")
		}},
		{"IPv4-mapped source", bound("192.0.2.7"), 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Source = netip.MustParseAddr("::ffff:192.0.2.7")
		}},
		{"IPv4-mapped binding", bound("::ffff:192.0.2.7"), 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Source = netip.MustParseAddr("192.0.2.7")
		}},
		{"IPv6 spelt differently", bound("2001:DB8:0::1"), 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Source = netip.MustParseAddr("2001:db8::1")
		}},
		{"second of two IPs", bound("192.0.2.7", "2001:db8::1"), 0, func(t *testing.T, r *admission.AdmitRequest, _ crypto.Signer) {
			r.Source = netip.MustParseAddr("2001:db8::1")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tok := e.issue(t, tc.spec)
			key := newKey(t)
			req := admission.AdmitRequest{Token: tok.String(), CSR: csrPEM(t, key)}
			if tc.edit != nil {
				tc.edit(t, &req, key)
			}
			e.advance(tc.wait)
			iss, err := e.svc.Admit(t.Context(), req)
			if err != nil {
				t.Fatalf("Admit: %v", err)
			}
			checkCGC(t, e, iss.Cert, web1, key.Public())
			if n := e.node(t, web1); n.Serial != admission.SerialHex(iss.Cert) {
				t.Errorf("node serial %s, want %s", n.Serial, admission.SerialHex(iss.Cert))
			}
		})
	}
}

// TestAdmitRefusals checks that every refused Admit leaves the store as it
// was, so the token stays as usable (or not) as it was before.
func TestAdmitRefusals(t *testing.T) {
	t.Parallel()
	type prep func(t *testing.T, e *env, tok tokens.Token, r *admission.AdmitRequest)
	withToken := func(s string) prep {
		return func(_ *testing.T, _ *env, _ tokens.Token, r *admission.AdmitRequest) { r.Token = s }
	}
	withCSR := func(csr func(t *testing.T) []byte) prep {
		return func(t *testing.T, _ *env, _ tokens.Token, r *admission.AdmitRequest) { r.CSR = csr(t) }
	}
	boundFrom := func(src string) prep {
		return func(t *testing.T, e *env, _ tokens.Token, r *admission.AdmitRequest) {
			r.Token = e.issue(t, admission.TokenSpec{IPs: []string{"192.0.2.7", "2001:db8::1"}}).String()
			if src != "" {
				r.Source = netip.MustParseAddr(src)
			}
		}
	}
	wait := func(d time.Duration) prep {
		return func(_ *testing.T, e *env, _ tokens.Token, _ *admission.AdmitRequest) { e.advance(d) }
	}
	other, err := tokens.New(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		prep prep
		want []error
	}{
		{"empty token", withToken(""), []error{tokens.ErrMalformed}},
		{"not a token", withToken("hello"), []error{tokens.ErrMalformed}},
		{"truncated token", func(_ *testing.T, _ *env, tok tokens.Token, r *admission.AdmitRequest) {
			r.Token = tok.String()[:40]
		}, []error{tokens.ErrMalformed}},
		{"mistyped token", func(_ *testing.T, _ *env, tok tokens.Token, r *admission.AdmitRequest) {
			r.Token = flip(tok.String(), 30)
		}, []error{tokens.ErrChecksum}},
		{"never issued", withToken(other.String()), []error{tokens.ErrUnknown}},
		{"wrong secret", func(_ *testing.T, _ *env, tok tokens.Token, r *admission.AdmitRequest) {
			r.Token = tokens.Token{ID: tok.ID, Secret: other.Secret}.String()
		}, []error{tokens.ErrUnknown}},
		{"expires now", wait(admission.DefaultTokenTTL), []error{tokens.ErrExpired}},
		{"expired long ago", wait(30 * 24 * time.Hour), []error{tokens.ErrExpired}},
		{"used with another key", func(t *testing.T, e *env, tok tokens.Token, _ *admission.AdmitRequest) {
			e.admit(t, tok, newKey(t))
		}, []error{tokens.ErrUsed, tokens.ErrKeyMismatch}},
		{"revoked", func(t *testing.T, e *env, tok tokens.Token, _ *admission.AdmitRequest) {
			if _, err := e.svc.RevokeToken(t.Context(), tok.ID); err != nil {
				t.Fatal(err)
			}
		}, []error{tokens.ErrRevoked}},
		{"wrong node", func(_ *testing.T, _ *env, _ tokens.Token, r *admission.AdmitRequest) {
			r.Node = web2
		}, []error{tokens.ErrWrongNode}},
		{"wrong address", boundFrom("192.0.2.8"), []error{tokens.ErrWrongAddress}},
		{"wrong IPv6 address", boundFrom("2001:db8::2"), []error{tokens.ErrWrongAddress}},
		{"no address", boundFrom(""), []error{tokens.ErrWrongAddress}},
		{"CSR bad signature", withCSR(func(t *testing.T) []byte { return badSignature(t, newKey(t)) }), []error{admission.ErrCSRInvalid}},
		{"CSR garbage", withCSR(func(*testing.T) []byte { return []byte("garbage") }), []error{admission.ErrCSRInvalid}},
		{"CSR empty", withCSR(func(*testing.T) []byte { return nil }), []error{admission.ErrCSRInvalid}},
		{"certificate for CSR", withCSR(func(t *testing.T) []byte {
			return toPEM("CERTIFICATE", csrDER(t, newKey(t), evil()))
		}), []error{admission.ErrCSRInvalid}},
		{"RSA 1024", withCSR(func(t *testing.T) []byte { return csrPEM(t, rsaKey(t, 1024)) }), []error{admission.ErrKeyRejected}},
		{"ECDSA P-224", withCSR(func(t *testing.T) []byte { return csrPEM(t, ecKey(t, elliptic.P224())) }), []error{admission.ErrKeyRejected}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tok := e.issue(t, admission.TokenSpec{})
			req := admission.AdmitRequest{Token: tok.String(), CSR: csrPEM(t, newKey(t))}
			tc.prep(t, e, tok, &req)
			refused(t, e.st, func() error {
				iss, err := e.svc.Admit(t.Context(), req)
				if iss != nil {
					t.Errorf("Admit returned a certificate with error %v", err)
				}
				return err
			}, tc.want...)
		})
	}
}

func TestAdmitReplay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		wait time.Duration
		req  func(t *testing.T, tok tokens.Token, key crypto.Signer, csr []byte) admission.AdmitRequest
		want []error // nil: a replay
		not  error   // an error the refusal must not match
	}{
		{"same CSR", 0, func(_ *testing.T, tok tokens.Token, _ crypto.Signer, csr []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csr}
		}, nil, nil},
		{"new CSR, same key", time.Minute, func(t *testing.T, tok tokens.Token, key crypto.Signer, _ []byte) admission.AdmitRequest {
			csr := csrDER(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "retry"}})
			return admission.AdmitRequest{Token: tok.String(), CSR: csr, Node: web1}
		}, nil, nil},
		{"last second of grace", grace - time.Second, func(t *testing.T, tok tokens.Token, key crypto.Signer, _ []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csrPEM(t, key)}
		}, nil, nil},
		{"grace over", grace, func(_ *testing.T, tok tokens.Token, _ crypto.Signer, csr []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csr}
		}, []error{tokens.ErrUsed}, tokens.ErrKeyMismatch},
		{"grace long over", 2 * admission.DefaultTokenTTL, func(_ *testing.T, tok tokens.Token, _ crypto.Signer, csr []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csr}
		}, []error{tokens.ErrUsed}, tokens.ErrKeyMismatch},
		{"other key in grace", time.Minute, func(t *testing.T, tok tokens.Token, _ crypto.Signer, _ []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csrPEM(t, newKey(t))}
		}, []error{tokens.ErrUsed, tokens.ErrKeyMismatch}, nil},
		{"same key, other node", time.Minute, func(_ *testing.T, tok tokens.Token, _ crypto.Signer, csr []byte) admission.AdmitRequest {
			return admission.AdmitRequest{Token: tok.String(), CSR: csr, Node: web2}
		}, []error{tokens.ErrWrongNode}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tok := e.issue(t, admission.TokenSpec{})
			key := newKey(t)
			csr := csrPEM(t, key)
			first, err := e.svc.Admit(t.Context(), admission.AdmitRequest{Token: tok.String(), CSR: csr})
			if err != nil {
				t.Fatalf("first Admit: %v", err)
			}
			e.advance(tc.wait)
			req := tc.req(t, tok, key, csr)
			if tc.want != nil {
				err := refused(t, e.st, func() error { _, err := e.svc.Admit(t.Context(), req); return err }, tc.want...)
				if tc.not != nil && errors.Is(err, tc.not) {
					t.Errorf("error %q is %q", err, tc.not)
				}
				return
			}
			var again *admission.Issued
			unchanged(t, e.st, func() {
				if again, err = e.svc.Admit(t.Context(), req); err != nil {
					t.Fatalf("replay: %v", err)
				}
			})
			if !again.Replay || again.Node != web1 || !bytes.Equal(again.Cert.Raw, first.Cert.Raw) ||
				admission.SerialHex(again.Cert) != admission.SerialHex(first.Cert) {
				t.Errorf("replay = node %q, replay %v, serial %s; want the first certificate %s again",
					again.Node, again.Replay, admission.SerialHex(again.Cert), admission.SerialHex(first.Cert))
			}
		})
	}
}

// gatedStore holds each Get of a token record until n of them are waiting,
// so that n concurrent Admits all read the token pending before any of them
// writes, and only the store's conditional write can pick a winner.
type gatedStore struct {
	admission.Store
	mu   sync.Mutex
	n    int
	open chan struct{}
}

func (g *gatedStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := g.Store.Get(ctx, key)
	if strings.HasPrefix(key, "tokens/") {
		g.mu.Lock()
		if g.n--; g.n == 0 {
			close(g.open)
		}
		g.mu.Unlock()
		<-g.open
	}
	return v, err
}

func TestAdmitConcurrent(t *testing.T) {
	t.Parallel()
	const n = 50
	e := newEnv(t, func(c *admission.Config) {
		c.Store = &gatedStore{Store: c.Store, n: n, open: make(chan struct{})}
	})
	tok := e.issue(t, admission.TokenSpec{})
	keys := make([]*ecdsa.PrivateKey, n)
	csrs := make([][]byte, n)
	for i := range n {
		keys[i] = newKey(t)
		csrs[i] = csrPEM(t, keys[i])
	}
	issued := make([]*admission.Issued, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			issued[i], errs[i] = e.svc.Admit(t.Context(), admission.AdmitRequest{Token: tok.String(), CSR: csrs[i]})
		})
	}
	close(start)
	wg.Wait()

	winner, used := -1, 0
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("both Admit %d and %d succeeded", winner, i)
		case err == nil:
			winner = i
		case errors.Is(err, tokens.ErrUsed):
			used++
		default:
			t.Errorf("Admit %d: %v, want %v", i, err, tokens.ErrUsed)
		}
	}
	if winner < 0 || used != n-1 {
		t.Fatalf("%d winner(s) and %d ErrUsed, want 1 and %d", n-used, used, n-1)
	}
	cert := issued[winner].Cert
	serial := admission.SerialHex(cert)
	if issued[winner].Replay || !samePub(cert.PublicKey, keys[winner].Public()) {
		t.Errorf("winner's certificate: replay %v, for its key %v", issued[winner].Replay, samePub(cert.PublicKey, keys[winner].Public()))
	}
	nodes, err := e.svc.ListNodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Serial != serial {
		t.Errorf("nodes %+v, want one with serial %s", nodes, serial)
	}
	rec := e.record(t, tok.ID)
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if rec.State != tokens.StateRedeemed || rec.Serial != serial || !bytes.Equal(rec.KeyHash, spki[:]) {
		t.Errorf("token record %+v, want redeemed by serial %s", rec, serial)
	}
	e.auth(t, cert)
}

func TestAuthenticateRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key0 := newKey(t)
	cert0 := e.admit(t, e.issue(t, admission.TokenSpec{}), key0).Cert
	s0 := admission.SerialHex(cert0)
	var caller0 *admission.Caller
	unchanged(t, e.st, func() { caller0 = e.auth(t, cert0) })
	if caller0.Serial != s0 || caller0.Node.Serial != s0 || caller0.Retry {
		t.Fatalf("Authenticate(current) = %+v", caller0)
	}
	if n := e.node(t, web1); n.Key != keyHash(t, key0) || n.Previous != "" {
		t.Fatalf("after admission: %+v, want key %s", n, keyHash(t, key0))
	}

	e.advance(time.Hour)
	key1 := newKey(t)
	cert1 := e.renew(t, caller0, key1).Cert
	s1 := admission.SerialHex(cert1)
	n := e.node(t, web1)
	if n.Serial != s1 || n.Previous != s0 || n.Key != keyHash(t, key1) || !n.NotAfter.Equal(cert1.NotAfter) {
		t.Fatalf("after Renew: %+v, want serial %s, previous %s, key %s", n, s1, s0, keyHash(t, key1))
	}
	// The new CGC is current at once, without being used first, and
	// using it writes nothing.
	unchanged(t, e.st, func() {
		if c := e.auth(t, cert1); c.Serial != s1 || c.Node.Serial != s1 || c.Retry {
			t.Errorf("Authenticate(new) = %+v", c)
		}
	})
	// The old one is superseded for everything but a renewal, which may
	// only repeat the last one.
	refused(t, e.st, func() error {
		_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{cert0})
		return err
	}, admission.ErrCertSuperseded)
	unchanged(t, e.st, func() {
		c, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{cert0})
		if err != nil || c.Serial != s0 || !c.Retry {
			t.Errorf("AuthenticateRenewal(previous) = %+v, %v; want a retry", c, err)
		}
	})
}

func TestAuthenticateRefusals(t *testing.T) {
	t.Parallel()
	type prep func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate
	signed := func(cn string, uris []*url.URL, eku x509.ExtKeyUsage) prep {
		return func(t *testing.T, e *env, _ *x509.Certificate) []*x509.Certificate {
			return []*x509.Certificate{sign(t, e.ka, cn, uris, eku)}
		}
	}
	// rotated renews cert0 and returns the new CGC.
	rotated := func(t *testing.T, e *env, cert0 *x509.Certificate) *x509.Certificate {
		return e.renew(t, e.auth(t, cert0), newKey(t)).Cert
	}
	revoke := func(t *testing.T, e *env) {
		if _, err := e.svc.RevokeNode(t.Context(), web1); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		prep prep
		want error
	}{
		{"no certificate", func(*testing.T, *env, *x509.Certificate) []*x509.Certificate { return nil }, admission.ErrCertInvalid},
		{"other authority", func(t *testing.T, e *env, _ *x509.Certificate) []*x509.Certificate {
			other, err := authority.Generate(authority.Config{Name: authority.KeyGranting, Now: e.clock})
			if err != nil {
				t.Fatal(err)
			}
			return []*x509.Certificate{sign(t, other, web1, []*url.URL{admission.NodeURI(web1)}, x509.ExtKeyUsageClientAuth)}
		}, admission.ErrCertInvalid},
		{"server auth", signed(web1, []*url.URL{admission.NodeURI(web1)}, x509.ExtKeyUsageServerAuth), admission.ErrCertInvalid},
		{"no node URI", signed(web1, nil, x509.ExtKeyUsageClientAuth), admission.ErrCertInvalid},
		{"URI and CN disagree", signed(web2, []*url.URL{admission.NodeURI(web1)}, x509.ExtKeyUsageClientAuth), admission.ErrCertInvalid},
		{"node not in inventory", signed("ghost.example", []*url.URL{admission.NodeURI("ghost.example")}, x509.ExtKeyUsageClientAuth), admission.ErrCertInvalid},
		{"unrelated serial", signed(web1, []*url.URL{admission.NodeURI(web1)}, x509.ExtKeyUsageClientAuth), admission.ErrCertSuperseded},
		{"old after rotation", func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate {
			rotated(t, e, cert0)
			return []*x509.Certificate{cert0}
		}, admission.ErrCertSuperseded},
		{"two rotations back", func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate {
			rotated(t, e, rotated(t, e, cert0))
			return []*x509.Certificate{cert0}
		}, admission.ErrCertSuperseded},
		{"revoked, current", func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate {
			revoke(t, e)
			return []*x509.Certificate{cert0}
		}, admission.ErrNodeRevoked},
		{"revoked, previous", func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate {
			rotated(t, e, cert0)
			revoke(t, e)
			return []*x509.Certificate{cert0}
		}, admission.ErrNodeRevoked},
		{"revoked, new", func(t *testing.T, e *env, cert0 *x509.Certificate) []*x509.Certificate {
			next := rotated(t, e, cert0)
			revoke(t, e)
			return []*x509.Certificate{next}
		}, admission.ErrNodeRevoked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cert0 := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
			chain := tc.prep(t, e, cert0)
			refused(t, e.st, func() error {
				c, err := e.svc.Authenticate(t.Context(), chain)
				if c != nil {
					t.Errorf("Authenticate returned a caller with error %v", err)
				}
				return err
			}, tc.want)
		})
	}
}

func TestAuthenticateValidity(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		at   func(c *x509.Certificate) time.Time
		want error
	}{
		{"at NotBefore", func(c *x509.Certificate) time.Time { return c.NotBefore }, nil},
		{"at NotAfter", func(c *x509.Certificate) time.Time { return c.NotAfter }, nil},
		{"after NotAfter", func(c *x509.Certificate) time.Time { return c.NotAfter.Add(time.Second) }, admission.ErrCertExpired},
		{"long expired", func(c *x509.Certificate) time.Time { return c.NotAfter.AddDate(1, 0, 0) }, admission.ErrCertExpired},
		{"before NotBefore", func(c *x509.Certificate) time.Time { return c.NotBefore.Add(-time.Second) }, admission.ErrCertExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cert := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
			e.now = tc.at(cert)
			if tc.want == nil {
				unchanged(t, e.st, func() { e.auth(t, cert) })
				return
			}
			refused(t, e.st, func() error {
				_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{cert})
				return err
			}, tc.want)
		})
	}
}

func TestRenew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cert := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
	caller := e.auth(t, cert)
	for i := 1; i <= 3; i++ {
		e.advance(24 * time.Hour)
		key := newKey(t)
		iss := e.renew(t, caller, key)
		if iss.Node != web1 || iss.Replay {
			t.Errorf("renewal %d: node %q, replay %v", i, iss.Node, iss.Replay)
		}
		checkCGC(t, e, iss.Cert, web1, key.Public())
		if samePub(iss.Cert.PublicKey, cert.PublicKey) {
			t.Errorf("renewal %d kept the old key", i)
		}
		s := admission.SerialHex(iss.Cert)
		n := e.node(t, web1)
		if n.Serial != s || n.Previous != admission.SerialHex(cert) || n.Key != keyHash(t, key) || !n.NotAfter.Equal(iss.Cert.NotAfter) ||
			n.Renewals != i || !n.RenewedAt.Equal(e.now) {
			t.Errorf("renewal %d: node %+v, want serial %s, previous %s, %d renewals at %v",
				i, n, s, admission.SerialHex(cert), i, e.now)
		}
		cert, caller = iss.Cert, e.auth(t, iss.Cert)
	}
}

func TestRenewRefusals(t *testing.T) {
	t.Parallel()
	type prep func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte)
	tests := []struct {
		name string
		prep prep
		want error
	}{
		{"previous CGC, another key", func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			e.renew(t, caller0, newKey(t))
			return renewalCaller(t, e, caller0), csrPEM(t, newKey(t))
		}, admission.ErrCertSuperseded},
		{"previous CGC, its own key", func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			e.renew(t, caller0, newKey(t))
			return renewalCaller(t, e, caller0), csrPEM(t, e.keys[caller0.Serial])
		}, admission.ErrCertSuperseded},
		{"previous CGC, caller from before the renewal", func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			// The caller was authenticated as current; the record has
			// moved on since, and the transaction must notice.
			e.renew(t, caller0, newKey(t))
			return caller0, csrPEM(t, newKey(t))
		}, admission.ErrCertSuperseded},
		{"two renewals back, same key", func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			key := newKey(t)
			cert1 := e.renew(t, caller0, key).Cert
			e.renew(t, e.auth(t, cert1), key)
			return caller0, csrPEM(t, key)
		}, admission.ErrCertSuperseded},
		{"revoked", func(t *testing.T, e *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			if _, err := e.svc.RevokeNode(t.Context(), web1); err != nil {
				t.Fatal(err)
			}
			return caller0, csrPEM(t, newKey(t))
		}, admission.ErrNodeRevoked},
		{"not in inventory", func(t *testing.T, _ *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			c := *caller0
			c.Node.Name = "ghost.example"
			return &c, csrPEM(t, newKey(t))
		}, admission.ErrCertInvalid},
		{"CSR garbage", func(_ *testing.T, _ *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			return caller0, []byte("garbage")
		}, admission.ErrCSRInvalid},
		{"CSR bad signature", func(t *testing.T, _ *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			return caller0, badSignature(t, newKey(t))
		}, admission.ErrCSRInvalid},
		{"weak key", func(t *testing.T, _ *env, caller0 *admission.Caller) (*admission.Caller, []byte) {
			return caller0, csrPEM(t, ecKey(t, elliptic.P224()))
		}, admission.ErrKeyRejected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			caller0 := e.auth(t, e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert)
			caller, csr := tc.prep(t, e, caller0)
			refused(t, e.st, func() error {
				iss, err := e.svc.Renew(t.Context(), caller, csr)
				if iss != nil {
					t.Errorf("Renew returned a certificate with error %v", err)
				}
				return err
			}, tc.want)
		})
	}
}

// TestRenewRetry: a node whose renewal answer was lost repeats the
// renewal with its previous CGC and the same key, and gets a certificate
// for that key again, as often as it needs to; the retry changes nothing
// else about the rotation.
func TestRenewRetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	caller0 := e.auth(t, e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert)
	key := newKey(t)
	lost := e.renew(t, caller0, key).Cert
	var last *x509.Certificate
	for i := range 2 {
		e.advance(time.Minute)
		retry := renewalCaller(t, e, caller0)
		if !retry.Retry {
			t.Fatalf("retry %d: caller %+v is not a retry", i, retry)
		}
		iss := e.renew(t, retry, key)
		checkCGC(t, e, iss.Cert, web1, key.Public())
		s := admission.SerialHex(iss.Cert)
		if n := e.node(t, web1); n.Serial != s || n.Previous != caller0.Serial || n.Key != keyHash(t, key) || n.Renewals != 2+i {
			t.Errorf("retry %d: node %+v, want serial %s, previous %s", i, n, s, caller0.Serial)
		}
		last = iss.Cert
	}
	// Only the certificate last issued is current.
	refused(t, e.st, func() error {
		_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{lost})
		return err
	}, admission.ErrCertSuperseded)
	caller1 := e.auth(t, last)
	// The next renewal moves the rotation on: the first CGC is done.
	e.renew(t, caller1, newKey(t))
	refused(t, e.st, func() error {
		_, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{e.certs[caller0.Serial]})
		return err
	}, admission.ErrCertSuperseded)
	refused(t, e.st, func() error {
		_, err := e.svc.Renew(t.Context(), caller0, csrPEM(t, key))
		return err
	}, admission.ErrCertSuperseded)
	// The previous CGC is now last: a renewal may repeat for key.
	if c := renewalCaller(t, e, caller1); !c.Retry {
		t.Errorf("AuthenticateRenewal(%s) = %+v, want a retry", caller1.Serial, c)
	}
}

// renewalCaller authenticates the certificate caller presented for a
// renewal, as the renewal endpoint does.
func renewalCaller(t *testing.T, e *env, caller *admission.Caller) *admission.Caller {
	t.Helper()
	c, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{e.certs[caller.Serial]})
	if err != nil {
		t.Fatalf("AuthenticateRenewal(%s): %v", caller.Serial, err)
	}
	return c
}

// keyHash is how a node record names a public key.
func keyHash(t *testing.T, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return sha256Hex(der)
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestRevokeNode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	used := e.issue(t, admission.TokenSpec{})
	cert0 := e.admit(t, used, newKey(t)).Cert
	caller0 := e.auth(t, cert0)
	next := e.renew(t, caller0, newKey(t)).Cert
	pending := []tokens.Token{e.issue(t, admission.TokenSpec{}), e.issue(t, admission.TokenSpec{IPs: []string{"192.0.2.7"}})}
	others := e.issue(t, admission.TokenSpec{Node: web2})
	e.advance(time.Minute)
	revokedAt := e.now

	n, err := e.svc.RevokeNode(t.Context(), web1)
	if err != nil {
		t.Fatalf("RevokeNode: %v", err)
	}
	if n.Name != web1 || !n.Revoked || !n.RevokedAt.Equal(revokedAt) || n.Serial != admission.SerialHex(next) {
		t.Errorf("RevokeNode = %+v", n)
	}
	if n := e.node(t, web1); !n.Revoked || !n.RevokedAt.Equal(revokedAt) {
		t.Errorf("stored node %+v, want revoked at %v", n, revokedAt)
	}
	for _, tok := range pending {
		if r := e.record(t, tok.ID); r.State != tokens.StateRevoked || !r.RevokedAt.Equal(revokedAt) {
			t.Errorf("pending token %s of the node: %s at %v, want revoked", tok.ID, r.State, r.RevokedAt)
		}
	}
	if r := e.record(t, used.ID); r.State != tokens.StateRedeemed {
		t.Errorf("redeemed token is now %s", r.State)
	}
	if r := e.record(t, others.ID); r.State != tokens.StatePending {
		t.Errorf("another node's token is now %s", r.State)
	}

	for _, c := range []*x509.Certificate{cert0, next} {
		refused(t, e.st, func() error {
			_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{c})
			return err
		}, admission.ErrNodeRevoked)
	}
	refused(t, e.st, func() error {
		_, err := e.svc.Admit(t.Context(), admission.AdmitRequest{Token: pending[0].String(), CSR: csrPEM(t, newKey(t))})
		return err
	}, tokens.ErrRevoked)

	e.advance(time.Minute)
	unchanged(t, e.st, func() {
		again, err := e.svc.RevokeNode(t.Context(), web1)
		if err != nil || !again.Revoked || !again.RevokedAt.Equal(revokedAt) {
			t.Errorf("second RevokeNode = %+v, %v; want revoked at %v", again, err, revokedAt)
		}
	})
	refused(t, e.st, func() error { _, err := e.svc.RevokeNode(t.Context(), "ghost.example"); return err }, admission.ErrNotFound)
	e.admit(t, others, newKey(t))
}

func TestRevokeToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prep   func(t *testing.T, e *env, tok tokens.Token) string // returns the id to revoke
		want   error
		wantAt time.Duration // after t0, when the token was revoked
	}{
		{"pending", func(_ *testing.T, _ *env, tok tokens.Token) string { return tok.ID }, nil, time.Minute},
		{"expired", func(_ *testing.T, e *env, tok tokens.Token) string {
			e.advance(admission.DefaultTokenTTL)
			return tok.ID
		}, nil, admission.DefaultTokenTTL + time.Minute},
		{"already revoked", func(t *testing.T, e *env, tok tokens.Token) string {
			if _, err := e.svc.RevokeToken(t.Context(), tok.ID); err != nil {
				t.Fatal(err)
			}
			return tok.ID
		}, nil, 0},
		{"unknown", func(*testing.T, *env, tokens.Token) string { return "0000000000000000" }, admission.ErrNotFound, 0},
		{"redeemed", func(t *testing.T, e *env, tok tokens.Token) string {
			e.admit(t, tok, newKey(t))
			return tok.ID
		}, admission.ErrInvalid, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tok := e.issue(t, admission.TokenSpec{})
			id := tc.prep(t, e, tok)
			e.advance(time.Minute)
			if tc.want != nil {
				refused(t, e.st, func() error { _, err := e.svc.RevokeToken(t.Context(), id); return err }, tc.want)
				return
			}
			rec, err := e.svc.RevokeToken(t.Context(), id)
			if err != nil {
				t.Fatalf("RevokeToken: %v", err)
			}
			at := t0.Add(tc.wantAt)
			if rec.ID != tok.ID || rec.State != tokens.StateRevoked || !rec.RevokedAt.Equal(at) || rec.Hash != nil {
				t.Errorf("RevokeToken = %+v, want revoked at %v, redacted", rec, at)
			}
			if r := e.record(t, tok.ID); r.State != tokens.StateRevoked || !r.RevokedAt.Equal(at) {
				t.Errorf("stored record %+v, want revoked at %v", r, at)
			}
		})
	}
}

func TestReadmission(t *testing.T) {
	t.Parallel()
	for _, revoke := range []bool{false, true} {
		t.Run(fmt.Sprintf("revoked=%v", revoke), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cert0 := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
			next := e.renew(t, e.auth(t, cert0), newKey(t)).Cert
			if revoke {
				if _, err := e.svc.RevokeNode(t.Context(), web1); err != nil {
					t.Fatal(err)
				}
			}
			e.advance(time.Hour)
			tok := e.issue(t, admission.TokenSpec{})
			key := newKey(t)
			iss := e.admit(t, tok, key)
			checkCGC(t, e, iss.Cert, web1, key.Public())
			serial := admission.SerialHex(iss.Cert)
			if serial == admission.SerialHex(cert0) || serial == admission.SerialHex(next) {
				t.Fatalf("re-admission reused serial %s", serial)
			}
			want := admission.Node{Name: web1, TokenID: tok.ID, AdmittedAt: e.now, Serial: serial, NotAfter: iss.Cert.NotAfter, Key: keyHash(t, key), Cert: sha256Hex(iss.Cert.Raw)}
			if got := e.node(t, web1); !reflect.DeepEqual(got, want) {
				t.Errorf("node after re-admission\n got %+v\nwant %+v", got, want)
			}
			for _, c := range []*x509.Certificate{cert0, next} {
				refused(t, e.st, func() error {
					_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{c})
					return err
				}, admission.ErrCertSuperseded)
			}
			e.auth(t, iss.Cert)
		})
	}
}

func TestPrune(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ids := map[string]string{} // token id to the name used below
	issue := func(name string, ttl time.Duration) tokens.Token {
		tok := e.issue(t, admission.TokenSpec{Node: name + ".example", TTL: ttl})
		ids[tok.ID] = name
		return tok
	}
	issue("pending-1h", time.Hour)
	issue("pending-3h", 3*time.Hour)
	revoked := issue("revoked-1h", time.Hour)
	redeemedLate := issue("redeemed-55m", time.Hour)   // kept until 55m + grace
	redeemedEarly := issue("redeemed-0m", 2*time.Hour) // kept until it expires
	if _, err := e.svc.RevokeToken(t.Context(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	e.admit(t, redeemedEarly, newKey(t))
	e.advance(55 * time.Minute)
	e.admit(t, redeemedLate, newKey(t))

	steps := []struct {
		at      time.Duration // after t0
		removed int
		left    []string
	}{
		{55 * time.Minute, 0, []string{"pending-1h", "pending-3h", "redeemed-0m", "redeemed-55m", "revoked-1h"}},
		{time.Hour - time.Second, 0, []string{"pending-1h", "pending-3h", "redeemed-0m", "redeemed-55m", "revoked-1h"}},
		{time.Hour, 2, []string{"pending-3h", "redeemed-0m", "redeemed-55m"}},
		{55*time.Minute + grace - time.Second, 0, []string{"pending-3h", "redeemed-0m", "redeemed-55m"}},
		{55*time.Minute + grace, 1, []string{"pending-3h", "redeemed-0m"}},
		{2 * time.Hour, 1, []string{"pending-3h"}},
		{3 * time.Hour, 1, nil},
	}
	nodes, err := e.svc.ListNodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		e.now = t0.Add(s.at)
		n, err := e.svc.Prune(t.Context())
		if err != nil || n != s.removed {
			t.Errorf("Prune at %v = %d, %v; want %d", s.at, n, err, s.removed)
		}
		recs, err := e.svc.ListTokens(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, r := range recs {
			left = append(left, ids[r.ID])
		}
		slices.Sort(left)
		if !slices.Equal(left, s.left) {
			t.Errorf("after Prune at %v: tokens %q, want %q", s.at, left, s.left)
		}
		unchanged(t, e.st, func() {
			if n, err := e.svc.Prune(t.Context()); n != 0 || err != nil {
				t.Errorf("second Prune at %v = %d, %v; want 0", s.at, n, err)
			}
		})
	}
	if after, err := e.svc.ListNodes(t.Context()); err != nil || !reflect.DeepEqual(after, nodes) {
		t.Errorf("Prune changed the nodes: %+v, %v; want %+v", after, err, nodes)
	}
}

func TestParseCSR(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		make func(t *testing.T) ([]byte, crypto.PublicKey)
		want error
	}{
		{"PEM P-256", func(t *testing.T) ([]byte, crypto.PublicKey) {
			k := newKey(t)
			return csrPEM(t, k), k.Public()
		}, nil},
		{"DER P-256", func(t *testing.T) ([]byte, crypto.PublicKey) {
			k := newKey(t)
			return csrDER(t, k, evil()), k.Public()
		}, nil},
		{"NEW CERTIFICATE REQUEST", func(t *testing.T) ([]byte, crypto.PublicKey) {
			k := newKey(t)
			return toPEM("NEW CERTIFICATE REQUEST", csrDER(t, k, evil())), k.Public()
		}, nil},
		{"P-384", func(t *testing.T) ([]byte, crypto.PublicKey) {
			k := ecKey(t, elliptic.P384())
			return csrPEM(t, k), k.Public()
		}, nil},
		{"Ed25519", func(t *testing.T) ([]byte, crypto.PublicKey) {
			pub, k, err := ed25519.GenerateKey(crand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return csrPEM(t, k), pub
		}, nil},
		{"RSA 2048", func(t *testing.T) ([]byte, crypto.PublicKey) {
			k := rsaKey(t, 2048)
			return csrPEM(t, k), k.Public()
		}, nil},
		{"PEM certificate", func(t *testing.T) ([]byte, crypto.PublicKey) {
			return toPEM("CERTIFICATE", csrDER(t, newKey(t), evil())), nil
		}, admission.ErrCSRInvalid},
		{"PEM private key", func(t *testing.T) ([]byte, crypto.PublicKey) {
			return toPEM("PRIVATE KEY", csrDER(t, newKey(t), evil())), nil
		}, admission.ErrCSRInvalid},
		{"garbage", func(*testing.T) ([]byte, crypto.PublicKey) { return []byte("garbage"), nil }, admission.ErrCSRInvalid},
		{"empty", func(*testing.T) ([]byte, crypto.PublicKey) { return nil, nil }, admission.ErrCSRInvalid},
		{"truncated", func(t *testing.T) ([]byte, crypto.PublicKey) {
			der := csrDER(t, newKey(t), evil())
			return der[:len(der)-5], nil
		}, admission.ErrCSRInvalid},
		{"bad signature", func(t *testing.T) ([]byte, crypto.PublicKey) { return badSignature(t, newKey(t)), nil }, admission.ErrCSRInvalid},
		{"bad signature, PEM", func(t *testing.T) ([]byte, crypto.PublicKey) {
			return toPEM("CERTIFICATE REQUEST", badSignature(t, newKey(t))), nil
		}, admission.ErrCSRInvalid},
		{"RSA 1024", func(t *testing.T) ([]byte, crypto.PublicKey) { return csrPEM(t, rsaKey(t, 1024)), nil }, admission.ErrKeyRejected},
		{"P-224", func(t *testing.T) ([]byte, crypto.PublicKey) { return csrPEM(t, ecKey(t, elliptic.P224())), nil }, admission.ErrKeyRejected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data, pub := tc.make(t)
			csr, err := admission.ParseCSR(data)
			if tc.want != nil {
				if !errors.Is(err, tc.want) || csr != nil {
					t.Errorf("ParseCSR = %v, %v; want %v", csr, err, tc.want)
				}
				return
			}
			if err != nil || !samePub(csr.PublicKey, pub) {
				t.Errorf("ParseCSR = %v; want the CSR for the key", err)
			}
		})
	}
}

func TestNodeName(t *testing.T) {
	t.Parallel()
	uris := func(ss ...string) []*url.URL {
		var us []*url.URL
		for _, s := range ss {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			us = append(us, u)
		}
		return us
	}
	tests := []struct {
		name string
		cn   string
		uris []*url.URL
		want string // "": ErrCertInvalid
	}{
		{"agree", web1, []*url.URL{admission.NodeURI(web1)}, web1},
		{"after another URI", web1, uris("https://web-1.example/", "keysystem://node/"+web1), web1},
		{"CN differs", web2, []*url.URL{admission.NodeURI(web1)}, ""},
		{"no CN", "", []*url.URL{admission.NodeURI(web1)}, ""},
		{"no URI", web1, nil, ""},
		{"other scheme", web1, uris("spiffe://node/" + web1), ""},
		{"other host", web1, uris("keysystem://nodes/" + web1), ""},
		{"invalid name", "Web-1", uris("keysystem://node/Web-1"), ""},
		{"nested path", "a/b", uris("keysystem://node/a/b"), ""},
		{"empty name", "", uris("keysystem://node"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: tc.cn}, URIs: tc.uris}
			got, err := admission.NodeName(cert)
			if tc.want == "" {
				if !errors.Is(err, admission.ErrCertInvalid) {
					t.Errorf("NodeName = %q, %v; want %v", got, err, admission.ErrCertInvalid)
				}
				return
			}
			if got != tc.want || err != nil {
				t.Errorf("NodeName = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A node whose installer file leaked before it ever came up is revoked by
// name: its tokens die, and the name is on record as revoked.
func TestRevokeNeverAdmittedNode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	leaked := e.issue(t, admission.TokenSpec{Node: web2})
	n, err := e.svc.RevokeNode(t.Context(), web2)
	if err != nil || !n.Revoked || n.Serial != "" {
		t.Fatalf("RevokeNode(never admitted) = %+v, %v; want a revoked record", n, err)
	}
	if r := e.record(t, leaked.ID); r.State != tokens.StateRevoked {
		t.Errorf("leaked token is %s, want revoked", r.State)
	}
	refused(t, e.st, func() error {
		_, err := e.svc.Admit(t.Context(), admission.AdmitRequest{Token: leaked.String(), CSR: csrPEM(t, newKey(t))})
		return err
	}, tokens.ErrRevoked)
	// A token issued afterwards is the administrator's word: it admits.
	e.admit(t, e.issue(t, admission.TokenSpec{Node: web2}), newKey(t))
	if n := e.node(t, web2); n.Revoked || n.Serial == "" {
		t.Errorf("re-admitted node %+v", n)
	}
}

// TestAuthenticateRenewalAfterExpiry: within the window an expired CGC
// may renew, but only if it was genuine: a forgery that copies a node's
// name and serial (both public) under another key is refused, and so is
// anything outside the window or before its validity.
func TestAuthenticateRenewalAfterExpiry(t *testing.T) {
	t.Parallel()
	const window = 48 * time.Hour
	e := newEnv(t, func(c *admission.Config) { c.RenewAfterExpiry = window })
	cert := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert

	// A look-alike: same subject, URI and serial, self-signed.
	forgerKey := newKey(t)
	tmpl := *cert
	tmpl.PublicKey, tmpl.SignatureAlgorithm = nil, 0
	der, err := x509.CreateCertificate(crand.Reader, &tmpl, &tmpl, forgerKey.Public(), forgerKey)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}

	e.now = cert.NotAfter.Add(time.Hour)
	refused(t, e.st, func() error {
		_, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{forged})
		return err
	}, admission.ErrCertInvalid)
	refused(t, e.st, func() error { // the normal check refuses the genuine one
		_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{cert})
		return err
	}, admission.ErrCertExpired)
	if c, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{cert}); err != nil || c.Node.Name != web1 {
		t.Fatalf("AuthenticateRenewal 1h after expiry: %v, %+v", err, c)
	}

	e.now = cert.NotAfter.Add(window + time.Second)
	refused(t, e.st, func() error {
		_, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{cert})
		return err
	}, admission.ErrCertExpired)
	e.now = cert.NotBefore.Add(-time.Second)
	refused(t, e.st, func() error {
		_, err := e.svc.AuthenticateRenewal(t.Context(), []*x509.Certificate{cert})
		return err
	}, admission.ErrCertExpired)
}

// TestVerifiedCGCStillExpires: a CGC verified once (and so remembered)
// is still refused once it has expired, or before it is valid.
// TestIssuedCGCStillExpires: the CGC a node record names is not verified
// again when presented, but its validity period still is.
func TestIssuedCGCStillExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cert := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
	e.auth(t, cert)
	for _, at := range []time.Time{cert.NotAfter.Add(time.Second), cert.NotBefore.Add(-time.Second)} {
		e.now = at
		refused(t, e.st, func() error {
			_, err := e.svc.Authenticate(t.Context(), []*x509.Certificate{cert})
			return err
		}, admission.ErrCertExpired)
	}
}

// TestReplacedAuthorityRefusesItsCGCs: the node records name the CGCs the
// keyserver issued, but a CGC of a key-granting authority that has since
// been replaced is verified in full, and refused.
func TestReplacedAuthorityRefusesItsCGCs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cert := e.admit(t, e.issue(t, admission.TokenSpec{}), newKey(t)).Cert
	e.auth(t, cert)
	other, err := authority.Generate(authority.Config{Name: authority.KeyGranting, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := admission.New(admission.Config{Store: e.st, KeyGranting: other, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range []func(context.Context, []*x509.Certificate) (*admission.Caller, error){svc.Authenticate, svc.AuthenticateRenewal} {
		refused(t, e.st, func() error {
			_, err := auth(t.Context(), []*x509.Certificate{cert})
			return err
		}, admission.ErrCertInvalid)
	}
}

// readCounter counts the store reads of token records.
type readCounter struct {
	admission.Store
	mu         sync.Mutex
	gets       int // of tokens/...
	tokenPages int // pages listed of tokens/
}

func (r *readCounter) Get(ctx context.Context, key string) ([]byte, error) {
	if strings.HasPrefix(key, "tokens/") {
		r.mu.Lock()
		r.gets++
		r.mu.Unlock()
	}
	return r.Store.Get(ctx, key)
}

func (r *readCounter) ListPage(ctx context.Context, prefix, after string, limit int) ([]store.KV, error) {
	if strings.HasPrefix(prefix, "tokens/") {
		r.mu.Lock()
		r.tokenPages++
		r.mu.Unlock()
	}
	return r.Store.ListPage(ctx, prefix, after, limit)
}

// TestPruneReadsOnlyWhatIsDue: Prune finds every dead token, over more
// than one page of them, and reads only those records, none of the live
// ones.
func TestPruneReadsOnlyWhatIsDue(t *testing.T) {
	t.Parallel()
	reads := &readCounter{}
	e := newEnv(t, func(c *admission.Config) { reads.Store = c.Store; c.Store = reads })
	if n, err := e.svc.Prune(t.Context()); n != 0 || err != nil {
		t.Fatalf("first Prune = %d, %v; want 0", n, err)
	}
	const dead, live = 1100, 1500
	for i := range dead {
		e.issue(t, admission.TokenSpec{Node: fmt.Sprintf("n%04d.example", i), TTL: time.Minute})
	}
	for i := range live {
		e.issue(t, admission.TokenSpec{Node: fmt.Sprintf("z%04d.example", i), TTL: 2 * time.Hour})
	}
	e.advance(time.Hour)
	reads.gets, reads.tokenPages = 0, 0
	n, err := e.svc.Prune(t.Context())
	if err != nil || n != dead {
		t.Fatalf("Prune = %d, %v; want %d", n, err, dead)
	}
	if reads.gets != dead || reads.tokenPages != 0 {
		t.Errorf("Prune read %d token records and listed %d pages of them; want %d and 0", reads.gets, reads.tokenPages, dead)
	}
	left, err := e.svc.ListTokens(t.Context())
	if err != nil || len(left) != live {
		t.Fatalf("after Prune %d tokens left (%v), want %d", len(left), err, live)
	}
	if entries, _ := e.st.List(t.Context(), "prune/"); len(entries) != live {
		t.Errorf("%d prune entries left, want %d", len(entries), live)
	}
}

// TestPruneIndexesOlderStores: a store whose token records have no prune
// entries (written before there was an index) gets them from the first
// Prune, which also removes what is already dead.
func TestPruneIndexesOlderStores(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.issue(t, admission.TokenSpec{Node: "short.example", TTL: time.Hour})
	long := e.issue(t, admission.TokenSpec{Node: "long.example", TTL: 3 * time.Hour})
	e.admit(t, e.issue(t, admission.TokenSpec{Node: "redeemed.example", TTL: 2 * time.Hour}), newKey(t))
	old, err := e.st.List(t.Context(), "prune/")
	if err != nil || len(old) != 3 {
		t.Fatalf("prune entries %v, %v; want 3", old, err)
	}
	for _, kv := range old {
		if err := e.st.Txn(t.Context(), nil, []store.Op{{Key: kv.Key, Delete: true}}); err != nil {
			t.Fatal(err)
		}
	}

	e.advance(time.Hour)
	if n, err := e.svc.Prune(t.Context()); n != 1 || err != nil {
		t.Fatalf("Prune at 1h = %d, %v; want 1", n, err)
	}
	if entries, _ := e.st.List(t.Context(), "prune/"); len(entries) != 2 {
		t.Errorf("prune entries after indexing: %s; want the 2 live tokens'", showKVs(entries))
	}
	e.advance(2 * time.Hour)
	if n, err := e.svc.Prune(t.Context()); n != 2 || err != nil {
		t.Fatalf("Prune at 3h = %d, %v; want 2", n, err)
	}
	if kvs, _ := e.st.List(t.Context(), "tokens/"+long.ID); len(kvs) != 0 {
		t.Errorf("token %s left after it expired", long.ID)
	}
	if entries, _ := e.st.List(t.Context(), "prune/"); len(entries) != 0 {
		t.Errorf("prune entries left: %s", showKVs(entries))
	}
}

// TestPruneAfterLongerGrace: a keyserver restarted with a longer retry
// window keeps a redeemed token that its entry, written under the shorter
// window, says is due.
func TestPruneAfterLongerGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tok := e.issue(t, admission.TokenSpec{TTL: time.Hour})
	e.advance(55 * time.Minute)
	e.admit(t, tok, newKey(t)) // due at 55m + grace
	longer, err := admission.New(admission.Config{Store: e.st, KeyGranting: e.ka, CGCLifetime: cgcLife, Grace: 2 * grace, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	e.now = t0.Add(55*time.Minute + grace)
	if n, err := longer.Prune(t.Context()); n != 0 || err != nil {
		t.Fatalf("Prune within the longer grace = %d, %v; want 0", n, err)
	}
	e.now = t0.Add(55*time.Minute + 2*grace)
	if n, err := longer.Prune(t.Context()); n != 1 || err != nil {
		t.Fatalf("Prune at the end of the longer grace = %d, %v; want 1", n, err)
	}
	if kvs := snapshot(t, e.st); len(kvs) != 2 { // the node and the marker
		t.Errorf("store after the last Prune: %s", showKVs(kvs))
	}
}
