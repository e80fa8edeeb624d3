package keyserver_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
	"github.com/keysystem/keysystem/tokens"
)

const (
	cgcLifetime = 24 * time.Hour
	grace       = 10 * time.Minute // admission's default retry window
	adminName   = "alice"
)

// fakeClock is the server's only clock; it moves when a test says so.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// auditBuffer is the audit log, written by the server's goroutines and
// read by the test.
type auditBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *auditBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *auditBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// events parses the audit log: one JSON object a line, nothing else.
func (b *auditBuffer) events(t *testing.T) []keyserver.AuditEvent {
	t.Helper()
	var evs []keyserver.AuditEvent
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		evs = append(evs, decodeJSON[keyserver.AuditEvent](t, sc.Bytes()))
	}
	return evs
}

// gatedStore is the in-memory store with two hooks: pruned is closed once
// the prune loop's first round has listed the tokens that are due (so no
// later prune can race a test), and onGet, when set, runs before every Get.
type gatedStore struct {
	*store.Memory
	onGet  func(key string)
	once   sync.Once
	pruned chan struct{}
}

func (s *gatedStore) Get(ctx context.Context, key string) ([]byte, error) {
	if s.onGet != nil {
		s.onGet(key)
	}
	return s.Memory.Get(ctx, key)
}

func (s *gatedStore) ListPage(ctx context.Context, prefix, after string, limit int) ([]store.KV, error) {
	defer func() {
		if prefix == "prune/" {
			s.once.Do(func() { close(s.pruned) })
		}
	}()
	return s.Memory.ListPage(ctx, prefix, after, limit)
}

// notifyListener reports when the server closes it.
type notifyListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *notifyListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}

type options struct {
	intermediate bool // every authority, built-in or named, signs with an intermediate
	onGet        func(key string)

	// policy is the text of the policy file, written to policy.yaml in a
	// temporary directory with files (by path relative to it) beside it;
	// "" runs without a policy. authorities are generated as named
	// authorities into that directory's authorities/<name>.
	policy      string
	files       map[string]string
	authorities []string

	maxInFlight, maxQueue int // load shedding; 0: the defaults
	profiling             bool

	acme   *keyserver.ACMEConfig
	http01 net.Listener // served with ServeHTTP01 while the server runs
	dns    bool         // serve ServeDNS on loopback (harness.dnsAddr)
}

// harness is a keyserver serving HTTPS on loopback, in process.
type harness struct {
	clock   *fakeClock
	auths   *keyserver.Authorities // the server's, on the fake clock
	store   *gatedStore
	audit   *auditBuffer
	addr    string
	dnsAddr string       // with options.dns
	admin   *http.Client // a valid administrator
	anon    *http.Client // no client certificate

	closed   <-chan struct{}    // closed once Serve has closed its listener
	cancel   context.CancelFunc // what SIGTERM does
	served   <-chan struct{}    // closed once Serve has returned
	serveErr error              // what Serve returned, once served is closed

	issued []tokens.Token // every token issued: none may reach the audit log

	policyFile string                          // "" without a policy
	named      map[string]*authority.Authority // the named authorities, as generated
	cgcLife    time.Duration                   // what a new CGC lives: the policy's, or cgcLifetime
}

func start(t *testing.T, opts options) *harness {
	t.Helper()
	clock := &fakeClock{now: time.Now().UTC().Truncate(time.Second)}
	auths, err := keyserver.GenerateAuthorities("", opts.intermediate)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []**authority.Authority{&auths.KeyGranting, &auths.Server, &auths.Admin} {
		*a = (*a).WithClock(clock.Now)
	}
	h := &harness{
		clock:   clock,
		auths:   auths,
		store:   &gatedStore{Memory: store.NewMemory(), onGet: opts.onGet, pruned: make(chan struct{})},
		audit:   &auditBuffer{},
		named:   map[string]*authority.Authority{},
		cgcLife: cgcLifetime,
	}
	dir := t.TempDir()
	for _, name := range opts.authorities {
		a, err := authority.Generate(authority.Config{Name: "test " + name, Intermediate: opts.intermediate, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Save(filepath.Join(dir, "authorities", name)); err != nil {
			t.Fatal(err)
		}
		h.named[name] = a
	}
	for name, content := range opts.files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, name, content)
	}
	if opts.policy != "" {
		h.policyFile = writeFile(t, dir, "policy.yaml", opts.policy)
	}
	srv, err := keyserver.New(keyserver.Config{
		Names:         []string{"127.0.0.1"},
		KeyGranting:   auths.KeyGranting,
		Server:        auths.Server,
		Admin:         auths.Admin,
		Store:         h.store,
		PolicyFile:    h.policyFile,
		AuthorityDir:  filepath.Join(dir, "authorities"),
		CGCLifetime:   cgcLifetime,
		PruneInterval: time.Hour, // one round at start, then none while a test runs
		MaxInFlight:   opts.maxInFlight,
		MaxQueue:      opts.maxQueue,
		Profiling:     opts.profiling,
		ACME:          opts.acme,
		Audit:         h.audit,
		Logger:        slog.New(slog.DiscardHandler),
		Now:           clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if h.policyFile != "" {
		h.policyInForce(t)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nl := &notifyListener{Listener: l, closed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	h.addr, h.closed, h.cancel, h.served = l.Addr().String(), nl.closed, cancel, served
	go func() {
		h.serveErr = srv.Serve(ctx, nl)
		close(served)
	}()
	if opts.dns {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tl, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		h.dnsAddr = pc.LocalAddr().String()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := srv.ServeDNS(ctx, pc, tl); err != nil {
				t.Errorf("ServeDNS: %v", err)
			}
		}()
		t.Cleanup(func() { cancel(); <-done })
	}
	if opts.http01 != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := srv.ServeHTTP01(ctx, opts.http01); err != nil {
				t.Errorf("ServeHTTP01: %v", err)
			}
		}()
		t.Cleanup(func() { cancel(); <-done })
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
	})
	select {
	case <-h.store.pruned:
	case <-served:
		t.Fatalf("Serve: %v", h.serveErr)
	}
	h.anon = h.client(t)
	h.admin = h.client(t, h.adminCert(t, keyserver.AdminCertLifetime, x509.ExtKeyUsageClientAuth))
	t.Cleanup(func() { h.checkNoSecretAudited(t) })
	return h
}

// policyInForce notes what the policy file, just put in force, sets the
// CGC lifetime to: checkCGC expects it from then on.
func (h *harness) policyInForce(t *testing.T) {
	t.Helper()
	p, err := policy.Load(h.policyFile)
	if err != nil {
		t.Fatal(err)
	}
	h.cgcLife = p.CGCLifetime()
}

// stop is SIGTERM: it cancels Serve and returns what Serve returned.
func (h *harness) stop() error {
	h.cancel()
	<-h.served
	return h.serveErr
}

func (h *harness) checkNoSecretAudited(t *testing.T) {
	log := h.audit.String()
	for _, tok := range h.issued {
		for _, s := range []string{tok.Secret, base64.StdEncoding.EncodeToString(tok.Hash())} {
			if strings.Contains(log, s) {
				t.Errorf("the audit log holds the secret (or its hash) of token %s:\n%s", tok.ID, log)
			}
		}
	}
}

func (h *harness) tlsConfig(certs ...tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(h.auths.Server.Root())
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, Certificates: certs, Time: h.clock.Now}
}

func (h *harness) client(t *testing.T, certs ...tls.Certificate) *http.Client {
	tr := &http.Transport{TLSClientConfig: h.tlsConfig(certs...)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func (h *harness) url(path string) string { return "https://" + h.addr + path }

// call sends a request (no body when body is nil) and reads the answer.
func (h *harness) call(t *testing.T, c *http.Client, method, path string, body []byte) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, h.url(path), r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", api.ContentJSON)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp, got
}

func (h *harness) snapshot(t *testing.T) []store.KV {
	t.Helper()
	kvs, err := h.store.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

func (h *harness) sameStore(t *testing.T, before []store.KV) {
	t.Helper()
	after := h.snapshot(t)
	if !slices.EqualFunc(before, after, func(a, b store.KV) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
		t.Errorf("the store changed:\nbefore %s\nafter  %s", dump(before), dump(after))
	}
}

func dump(kvs []store.KV) string {
	var b strings.Builder
	for _, kv := range kvs {
		b.WriteString("\n  " + kv.Key + " = " + string(kv.Value))
	}
	return b.String()
}

// mark is where the audit log stands now.
func (h *harness) mark(t *testing.T) int { return len(h.audit.events(t)) }

// event checks that exactly the event name (none when name is "") was
// audited since mark, and returns it.
func (h *harness) event(t *testing.T, mark int, name string) keyserver.AuditEvent {
	t.Helper()
	evs := h.audit.events(t)[mark:]
	var names []string
	for _, e := range evs {
		names = append(names, e.Event)
	}
	switch {
	case name == "" && len(evs) == 0:
		return keyserver.AuditEvent{}
	case name != "" && len(evs) == 1 && evs[0].Event == name:
		return evs[0]
	}
	t.Errorf("audited %q, want [%s]", names, name)
	return keyserver.AuditEvent{}
}

// refusal is how a request must be refused.
type refusal struct {
	status int
	code   string
	event  string // the audit event written; "" when none is
}

type denial struct {
	header http.Header
	body   []byte
	err    api.Error
	event  keyserver.AuditEvent
}

// refused sends a request that must be refused as want says, with the
// store left exactly as it was.
func (h *harness) refused(t *testing.T, c *http.Client, method, path string, body []byte, want refusal) denial {
	t.Helper()
	before, mark := h.snapshot(t), h.mark(t)
	resp, got := h.call(t, c, method, path, body)
	d := denial{header: resp.Header, body: got, err: wantError(t, resp, got, want.status, want.code)}
	h.sameStore(t, before)
	d.event = h.event(t, mark, want.event)
	if want.event != "" && d.event.Code != want.code {
		t.Errorf("audited code %q, want %q", d.event.Code, want.code)
	}
	return d
}

// wantError checks an error answer: status, JSON body and stable code.
func wantError(t *testing.T, resp *http.Response, body []byte, status int, code string) api.Error {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("%s %s: status %d, want %d (body %s)", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != api.ContentJSON {
		t.Errorf("Content-Type %q, want %q", ct, api.ContentJSON)
	}
	e := decodeJSON[api.ErrorBody](t, body).Error
	if e.Code != code || e.Message == "" {
		t.Errorf("error %+v, want code %q and a message", e, code)
	}
	return e
}

// want checks a success answer and decodes its body.
func want[T any](t *testing.T, resp *http.Response, body []byte, status int) T {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: status %d, want %d (body %s)", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != api.ContentJSON {
		t.Errorf("Content-Type %q, want %q", ct, api.ContentJSON)
	}
	return decodeJSON[T](t, body)
}

// decodeJSON decodes exactly one value, refusing unknown fields.
func decodeJSON[T any](t *testing.T, data []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %T from %s: %v", v, data, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("trailing data after %T in %s", v, data)
	}
	return v
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrDER(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func csrPEM(t *testing.T, key crypto.Signer) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER(t, key)}))
}

func parsePEMCerts(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	rest := []byte(s)
	for len(bytes.TrimSpace(rest)) > 0 {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil || b.Type != "CERTIFICATE" {
			t.Fatalf("not a PEM certificate: %q", rest)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

func tlsCert(key crypto.Signer, leaf *x509.Certificate, chain []*x509.Certificate) tls.Certificate {
	c := tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, ic := range chain {
		c.Certificate = append(c.Certificate, ic.Raw)
	}
	return c
}

func (h *harness) adminCert(t *testing.T, lifetime time.Duration, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key := newKey(t)
	cert, err := h.auths.Admin.Sign(authority.Request{PublicKey: key.Public(), CommonName: adminName, ExtKeyUsage: []x509.ExtKeyUsage{usage}, Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(key, cert, h.auths.Admin.Chain())
}

// issueToken has the administrator issue a token through the API.
func (h *harness) issueToken(t *testing.T, node string, ttl time.Duration, ips ...string) api.TokenResponse {
	t.Helper()
	return h.issueTokenFor(t, api.TokenRequest{Node: node, TTL: api.Duration(ttl), IPs: ips})
}

// issueTokenFor is issueToken for any request (groups, too).
func (h *harness) issueTokenFor(t *testing.T, req api.TokenRequest) api.TokenResponse {
	t.Helper()
	node := req.Node
	mark := h.mark(t)
	resp, body := h.call(t, h.admin, http.MethodPost, api.PathTokens, mustJSON(t, req))
	tr := want[api.TokenResponse](t, resp, body, http.StatusCreated)
	tok, err := tokens.Parse(tr.Token)
	if err != nil {
		t.Fatal(err)
	}
	h.issued = append(h.issued, tok)
	groups := slices.Compact(slices.Sorted(slices.Values(req.Groups)))
	if i := tr.Info; i.ID != tok.ID || i.Node != node || i.State != string(tokens.StatePending) || i.Creator != adminName || !slices.Equal(i.Groups, groups) {
		t.Errorf("token info %+v, want pending token %s for %s by %s, groups %q", i, tok.ID, node, adminName, groups)
	}
	if ev := h.event(t, mark, keyserver.EventTokenIssue); ev.Actor != "admin:"+adminName || ev.TokenID != tok.ID || ev.Node != node {
		t.Errorf("audited %+v, want %s's token %s for %s", ev, adminName, tok.ID, node)
	}
	return tr
}

func admitBody(t *testing.T, token, node string, key crypto.Signer) []byte {
	return mustJSON(t, api.AdmitRequest{Token: token, Node: node, CSR: csrPEM(t, key)})
}

func renewBody(t *testing.T, key crypto.Signer) []byte {
	return mustJSON(t, api.RenewRequest{CSR: csrPEM(t, key)})
}

// node is a node admitted through the API.
type node struct {
	name  string
	token api.TokenResponse
	key   crypto.Signer
	cgc   api.CertificateResponse
}

// enroll issues a token for name and admits a node with it.
func (h *harness) enroll(t *testing.T, name string) node {
	t.Helper()
	return h.enrollWith(t, api.TokenRequest{Node: name})
}

// enrollWith is enroll with a token issued for req.
func (h *harness) enrollWith(t *testing.T, req api.TokenRequest) node {
	t.Helper()
	name := req.Node
	n := node{name: name, token: h.issueTokenFor(t, req), key: newKey(t)}
	mark := h.mark(t)
	resp, body := h.call(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, n.token.Token, name, n.key))
	n.cgc = want[api.CertificateResponse](t, resp, body, http.StatusOK)
	h.checkCGC(t, n.cgc, name, n.key)
	if ev := h.event(t, mark, keyserver.EventAdmit); ev.Node != name || ev.TokenID != n.token.Info.ID || ev.Serial != n.cgc.Serial {
		t.Errorf("audited %+v, want %s admitted with token %s, serial %s", ev, name, n.token.Info.ID, n.cgc.Serial)
	}
	return n
}

// checkCGC checks a certificate answer: a CGC naming the node, for key,
// issued now by the key-granting authority and served with its chain.
func (h *harness) checkCGC(t *testing.T, cr api.CertificateResponse, name string, key crypto.Signer) {
	t.Helper()
	certs := parsePEMCerts(t, cr.Certificate)
	if len(certs) != 1 {
		t.Fatalf("certificate holds %d certificates, want the leaf alone", len(certs))
	}
	leaf := certs[0]
	if want := string(authority.EncodePEM(h.auths.KeyGranting.Chain()...)); cr.Chain != want {
		t.Errorf("chain %q, want %q", cr.Chain, want)
	}
	inter := x509.NewCertPool()
	for _, c := range parsePEMCerts(t, cr.Chain) {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.auths.KeyGranting.Roots(), Intermediates: inter, CurrentTime: h.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("CGC does not verify against the key-granting root: %v", err)
	}
	if got, err := admission.NodeName(leaf); err != nil || got != name || cr.Node != name {
		t.Errorf("CGC names %q (%v), answer names %q; want %q", got, err, cr.Node, name)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("CGC is not for the key in the CSR")
	}
	if cr.Serial != authority.SerialText(leaf) {
		t.Errorf("serial %q, want %q", cr.Serial, authority.SerialText(leaf))
	}
	if want := h.clock.Now().Add(h.cgcLife); !leaf.NotAfter.Equal(want) || !cr.NotAfter.Equal(leaf.NotAfter) || !cr.NotBefore.Equal(leaf.NotBefore) {
		t.Errorf("answer valid %v to %v, certificate %v to %v, want until %v", cr.NotBefore, cr.NotAfter, leaf.NotBefore, leaf.NotAfter, want)
	}
}

// nodeClient is a client presenting a CGC.
func (h *harness) nodeClient(t *testing.T, key crypto.Signer, cr api.CertificateResponse) *http.Client {
	t.Helper()
	return h.client(t, tlsCert(key, parsePEMCerts(t, cr.Certificate)[0], parsePEMCerts(t, cr.Chain)))
}

// renew renews n's CGC for a new key, over mutual TLS with its current one.
func (h *harness) renew(t *testing.T, n node) node {
	t.Helper()
	next := node{name: n.name, token: n.token, key: newKey(t)}
	mark := h.mark(t)
	resp, body := h.call(t, h.nodeClient(t, n.key, n.cgc), http.MethodPost, api.PathRenew, renewBody(t, next.key))
	next.cgc = want[api.CertificateResponse](t, resp, body, http.StatusOK)
	h.checkCGC(t, next.cgc, n.name, next.key)
	if next.cgc.Serial == n.cgc.Serial {
		t.Errorf("renewal kept serial %s", n.cgc.Serial)
	}
	ev := h.event(t, mark, keyserver.EventRenew)
	if ev.Actor != "node:"+n.name || ev.Serial != next.cgc.Serial || !strings.Contains(ev.Reason, n.cgc.Serial) {
		t.Errorf("audited %+v, want %s renewed from %s to %s", ev, n.name, n.cgc.Serial, next.cgc.Serial)
	}
	return next
}

// self is GET /v1/node with n's CGC, which must be accepted.
func (h *harness) self(t *testing.T, n node) api.NodeInfo {
	t.Helper()
	resp, body := h.call(t, h.nodeClient(t, n.key, n.cgc), http.MethodGet, api.PathNode, nil)
	info := want[api.NodeInfo](t, resp, body, http.StatusOK)
	if info.Name != n.name {
		t.Errorf("GET %s answered for %q, want %q", api.PathNode, info.Name, n.name)
	}
	return info
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	t.Run("healthz", func(t *testing.T) {
		resp, body := h.call(t, h.anon, http.MethodGet, api.PathHealth, nil)
		if got := want[api.Health](t, resp, body, http.StatusOK); got.Status != "ok" {
			t.Errorf("health %+v, want ok", got)
		}
	})
	notFound := refusal{http.StatusNotFound, api.CodeNotFound, ""}
	notAllowed := refusal{http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, ""}
	for _, tc := range []struct {
		name, method, path string
		want               refusal
		allow              string // a method the Allow header must name
	}{
		{"unknown authority", http.MethodGet, api.PathCA + "nope", notFound, ""},
		{"no authority", http.MethodGet, api.PathCA, notFound, ""},
		{"unknown path", http.MethodGet, "/v1/nope", notFound, ""},
		{"root", http.MethodGet, "/", notFound, ""},
		{"DELETE healthz", http.MethodDelete, api.PathHealth, notAllowed, http.MethodGet},
		{"GET admit", http.MethodGet, api.PathAdmit, notAllowed, http.MethodPost},
		{"PUT tokens", http.MethodPut, api.PathTokens, notAllowed, http.MethodPost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := h.refused(t, h.anon, tc.method, tc.path, nil, tc.want)
			if allow := d.header.Get("Allow"); !strings.Contains(allow, tc.allow) {
				t.Errorf("Allow %q, want it to name %s", allow, tc.allow)
			}
		})
	}
}

func TestCAServesPEMEndingWithRoot(t *testing.T) {
	t.Parallel()
	for _, intermediate := range []bool{false, true} {
		h := start(t, options{intermediate: intermediate})
		for name, a := range map[string]*authority.Authority{
			authority.KeyGranting: h.auths.KeyGranting,
			authority.Server:      h.auths.Server,
			authority.Admin:       h.auths.Admin,
		} {
			resp, body := h.call(t, h.anon, http.MethodGet, api.PathCA+name, nil)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/pem-certificate-chain" {
				t.Fatalf("%s (intermediate %v): status %d, type %q", name, intermediate, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			got := parsePEMCerts(t, string(body))
			wantCerts := append(slices.Clone(a.Chain()), a.Root())
			if !slices.EqualFunc(got, wantCerts, (*x509.Certificate).Equal) {
				t.Errorf("%s (intermediate %v): served %d certificates, want the chain then the root (%d)", name, intermediate, len(got), len(wantCerts))
			}
		}
	}
}

func TestServerTLS(t *testing.T) {
	t.Parallel()
	for _, intermediate := range []bool{false, true} {
		h := start(t, options{intermediate: intermediate})
		handshake := func(cfg *tls.Config) (tls.ConnectionState, error) {
			conn, err := tls.Dial("tcp", h.addr, cfg)
			if err != nil {
				return tls.ConnectionState{}, err
			}
			defer conn.Close()
			return conn.ConnectionState(), nil
		}
		cs, err := handshake(h.tlsConfig())
		if err != nil {
			t.Fatal(err)
		}
		peer := cs.PeerCertificates
		if cs.Version != tls.VersionTLS13 {
			t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(cs.Version))
		}
		if !peer[len(peer)-1].Equal(h.auths.Server.Root()) || len(peer) != 2+len(h.auths.Server.Chain()) {
			t.Errorf("intermediate %v: served %d certificates, want leaf, chain and the server root last", intermediate, len(peer))
		}
		if ips := peer[0].IPAddresses; len(ips) != 1 || !ips[0].Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("server certificate for %v, want 127.0.0.1", ips)
		}

		old := h.tlsConfig()
		old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if _, err := handshake(old); err == nil || !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("TLS 1.2 handshake: %v, want a protocol version failure", err)
		}

		// Two thirds into its 7-day life the certificate is issued afresh.
		h.clock.Advance(5 * 24 * time.Hour)
		renewed, err := handshake(h.tlsConfig())
		if err != nil {
			t.Fatal(err)
		}
		if leaf := renewed.PeerCertificates[0]; leaf.Equal(peer[0]) || !leaf.NotBefore.Equal(h.clock.Now().Add(-authority.Backdate)) {
			t.Errorf("after 5 days the server still serves the certificate from %v", leaf.NotBefore)
		}
	}
}

// TestAdminRefusals: every admin endpoint refuses anyone but a current
// administrator, before doing anything.
func TestAdminRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		client func(t *testing.T, h *harness, n node) *http.Client
		want   refusal
		claim  string // what the refused certificate claimed: in the reason, never as the actor
	}{
		{"no certificate", func(t *testing.T, h *harness, n node) *http.Client { return h.anon },
			refusal{http.StatusUnauthorized, api.CodeCertRequired, keyserver.EventAuthDeny}, ""},
		{"node CGC", func(t *testing.T, h *harness, n node) *http.Client { return h.nodeClient(t, n.key, n.cgc) },
			refusal{http.StatusForbidden, api.CodeCertInvalid, keyserver.EventAuthDeny}, "web1"},
		{"admin certificate without client auth", func(t *testing.T, h *harness, n node) *http.Client {
			return h.client(t, h.adminCert(t, time.Hour, x509.ExtKeyUsageServerAuth))
		}, refusal{http.StatusForbidden, api.CodeCertInvalid, keyserver.EventAuthDeny}, adminName},
		{"expired admin certificate", func(t *testing.T, h *harness, n node) *http.Client {
			c := h.client(t, h.adminCert(t, time.Hour, x509.ExtKeyUsageClientAuth))
			h.clock.Advance(2 * time.Hour)
			return c
		}, refusal{http.StatusUnauthorized, api.CodeCertExpired, keyserver.EventAuthDeny}, adminName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, options{})
			n := h.enroll(t, "web1")
			pending := h.issueToken(t, "web2", 0)
			c := tc.client(t, h, n)
			for _, ep := range []struct {
				method, path string
				body         []byte
			}{
				{http.MethodPost, api.PathTokens, mustJSON(t, api.TokenRequest{Node: "web3"})},
				{http.MethodGet, api.PathTokens, nil},
				{http.MethodPost, api.PathTokens + "/" + pending.Info.ID + api.PathRevoke, nil},
				{http.MethodGet, api.PathNodes, nil},
				{http.MethodPost, api.PathNodes + "/web1" + api.PathRevoke, nil},
			} {
				d := h.refused(t, c, ep.method, ep.path, ep.body, tc.want)
				if ev := d.event; ev.Actor != "" || ev.Node != "" || !strings.Contains(ev.Reason, ep.method+" "+ep.path) || !strings.Contains(ev.Reason, `"`+tc.claim+`"`) && tc.claim != "" {
					t.Errorf("%s %s: audited %+v, want no actor or node, and the request and the claim %q in the reason", ep.method, ep.path, ev, tc.claim)
				}
			}
		})
	}
}

func TestAdminManagesTokensAndNodes(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	web1 := h.enroll(t, "web1") // a redeemed token: its key hash and certificate are stored
	tr := h.issueToken(t, "web2", 30*time.Minute)
	if want := h.clock.Now().Add(30 * time.Minute); !tr.Info.Expires.Equal(want) {
		t.Errorf("token expires %v, want %v", tr.Info.Expires, want)
	}

	list := func(t *testing.T) map[string]api.TokenInfo {
		t.Helper()
		resp, body := h.call(t, h.admin, http.MethodGet, api.PathTokens, nil)
		for _, secret := range []string{`"hash"`, `"key_hash"`, `"cert"`, tr.Token, web1.token.Token} {
			if bytes.Contains(body, []byte(secret)) {
				t.Errorf("token list shows %s: %s", secret, body)
			}
		}
		for _, tok := range h.issued {
			if bytes.Contains(body, []byte(tok.Secret)) || bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(tok.Hash()))) {
				t.Errorf("token list shows the secret of token %s: %s", tok.ID, body)
			}
		}
		out := map[string]api.TokenInfo{}
		for _, i := range want[api.TokenList](t, resp, body, http.StatusOK).Tokens {
			out[i.ID] = i
		}
		return out
	}
	states := func(t *testing.T, want map[string]string) {
		t.Helper()
		got := list(t)
		for id, state := range want {
			if got[id].State != state {
				t.Errorf("token %s is %q, want %q", id, got[id].State, state)
			}
		}
	}
	states(t, map[string]string{tr.Info.ID: "pending", web1.token.Info.ID: "redeemed"})

	mark := h.mark(t)
	resp, body := h.call(t, h.admin, http.MethodPost, api.PathTokens+"/"+tr.Info.ID+api.PathRevoke, nil)
	if got := want[api.TokenInfo](t, resp, body, http.StatusOK); got.State != "revoked" {
		t.Errorf("revoked token is %q", got.State)
	}
	if ev := h.event(t, mark, keyserver.EventTokenRevoke); ev.Actor != "admin:"+adminName || ev.TokenID != tr.Info.ID || ev.Node != "web2" {
		t.Errorf("audited %+v, want %s revoking %s", ev, adminName, tr.Info.ID)
	}
	states(t, map[string]string{tr.Info.ID: "revoked"})

	resp, body = h.call(t, h.admin, http.MethodGet, api.PathNodes, nil)
	nodes := want[api.NodeList](t, resp, body, http.StatusOK).Nodes
	if len(nodes) != 1 || nodes[0].Name != "web1" || nodes[0].Serial != web1.cgc.Serial || nodes[0].Revoked {
		t.Errorf("nodes %+v, want web1 with serial %s", nodes, web1.cgc.Serial)
	}

	// Revoking a node revokes its pending tokens, so none can bring it back.
	again := h.issueToken(t, "web1", 0)
	mark = h.mark(t)
	resp, body = h.call(t, h.admin, http.MethodPost, api.PathNodes+"/web1"+api.PathRevoke, nil)
	if got := want[api.NodeInfo](t, resp, body, http.StatusOK); !got.Revoked || !got.RevokedAt.Equal(h.clock.Now()) {
		t.Errorf("revoked node %+v", got)
	}
	if ev := h.event(t, mark, keyserver.EventNodeRevoke); ev.Actor != "admin:"+adminName || ev.Node != "web1" || ev.Serial != web1.cgc.Serial {
		t.Errorf("audited %+v, want %s revoking web1 (serial %s)", ev, adminName, web1.cgc.Serial)
	}
	states(t, map[string]string{again.Info.ID: "revoked"})
	h.refused(t, h.nodeClient(t, web1.key, web1.cgc), http.MethodGet, api.PathNode, nil,
		refusal{http.StatusForbidden, api.CodeNodeRevoked, keyserver.EventAuthDeny})
}

func TestAdminRequestValidation(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	web1 := h.enroll(t, "web1")
	h.issueToken(t, "web2", 0)
	bad := refusal{http.StatusBadRequest, api.CodeBadRequest, keyserver.EventAdminDeny}
	notFound := refusal{http.StatusNotFound, api.CodeNotFound, keyserver.EventAdminDeny}
	revokeToken := func(id string) string { return api.PathTokens + "/" + id + api.PathRevoke }
	for _, tc := range []struct {
		name, path string
		body       string
		want       refusal
	}{
		{"malformed JSON", api.PathTokens, `{"node":`, bad},
		{"unknown field", api.PathTokens, `{"node":"web3","role":"admin"}`, bad},
		{"invalid node name", api.PathTokens, `{"node":"Web_3"}`, bad},
		{"lifetime over the maximum", api.PathTokens, `{"node":"web3","ttl":"1000h"}`, bad},
		{"negative lifetime", api.PathTokens, `{"node":"web3","ttl":"-1h"}`, bad},
		{"unparsable lifetime", api.PathTokens, `{"node":"web3","ttl":"soon"}`, bad},
		{"bad address", api.PathTokens, `{"node":"web3","ips":["nope"]}`, bad},
		{"revoke unknown token", revokeToken("0123456789abcdef"), "", notFound},
		{"revoke malformed token id", revokeToken("NOT-AN-ID"), "", bad},
		{"revoke redeemed token", revokeToken(web1.token.Info.ID), "", bad},
		{"revoke unknown node", api.PathNodes + "/web9" + api.PathRevoke, "", notFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			h.refused(t, h.admin, http.MethodPost, tc.path, body, tc.want)
		})
	}
}

func TestAdmitAndReplay(t *testing.T) {
	t.Parallel()
	for _, intermediate := range []bool{false, true} {
		h := start(t, options{intermediate: intermediate})
		n := h.enroll(t, "web1")
		if _, err := h.store.Get(t.Context(), "nodes/web1"); err != nil {
			t.Errorf("no node record after admission: %v", err)
		}
		if info := h.self(t, n); info.Serial != n.cgc.Serial {
			t.Errorf("node record has serial %s, want %s", info.Serial, n.cgc.Serial)
		}

		// The answer was lost: the node retries with the same token and key.
		h.clock.Advance(grace - time.Minute)
		before, mark := h.snapshot(t), h.mark(t)
		resp, body := h.call(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, n.token.Token, "web1", n.key))
		again := want[api.CertificateResponse](t, resp, body, http.StatusOK)
		if again.Serial != n.cgc.Serial || again.Certificate != n.cgc.Certificate || again.Chain != n.cgc.Chain {
			t.Errorf("replay answered serial %s, want the same certificate (serial %s)", again.Serial, n.cgc.Serial)
		}
		h.sameStore(t, before)
		if ev := h.event(t, mark, keyserver.EventAdmitReplay); ev.Node != "web1" || ev.Serial != n.cgc.Serial || ev.TokenID != n.token.Info.ID {
			t.Errorf("audited %+v, want a replay of %s", ev, n.cgc.Serial)
		}
	}
}

// TestTokenRefusalsAreUniform: whatever is wrong with a token, the client
// is told the same thing; only the audit log says what it was.
func TestTokenRefusalsAreUniform(t *testing.T) {
	t.Parallel()
	type attempt struct {
		token, node string
		key         crypto.Signer
		id          string // the token id the audit log may name
	}
	pending := func(t *testing.T, h *harness, ttl time.Duration, ips ...string) attempt {
		tr := h.issueToken(t, "web1", ttl, ips...)
		return attempt{tr.Token, "web1", newKey(t), tr.Info.ID}
	}
	bodies := map[string][]byte{}
	reasons := map[string]string{}
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, h *harness) attempt
		reason string // in the audited reason
	}{
		{"unknown", func(t *testing.T, h *harness) attempt {
			tok, err := tokens.New(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			h.issued = append(h.issued, tok)
			return attempt{tok.String(), "web1", newKey(t), tok.ID}
		}, "unknown token"},
		{"malformed", func(t *testing.T, h *harness) attempt {
			return attempt{"hunter2", "web1", newKey(t), ""}
		}, "malformed token"},
		{"mistyped", func(t *testing.T, h *harness) attempt {
			a := pending(t, h, 0)
			b := []byte(a.token)
			i := len(b) - 10 // in the secret, before the check code
			if b[i] == 'a' {
				b[i] = 'b'
			} else {
				b[i] = 'a'
			}
			a.token, a.id = string(b), ""
			return a
		}, "check code mismatch"},
		{"expired", func(t *testing.T, h *harness) attempt {
			a := pending(t, h, time.Minute)
			h.clock.Advance(time.Minute)
			return a
		}, "token expired"},
		{"revoked", func(t *testing.T, h *harness) attempt {
			a := pending(t, h, 0)
			resp, body := h.call(t, h.admin, http.MethodPost, api.PathTokens+"/"+a.id+api.PathRevoke, nil)
			want[api.TokenInfo](t, resp, body, http.StatusOK)
			return a
		}, "token revoked"},
		{"used", func(t *testing.T, h *harness) attempt {
			n := h.enroll(t, "web1")
			h.clock.Advance(grace)
			return attempt{n.token.Token, "web1", n.key, n.token.Info.ID}
		}, "token already used"},
		{"used with another key", func(t *testing.T, h *harness) attempt {
			n := h.enroll(t, "web1")
			return attempt{n.token.Token, "web1", newKey(t), n.token.Info.ID}
		}, "with a different key"},
		{"for another node", func(t *testing.T, h *harness) attempt {
			a := pending(t, h, 0)
			a.node = "web2"
			return a
		}, "different node"},
		{"from another address", func(t *testing.T, h *harness) attempt {
			return pending(t, h, 0, "192.0.2.1")
		}, "not valid from this address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, options{})
			a := tc.setup(t, h)
			d := h.refused(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, a.token, a.node, a.key),
				refusal{http.StatusForbidden, api.CodeTokenInvalid, keyserver.EventAdmitDeny})
			bodies[tc.name] = d.body
			reasons[tc.name] = d.event.Reason
			if ev := d.event; !strings.Contains(ev.Reason, tc.reason) || ev.TokenID != a.id || ev.Node != "" || !strings.Contains(ev.Reason, `claimed node "`+a.node+`"`) {
				t.Errorf("audited %+v, want token %q, the claimed node %s in the reason (not as a node) and a reason saying %q", ev, a.id, a.node, tc.reason)
			}
		})
	}
	for name, b := range bodies {
		if !bytes.Equal(b, bodies["unknown"]) {
			t.Errorf("%s: told %s, unknown token told %s; want one answer for all", name, b, bodies["unknown"])
		}
	}
	seen := map[string]string{}
	for name, r := range reasons {
		if other, dup := seen[r]; dup {
			t.Errorf("%s and %s audited the same reason %q", name, other, r)
		}
		seen[r] = name
	}
}

// TestRequestBodies: admit and renew read one bounded JSON object, and
// check the CSR's signature and key.
func TestRequestBodies(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	n := h.enroll(t, "web1")
	tok := h.issueToken(t, "web2", 0)
	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	badSig := csrDER(t, newKey(t))
	badSig[len(badSig)-1] ^= 1

	bad := refusal{http.StatusBadRequest, api.CodeBadRequest, ""}
	csrInvalid := refusal{http.StatusBadRequest, api.CodeCSRInvalid, ""}
	keyRejected := refusal{http.StatusBadRequest, api.CodeKeyRejected, ""}
	tooLarge := refusal{http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, ""}
	for _, ep := range []struct {
		path   string
		client *http.Client
		event  string
		body   func(csr string) []byte // a well-formed request carrying csr
	}{
		{api.PathAdmit, h.anon, keyserver.EventAdmitDeny, func(csr string) []byte {
			return mustJSON(t, api.AdmitRequest{Token: tok.Token, Node: "web2", CSR: csr})
		}},
		{api.PathRenew, h.nodeClient(t, n.key, n.cgc), keyserver.EventRenewDeny, func(csr string) []byte {
			return mustJSON(t, api.RenewRequest{CSR: csr})
		}},
	} {
		good := ep.body(csrPEM(t, newKey(t)))
		for _, tc := range []struct {
			name string
			body []byte
			want refusal
		}{
			{"malformed JSON", []byte("{not json}"), bad},
			{"wrong type", []byte(`{"csr":5}`), bad},
			{"unknown field", append([]byte(`{"admin":true,`), good[1:]...), bad},
			{"empty body", []byte{}, bad},
			{"truncated", good[:len(good)/2], bad},
			{"trailing garbage", append(slices.Clone(good), 'x'), bad},
			{"two objects", append(slices.Clone(good), good...), bad},
			{"over the limit", ep.body(strings.Repeat("A", api.MaxBodyBytes)), tooLarge},
			{"over the limit in trailing space", append(slices.Clone(good), bytes.Repeat([]byte(" "), api.MaxBodyBytes)...), tooLarge},
			{"CSR with a bad signature", ep.body(pemOf("CERTIFICATE REQUEST", badSig)), csrInvalid},
			{"certificate instead of a CSR", ep.body(n.cgc.Certificate), csrInvalid},
			{"not PEM nor DER", ep.body("hello"), csrInvalid},
			{"RSA 1024 key", ep.body(csrPEM(t, weakRSA)), keyRejected},
			{"P-224 key", ep.body(csrPEM(t, p224)), keyRejected},
		} {
			t.Run(ep.path+"/"+tc.name, func(t *testing.T) {
				tc.want.event = ep.event
				d := h.refused(t, ep.client, http.MethodPost, ep.path, tc.body, tc.want)
				if len(d.event.Reason) > 1000 {
					t.Errorf("audited reason of %d bytes: the request is echoed", len(d.event.Reason))
				}
			})
		}
	}
	if info := h.self(t, n); info.PreviousSerial != "" || info.Renewals != 0 {
		t.Errorf("refused renewals left a trace: %+v", info)
	}
}

// TestRenewSupersedesAtOnce: a renewal makes the new CGC current as it
// issues it; the old one may then only repeat that renewal for the same
// key (an answer lost in transit), and anything else it tries is refused
// and audited as key theft.
func TestRenewSupersedesAtOnce(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	old := h.enroll(t, "web1")
	next := h.renew(t, old)
	if info := h.self(t, next); info.Serial != next.cgc.Serial || info.PreviousSerial != old.cgc.Serial || info.Renewals != 1 {
		t.Errorf("after renewal: %+v, want serial %s, previous %s", info, next.cgc.Serial, old.cgc.Serial)
	}
	superseded := refusal{http.StatusForbidden, api.CodeCertSuperseded, keyserver.EventKeyTheft}
	for _, ep := range []struct {
		name, method, path string
		body               []byte
	}{
		{"node", http.MethodGet, api.PathNode, nil},
		{"renew for another key", http.MethodPost, api.PathRenew, renewBody(t, newKey(t))},
		{"renew for its own key", http.MethodPost, api.PathRenew, renewBody(t, old.key)},
	} {
		d := h.refused(t, h.nodeClient(t, old.key, old.cgc), ep.method, ep.path, ep.body, superseded)
		if ev := d.event; ev.Node != "web1" || ev.Serial != old.cgc.Serial {
			t.Errorf("%s: audited %+v, want web1's old serial %s", ep.name, ev, old.cgc.Serial)
		}
	}

	// The answer to the renewal was lost: the old CGC repeats it for the
	// same key and gets a certificate for that key; the one lost is dead.
	mark := h.mark(t)
	resp, body := h.call(t, h.nodeClient(t, old.key, old.cgc), http.MethodPost, api.PathRenew, renewBody(t, next.key))
	again := node{name: "web1", token: old.token, key: next.key, cgc: want[api.CertificateResponse](t, resp, body, http.StatusOK)}
	h.checkCGC(t, again.cgc, "web1", next.key)
	if ev := h.event(t, mark, keyserver.EventRenew); ev.Serial != again.cgc.Serial || !strings.Contains(ev.Reason, "repeats") {
		t.Errorf("audited %+v, want a repeated renewal", ev)
	}
	if info := h.self(t, again); info.Serial != again.cgc.Serial || info.PreviousSerial != old.cgc.Serial || info.Renewals != 2 {
		t.Errorf("after the repeat: %+v, want serial %s, previous %s", info, again.cgc.Serial, old.cgc.Serial)
	}
	h.refused(t, h.nodeClient(t, next.key, next.cgc), http.MethodGet, api.PathNode, nil, superseded)

	h.renew(t, again) // the current one renews in turn, which retires old for good
	h.refused(t, h.nodeClient(t, old.key, old.cgc), http.MethodPost, api.PathRenew, renewBody(t, next.key), superseded)
}

// TestNodeRefusals: the node endpoints accept only a node's current CGC.
func TestNodeRefusals(t *testing.T) {
	t.Parallel()
	authDeny := func(status int, code string) refusal { return refusal{status, code, keyserver.EventAuthDeny} }
	for _, tc := range []struct {
		name   string
		client func(t *testing.T, h *harness, n node) *http.Client
		want   refusal
	}{
		{"no certificate", func(t *testing.T, h *harness, n node) *http.Client { return h.anon },
			authDeny(http.StatusUnauthorized, api.CodeCertRequired)},
		{"admin certificate", func(t *testing.T, h *harness, n node) *http.Client { return h.admin },
			authDeny(http.StatusForbidden, api.CodeCertInvalid)},
		{"expired CGC", func(t *testing.T, h *harness, n node) *http.Client {
			h.clock.Advance(cgcLifetime + time.Second)
			return h.nodeClient(t, n.key, n.cgc)
		}, authDeny(http.StatusUnauthorized, api.CodeCertExpired)},
		{"superseded CGC", func(t *testing.T, h *harness, n node) *http.Client {
			h.self(t, h.renew(t, n))
			return h.nodeClient(t, n.key, n.cgc)
		}, refusal{http.StatusForbidden, api.CodeCertSuperseded, keyserver.EventKeyTheft}},
		{"revoked node", func(t *testing.T, h *harness, n node) *http.Client {
			resp, body := h.call(t, h.admin, http.MethodPost, api.PathNodes+"/"+n.name+api.PathRevoke, nil)
			want[api.NodeInfo](t, resp, body, http.StatusOK)
			return h.nodeClient(t, n.key, n.cgc)
		}, authDeny(http.StatusForbidden, api.CodeNodeRevoked)},
		{"CGC of a node not in the inventory", func(t *testing.T, h *harness, n node) *http.Client {
			key := newKey(t)
			cert, err := h.auths.KeyGranting.Sign(authority.Request{PublicKey: key.Public(), CommonName: "ghost", URIs: []*url.URL{admission.NodeURI("ghost")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			return h.client(t, tlsCert(key, cert, h.auths.KeyGranting.Chain()))
		}, authDeny(http.StatusForbidden, api.CodeCertInvalid)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, options{})
			c := tc.client(t, h, h.enroll(t, "web1"))
			h.refused(t, c, http.MethodGet, api.PathNode, nil, tc.want)
			h.refused(t, c, http.MethodPost, api.PathRenew, renewBody(t, newKey(t)), tc.want)
		})
	}
}

// TestServeDrainsOnCancel: cancelling Serve's context (what SIGTERM does)
// closes the listener at once, lets a request in flight finish, and
// Serve returns nil.
func TestServeDrainsOnCancel(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}), make(chan struct{})
	var hold sync.Once
	h := start(t, options{onGet: func(key string) {
		if strings.HasPrefix(key, "tokens/") {
			hold.Do(func() { close(entered); <-release })
		}
	}})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // runs before the harness stops the server
	tr, key := h.issueToken(t, "web1", 0), newKey(t)
	body := admitBody(t, tr.Token, "web1", key)

	type answer struct {
		status int
		body   []byte
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := h.anon.Post(h.url(api.PathAdmit), api.ContentJSON, bytes.NewReader(body))
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, b, err}
	}()

	<-entered // the admit handler is inside the store
	h.cancel()
	<-h.closed // Serve has stopped accepting
	select {
	case <-h.served:
		t.Fatalf("Serve returned (%v) with a request in flight", h.serveErr)
	default:
	}
	releaseOnce()
	a := <-answered
	if a.err != nil || a.status != http.StatusOK {
		t.Fatalf("request in flight during shutdown: status %d, %v (%s)", a.status, a.err, a.body)
	}
	h.checkCGC(t, decodeJSON[api.CertificateResponse](t, a.body), "web1", key)
	if err := h.stop(); err != nil {
		t.Fatalf("Serve returned %v, want nil", err)
	}
	if c, err := net.Dial("tcp", h.addr); err == nil {
		c.Close()
		t.Error("the listener still accepts connections after Serve returned")
	}
}

// TestNodeListStreamsPages: the inventory is sent a page (1,000) at a
// time; the answer is one JSON document holding every node, in order.
func TestNodeListStreamsPages(t *testing.T) {
	t.Parallel()
	h := start(t, options{})
	const n = 2345
	for i := range n {
		rec, err := json.Marshal(admission.Node{Name: fmt.Sprintf("n%05d.example", i), Serial: fmt.Sprintf("%032x", i), TokenID: "t"})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Put(t.Context(), h.store, fmt.Sprintf("nodes/n%05d.example", i), rec); err != nil {
			t.Fatal(err)
		}
	}
	resp, body := h.call(t, h.admin, http.MethodGet, api.PathNodes, nil)
	nodes := want[api.NodeList](t, resp, body, http.StatusOK).Nodes
	if len(nodes) != n {
		t.Fatalf("%d nodes listed, want %d", len(nodes), n)
	}
	for i, got := range nodes {
		if name := fmt.Sprintf("n%05d.example", i); got.Name != name || got.Serial != fmt.Sprintf("%032x", i) {
			t.Fatalf("node %d: %+v, want %s", i, got, name)
		}
	}
}
