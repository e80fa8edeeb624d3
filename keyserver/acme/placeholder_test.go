package acme_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

func mustPolicy(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("policy.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustGet(t *testing.T, m *acme.Manager, label, keyType string) *acme.Served {
	t.Helper()
	s, err := m.Get(t.Context(), label, keyType)
	if err != nil {
		t.Fatalf("Get(%s, %s): %v", label, keyType, err)
	}
	return s
}

// TestPlaceholder: before the CA's certificate exists, a label serves a
// self-signed one, marked as such, the same from every keyserver on the
// store, replaced when half its life has passed or the label changes.
func TestPlaceholder(t *testing.T) {
	const head = "groups: {}\nacme:\n  accounts:\n    le: {directory: letsencrypt}\n  certificates:\n    web:\n      sni: [www.example.org, example.org]\n      to: {all: true}\n"
	var pol atomic.Pointer[policy.Policy]
	pol.Store(mustPolicy(t, head))
	st := store.NewMemory()
	c := &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	newManager := func() *acme.Manager {
		sealer, _ := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
		m, err := acme.NewManager(acme.Config{Store: st, Sealer: sealer, Policy: pol.Load, HTTP01: &acme.HTTP01Provider{Store: st}, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a, b := newManager(), newManager()

	first := mustGet(t, a, "web", "rsa-2048")
	if !first.Placeholder || first.Version != 0 {
		t.Errorf("served %v; want the placeholder", first)
	}
	chain, err := pemutil.ParseCertificateBundle(first.Fullchain)
	if err != nil || len(chain) != 1 {
		t.Fatalf("placeholder chain: %d, %v", len(chain), err)
	}
	cert := chain[0]
	if !slices.Equal(cert.DNSNames, []string{"www.example.org", "example.org"}) || cert.Subject.CommonName != "www.example.org" ||
		!slices.Equal(cert.Subject.Organization, []string{acme.PlaceholderOrganization}) ||
		cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) != nil {
		t.Errorf("placeholder: names %v, subject %v: want the label's, marked, self-signed", cert.DNSNames, cert.Subject)
	}
	if got := cert.NotAfter.Sub(c.Now()); got != acme.PlaceholderLifetime {
		t.Errorf("placeholder valid for %v more, want %v", got, acme.PlaceholderLifetime)
	}
	key, err := pemutil.ParseKey(first.Key)
	if err != nil || !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Errorf("placeholder key does not match its certificate: %v", err)
	}

	if other := mustGet(t, b, "web", "rsa-2048"); !bytes.Equal(other.Fullchain, first.Fullchain) || !bytes.Equal(other.Key, first.Key) {
		t.Error("another keyserver serves another placeholder")
	}
	if ec := mustGet(t, b, "web", "ecdsa-p256"); !ec.Placeholder {
		t.Errorf("ecdsa: %v, want the placeholder", ec)
	}

	c.Set(c.Now().Add(acme.PlaceholderLifetime/2 - time.Second))
	if same := mustGet(t, a, "web", "rsa-2048"); !bytes.Equal(same.Fullchain, first.Fullchain) {
		t.Error("placeholder replaced before half its life")
	}
	c.Set(c.Now().Add(time.Second))
	renewed := mustGet(t, a, "web", "rsa-2048")
	if bytes.Equal(renewed.Fullchain, first.Fullchain) {
		t.Error("placeholder not replaced at half its life")
	}

	// Other key types and a new cn: the placeholder follows at once.
	pol.Store(mustPolicy(t, head+"      cn: example.org\n      key_types: [ecdsa-p384]\n"))
	p384 := mustGet(t, a, "web", "ecdsa-p384")
	chain, _ = pemutil.ParseCertificateBundle(p384.Fullchain)
	if pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P384() || chain[0].Subject.CommonName != "example.org" {
		t.Errorf("after the policy changed: %T, cn %q; want a P-384 placeholder for example.org", chain[0].PublicKey, chain[0].Subject.CommonName)
	}
	if got := clearKeys(t, st); len(got) != 0 {
		t.Errorf("private keys in clear in %v", got)
	}
}
