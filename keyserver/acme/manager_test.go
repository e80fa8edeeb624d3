package acme_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/pebbletest"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// acmeEnv is a keyserver's ACME side against a real Pebble, over HTTP-01.
type acmeEnv struct {
	pebble *pebbletest.Pebble
	store  *store.Memory
	clock  *clock
	mgr    *acme.Manager
}

func newACMEEnv(t *testing.T, certs string) *acmeEnv {
	t.Helper()
	st := store.NewMemory()
	addr := serveHTTP01(t, st)
	_, port, _ := net.SplitHostPort(addr)
	httpPort, _ := strconv.Atoi(port)
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort})
	src := fmt.Sprintf("groups: {}\nacme:\n  accounts:\n    pebble:\n      directory: %s\n      ca_file: pebble-tls.pem\n  certificates:\n%s", pb.Directory, certs)
	pol, err := policy.Parse("policy.yaml", []byte(src), func(string) ([]byte, error) { return pb.RootsPEM, nil })
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{now: time.Now()}
	mgr, err := acme.NewManager(acme.Config{
		Store: st, Sealer: sealer, Policy: func() *policy.Policy { return pol },
		HTTP01: &acme.HTTP01Provider{Store: st, ProbeAddr: addr}, Staging: time.Hour, Now: c.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &acmeEnv{pebble: pb, store: st, clock: c, mgr: mgr}
}

// TestObtainEveryKeyType: a label is obtained in both key types, held back
// for the staging time (the placeholder is served meanwhile), then served: each chain verifies against the CA's
// root, each key matches its certificate, and no key is in the store in
// clear.
func TestObtainEveryKeyType(t *testing.T) {
	e := newACMEEnv(t, "    web:\n      sni: [www.example.test]\n      to: {all: true}\n")
	v, err := e.mgr.Obtain(t.Context(), "web")
	if err != nil {
		t.Fatalf("Obtain: %v", err)
	}
	if v.Number != 1 || len(v.Certs) != 2 {
		t.Fatalf("version %d with %d certificates, want 1 with 2", v.Number, len(v.Certs))
	}
	if s, err := e.mgr.Get(t.Context(), "web", "ecdsa-p256"); err != nil || !s.Placeholder {
		t.Errorf("Get during the staging time = %+v, %v; want the placeholder", s, err)
	}
	kvs, _ := e.store.List(t.Context(), "")
	for _, kv := range kvs {
		if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key in clear", kv.Key)
		}
		if strings.HasPrefix(kv.Key, "acme/http01/") {
			t.Errorf("challenge answer %s left in the store", kv.Key)
		}
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
		chain, err := certcrypto.ParsePEMBundle(s.Fullchain)
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
		key, err := certcrypto.ParsePEMPrivateKey(s.Key)
		if err != nil {
			t.Fatalf("%s key: %v", kt, err)
		}
		pub := key.(crypto.Signer).Public()
		if !want(pub) || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey) {
			t.Errorf("%s: key %T does not match the certificate", kt, pub)
		}
		if s.Version != 1 {
			t.Errorf("%s: version %d, want 1", kt, s.Version)
		}
	}
	if _, err := e.mgr.Get(t.Context(), "nosuch", "ecdsa-p256"); !errors.Is(err, acme.ErrUnknownLabel) {
		t.Errorf("Get of an unknown label = %v", err)
	}
}
