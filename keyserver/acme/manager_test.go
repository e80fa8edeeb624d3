package acme_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/pebbletest"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// onAnswer is the store with a hook run (once) when the first challenge
// answer is stored: during an order.
type onAnswer struct {
	*store.Memory
	once sync.Once
	hook func()
}

func (s *onAnswer) Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error {
	if len(ops) > 0 && strings.HasPrefix(ops[0].Key, "acme/http01/") && !ops[0].Delete && s.hook != nil {
		s.once.Do(s.hook)
	}
	return s.Memory.Txn(ctx, conds, ops)
}

// acmeEnv is a keyserver's ACME side against a real Pebble, over HTTP-01.
type acmeEnv struct {
	pebble     *pebbletest.Pebble
	store      *onAnswer
	clock      *clock
	orders     *orderCounter
	mgr        *acme.Manager
	newManager func() *acme.Manager // another keyserver on the same store
}

type envOptions struct {
	certs   string // the policy's acme.certificates, indented
	account string // more of the account's settings, indented; $DIRECTORY is Pebble's
	// caPort, if set, is where Pebble validates http-01, instead of the
	// keyserver's listener: a front end that does not proxy the path.
	caPort int
	// dnsServer, if set, is the DNS server Pebble resolves names through
	// (for dns-01), instead of one answering 127.0.0.1 for every name.
	dnsServer string
	store     *onAnswer // default a new one
	config    func(*acme.Config)
}

func newACMEEnv(t *testing.T, certs string) *acmeEnv {
	return newACMEEnvWith(t, envOptions{certs: certs})
}

func newACMEEnvWith(t *testing.T, opt envOptions) *acmeEnv {
	t.Helper()
	st := opt.store
	if st == nil {
		st = &onAnswer{Memory: store.NewMemory()}
	}
	addr := serveHTTP01(t, st)
	_, port, _ := net.SplitHostPort(addr)
	httpPort, _ := strconv.Atoi(port)
	if opt.caPort != 0 {
		httpPort = opt.caPort
	}
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort, DNSServer: opt.dnsServer})
	pol := parsePolicy(t, pb.Directory, pb.RootsPEM, strings.ReplaceAll(opt.account, "$DIRECTORY", pb.Directory), opt.certs)
	if err := acme.CheckPolicy(pol); err != nil {
		t.Fatalf("CheckPolicy: %v", err)
	}
	c := &clock{now: time.Now()}
	e := &acmeEnv{pebble: pb, store: st, clock: c, orders: &orderCounter{}}
	e.newManager = func() *acme.Manager {
		sealer, err := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := acme.Config{
			Store: st, Sealer: sealer, Policy: func() *policy.Policy { return pol },
			HTTP01: &acme.HTTP01Provider{Store: st, ProbeAddr: addr}, Staging: time.Hour, Now: c.Now,
			Transport: e.orders.wrap,
		}
		if opt.config != nil {
			opt.config(&cfg)
		}
		mgr, err := acme.NewManager(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return mgr
	}
	e.mgr = e.newManager()
	return e
}

// obtain has the manager order the label's first version and serve it.
func (e *acmeEnv) obtain(t *testing.T, label string) *api.ACMEVersion {
	t.Helper()
	if ordered, err := e.mgr.Check(t.Context(), label); !ordered || err != nil {
		t.Fatalf("Check = %v, %v; want an order", ordered, err)
	}
	s, err := e.mgr.Status(t.Context(), label)
	if err != nil || s.Next == nil {
		t.Fatalf("Status = %+v, %v; want a next version", s, err)
	}
	e.clock.Set(s.Next.ReadyAt)
	return s.Next
}

// orderCounter watches the requests to the CA: it counts new orders,
// keeps what they replace, and can refuse renewal information (a CA that
// does not offer it, which Pebble cannot be told to be).
type orderCounter struct {
	mu       sync.Mutex
	orders   int
	replaces []string
	noARI    bool
}

func (o *orderCounter) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		o.mu.Lock()
		noARI := o.noARI
		o.mu.Unlock()
		if noARI && strings.Contains(strings.ToLower(r.URL.Path), "renewalinfo") {
			return nil, errors.New("test: renewal information is not offered")
		}
		if strings.HasSuffix(r.URL.Path, "/order-plz") && r.Body != nil {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var jws struct{ Payload string }
			var order struct{ Replaces string }
			_ = json.Unmarshal(body, &jws)
			payload, _ := base64.RawURLEncoding.DecodeString(jws.Payload)
			_ = json.Unmarshal(payload, &order)
			resp, err := next.RoundTrip(r)
			// Pebble refuses some nonces on purpose and lego retries:
			// only the orders made count.
			if err == nil && resp.StatusCode == http.StatusCreated {
				o.mu.Lock()
				o.orders++
				o.replaces = append(o.replaces, order.Replaces)
				o.mu.Unlock()
			}
			return resp, err
		}
		return next.RoundTrip(r)
	})
}

func (o *orderCounter) count() (int, []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.orders, slices.Clone(o.replaces)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// clearKeys returns the store keys whose values hold a private key in
// clear: as text, or as base64 (how JSON writes []byte) anywhere inside.
func clearKeys(t *testing.T, st *store.Memory) []string {
	t.Helper()
	kvs, err := st.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	var walk func(v any) bool
	walk = func(v any) bool {
		switch v := v.(type) {
		case string:
			b, err := base64.StdEncoding.DecodeString(v)
			return strings.Contains(v, "PRIVATE KEY") || err == nil && bytes.Contains(b, []byte("PRIVATE KEY"))
		case map[string]any:
			for _, x := range v {
				if walk(x) {
					return true
				}
			}
		case []any:
			for _, x := range v {
				if walk(x) {
					return true
				}
			}
		}
		return false
	}
	for _, kv := range kvs {
		var v any
		if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) || json.Unmarshal(kv.Value, &v) == nil && walk(v) {
			found = append(found, kv.Key)
		}
	}
	return found
}

// TestClearKeysFindsBase64: the check above sees a key written as JSON
// []byte, which the plain text search does not.
func TestClearKeysFindsBase64(t *testing.T) {
	st := store.NewMemory()
	raw, _ := json.Marshal(map[string]any{"certs": map[string]any{"rsa": map[string][]byte{"key": []byte("-----BEGIN PRIVATE KEY-----\n")}}})
	if err := store.Put(t.Context(), st, "acme/certs/x", raw); err != nil {
		t.Fatal(err)
	}
	if got := clearKeys(t, st); len(got) != 1 {
		t.Errorf("clearKeys = %v, want the record", got)
	}
}

// TestObtainEveryKeyType: a label is obtained in both key types, held back
// for the staging time (the placeholder is served meanwhile), then served:
// each chain verifies against the CA's root, each key matches its
// certificate, and no key is in the store in clear. A placeholder made
// while the orders run (front ends asking at boot) does not cost the
// orders.
func TestObtainEveryKeyType(t *testing.T) {
	e := newACMEEnv(t, "    web:\n      sni: [www.example.test]\n      to: {all: true}\n")
	other := e.newManager()
	hooked := false
	e.store.hook = func() {
		hooked = true
		if s, err := other.Get(t.Context(), "web", "ecdsa-p256"); err != nil || !s.Placeholder {
			t.Errorf("Get during the order = %v, %v; want the placeholder", s, err)
		}
	}
	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err != nil {
		t.Fatalf("Check = %v, %v; want an order", ordered, err)
	}
	if !hooked {
		t.Fatal("no placeholder was made during the order")
	}
	st, err := e.mgr.Status(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	v := st.Next
	if v == nil || v.Number != 1 || len(v.Serials) != 2 || st.OrdersToday != 2 || st.LastError != "" {
		t.Fatalf("status after the order: %+v, next %+v; want version 1 with 2 certificates, 2 orders", st, v)
	}
	if s, err := e.mgr.Get(t.Context(), "web", "ecdsa-p256"); err != nil || !s.Placeholder {
		t.Errorf("Get during the staging time = %v, %v; want the placeholder", s, err)
	}
	if got := clearKeys(t, e.store.Memory); len(got) != 0 {
		t.Errorf("private keys in clear in %v", got)
	}
	if kvs, _ := e.store.List(t.Context(), "acme/http01/"); len(kvs) != 0 {
		t.Errorf("challenge answers left in the store: %v", kvs)
	}

	e.clock.Set(v.ReadyAt)
	roots := e.pebble.IssuerRoots(t)
	for kt, want := range map[string]func(crypto.PublicKey) bool{
		"ecdsa-p256": func(k crypto.PublicKey) bool { _, ok := k.(*ecdsa.PublicKey); return ok },
		"rsa-2048":   func(k crypto.PublicKey) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 },
	} {
		s, err := e.mgr.Get(t.Context(), "web", kt)
		if err != nil {
			t.Fatalf("Get %s: %v", kt, err)
		}
		if s.Version != 1 || s.Placeholder {
			t.Errorf("%s: version %d (placeholder %v), want 1", kt, s.Version, s.Placeholder)
		}
		chain, err := pemutil.ParseCertificateBundle(s.Fullchain)
		if err != nil || len(chain) < 2 {
			t.Fatalf("%s fullchain: %d certificates, %v", kt, len(chain), err)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: "www.example.test", Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("%s: chain does not verify: %v", kt, err)
		}
		key, err := pemutil.ParseKey(s.Key)
		if err != nil {
			t.Fatalf("%s key: %v", kt, err)
		}
		pub := key.(crypto.Signer).Public()
		if !want(pub) || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey) {
			t.Errorf("%s: key %T does not match the certificate", kt, pub)
		}
	}
	// The promotion is in the store: another keyserver, whose clock has
	// not reached ReadyAt, serves version 1 too.
	e.clock.Set(v.ReadyAt.Add(-time.Minute))
	if s, err := other.Get(t.Context(), "web", "rsa-2048"); err != nil || s.Version != 1 {
		t.Errorf("another keyserver serves %v, %v; want version 1", s, err)
	}
	if _, err := e.mgr.Get(t.Context(), "nosuch", "ecdsa-p256"); !errors.Is(err, acme.ErrUnknownLabel) {
		t.Errorf("Get of an unknown label = %v", err)
	}
	if _, err := e.mgr.Get(t.Context(), "web", "rsa-4096"); !errors.Is(err, acme.ErrUnknownLabel) {
		t.Errorf("Get of a key type the label is not issued in = %v", err)
	}
}
