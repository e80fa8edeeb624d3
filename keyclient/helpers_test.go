package keyclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyclient/clocktest"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
)

func newTestClock() *clocktest.Clock {
	return clocktest.New(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC))
}

// fakeKeyserver answers the items' calls as the keyserver would, with a
// real authority signing and a GrantInfo per grant. It stands in for the
// HTTPS layer only; the wire is tested in cmd/keyclient.
type fakeKeyserver struct {
	mu       sync.Mutex
	now      func() time.Time
	auth     *authority.Authority
	grants   map[string]*api.GrantInfo
	statics  map[string][]byte
	digest   map[string]string // overrides the digest sent
	fail     map[string]error  // by grant name: every call for it fails
	calls    map[string]int    // "grant NAME", "sign NAME", "static NAME"
	lastCSR  *x509.CertificateRequest
	lifetime time.Duration
	acme     map[string]*fakeLabel // by label + "/" + family ("" the label's first key type)
}

// fakeLabel is what the fake keyserver serves for an ACME label in one
// key type: the version, its full chain and key, with the ETag the
// keyserver gives them (of the full chain).
type fakeLabel struct {
	version   int
	fullchain []byte
	key       []byte
	// afterFullchain, when set, runs after the full chain was served
	// and before the key is: a new version landing between the two.
	afterFullchain func(*fakeLabel)
}

func (l *fakeLabel) etag() string {
	sum := sha256.Sum256(l.fullchain)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}

func newFakeKeyserver(t *testing.T, now func() time.Time) *fakeKeyserver {
	t.Helper()
	return &fakeKeyserver{
		now:      now,
		auth:     newAuthority(t, "web", now),
		grants:   map[string]*api.GrantInfo{},
		statics:  map[string][]byte{},
		digest:   map[string]string{},
		fail:     map[string]error{},
		calls:    map[string]int{},
		lifetime: 30 * 24 * time.Hour,
		acme:     map[string]*fakeLabel{},
	}
}

func newAuthority(t *testing.T, name string, now func() time.Time) *authority.Authority {
	t.Helper()
	a, err := authority.Generate(authority.Config{Name: name, Intermediate: true, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// addGrant declares an x509 grant for node web1.
func (f *fakeKeyserver) addGrant(name string, edit ...func(*api.GrantInfo)) *api.GrantInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := &api.GrantInfo{
		Name: name, Type: TypeX509, Authority: f.auth.Name(), RootPin: authority.SPKIPin(f.auth.Root()),
		Usage: "both", CommonName: "web1", DNSNames: []string{"web1", "web1.internal"},
		IPAddresses: []string{"10.0.0.1"}, KeyTypes: []string{"ecdsa-p256", "ed25519"},
	}
	for _, e := range edit {
		e(g)
	}
	f.grants[name] = g
	return g
}

func (f *fakeKeyserver) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[call]
}

func (f *fakeKeyserver) denied(call, name string) error {
	f.calls[call+" "+name]++
	return f.fail[name]
}

func grantDenied(name string) error {
	return &api.Error{Status: http.StatusForbidden, Code: api.CodeGrantDenied, Message: "grant " + name + " is not for this node"}
}

func (f *fakeKeyserver) grant(_ context.Context, name string) (*api.GrantInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.denied("grant", name); err != nil {
		return nil, err
	}
	g, ok := f.grants[name]
	if !ok {
		return nil, grantDenied(name)
	}
	cp := *g
	return &cp, nil
}

func (f *fakeKeyserver) sign(_ context.Context, name, csrPEM string) (*api.CertificateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.denied("sign", name); err != nil {
		return nil, err
	}
	g, ok := f.grants[name]
	if !ok {
		return nil, grantDenied(name)
	}
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		return nil, &api.Error{Status: 400, Code: api.CodeCSRInvalid, Message: "no PEM"}
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		return nil, &api.Error{Status: 400, Code: api.CodeCSRInvalid, Message: "bad CSR"}
	}
	f.lastCSR = csr
	req := authority.Request{
		PublicKey: csr.PublicKey, CommonName: g.CommonName, Lifetime: f.lifetime,
		DNSNames: append(append([]string{}, g.DNSNames...), csr.DNSNames...),
		URIs:     append([]*url.URL{}, csr.URIs...),
	}
	for _, s := range g.IPAddresses {
		req.IPAddresses = append(req.IPAddresses, net.ParseIP(s))
	}
	req.IPAddresses = append(req.IPAddresses, csr.IPAddresses...)
	for _, s := range g.URIs {
		u, _ := url.Parse(s)
		req.URIs = append(req.URIs, u)
	}
	req.ExtKeyUsage = policy.Usage(g.Usage).ExtKeyUsage()
	cert, err := f.auth.Sign(req)
	if err != nil {
		return nil, err
	}
	return &api.CertificateResponse{
		Node: "web1", Grant: name,
		Certificate: string(authority.EncodePEM(cert)),
		Chain:       string(authority.EncodePEM(f.auth.Chain()...)),
		Root:        string(authority.EncodePEM(f.auth.Root())),
		Serial:      authority.SerialText(cert), NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
	}, nil
}

func (f *fakeKeyserver) static(_ context.Context, name string) ([]byte, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.denied("static", name); err != nil {
		return nil, "", err
	}
	body, ok := f.statics[name]
	if !ok {
		return nil, "", grantDenied(name)
	}
	d := api.Digest(body)
	if o, ok := f.digest[name]; ok {
		d = o
	}
	return bytes.Clone(body), d, nil
}

// acmeFile answers as the keyserver's /certs/ paths do: 403 for a label
// it does not serve this node, 304 for the ETag served, else the file
// with its ETag and version. Calls are counted as "acme LABEL FILE", and
// the 304 answers as "acme304 LABEL".
func (f *fakeKeyserver) acmeFile(_ context.Context, label, family, file, inm string) (*acmeAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.denied("acme", label+" "+file); err != nil {
		return nil, err
	}
	if err := f.fail[label]; err != nil {
		return nil, err
	}
	l, ok := f.acme[label+"/"+family]
	if !ok {
		return nil, &api.Error{Status: http.StatusForbidden, Code: api.CodeGrantDenied, Message: "acme certificate " + label + " is not for node web1"}
	}
	a := &acmeAnswer{ETag: l.etag(), Version: l.version}
	switch {
	case inm == a.ETag:
		f.calls["acme304 "+label]++
		a.NotModified = true
	case file == acmeFullchainFile:
		a.Body = bytes.Clone(l.fullchain)
		if hook := l.afterFullchain; hook != nil {
			hook(l)
		}
	default:
		a.Body = bytes.Clone(l.key)
	}
	return a, nil
}

// setACME makes the fake serve version v (its full chain and key) for
// label in family.
func (f *fakeKeyserver) setACME(label, family string, v int, fullchain, key []byte) *fakeLabel {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &fakeLabel{version: v, fullchain: fullchain, key: key}
	f.acme[label+"/"+family] = l
	return l
}

func (f *fakeKeyserver) setStatic(name string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statics[name] = body
}

func (f *fakeKeyserver) setFail(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = err
}

// rig is a client with items, a CGC, a hand-driven clock and a fake
// keyserver.
type rig struct {
	t     *testing.T
	clk   *clocktest.Clock
	ks    *fakeKeyserver
	cfg   *Config
	c     *Client
	dir   string // where item files go
	state string
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newRig builds a client for items (paths relative to the rig's dir are
// made absolute), holding a CGC valid for 30 days unless noCGC.
func newRig(t *testing.T, items []Item, noCGC bool) *rig {
	t.Helper()
	clk := newTestClock()
	r := &rig{t: t, clk: clk, ks: newFakeKeyserver(t, clk.Now), dir: t.TempDir()}
	r.state = filepath.Join(r.dir, "state")
	for i := range items {
		it := &items[i]
		for _, p := range []*string{&it.Key, &it.Cert, &it.Chain, &it.FullChain, &it.CA, &it.Path} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(r.dir, *p)
			}
		}
	}
	r.cfg = &Config{Node: "web1", Servers: []string{"https://127.0.0.1:1"}, TrustAnchor: pin, StateDir: r.state, Items: items}
	if !noCGC {
		writeCGC(t, r.state, "web1", clk.Now)
	}
	r.c = r.newClient()
	return r
}

// newClient starts a client on the rig's config and state, as a restart
// would: the client before it, if any, is closed first.
func (r *rig) newClient() *Client {
	r.t.Helper()
	if r.c != nil {
		r.c.Close()
	}
	c, err := New(r.cfg, Options{Clock: r.clk, Rand: bytes.NewReader(make([]byte, 32)), Logger: quietLogger(),
		MinBackoff: 5 * time.Second, MaxBackoff: 10 * time.Minute})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	c.remote = r.ks
	return c
}

func writeCGC(t *testing.T, stateDir, node string, now func() time.Time) {
	t.Helper()
	kg := newAuthority(t, "keygranting", now)
	key, _ := authority.GenerateKey(authority.ECDSAP256)
	cert, err := kg.Sign(authority.Request{PublicKey: key.Public(), CommonName: node, Lifetime: 30 * 24 * time.Hour,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := authority.EncodeKeyPEM(key)
	data := append(keyPEM, authority.EncodePEM(append([]*x509.Certificate{cert}, kg.Chain()...)...)...)
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stateDir, CGCFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pass runs one daemon pass (backoff honoured) for item i.
func (r *rig) pass(i int) ItemResult {
	r.t.Helper()
	return r.c.itemPass(context.Background(), r.c.items[i], false, false)
}

func (r *rig) path(name string) string { return filepath.Join(r.dir, name) }

func readCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCert("cert", path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func webItem() Item {
	return Item{Type: TypeX509, Grant: "web", Key: "web.key", Cert: "web.crt", Chain: "chain.crt", FullChain: "full.crt", CA: "ca.crt"}
}

func bundleItem() Item {
	return Item{Type: TypeStatic, Name: "bundle", Path: "bundle.pem"}
}
