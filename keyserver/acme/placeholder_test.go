package acme_test

import (
	"bytes"
	"crypto"
	"slices"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

// TestPlaceholder: before the CA's certificate exists, a label serves a
// self-signed one, marked as such, the same from every keyserver on the
// store, replaced when half its life has passed.
func TestPlaceholder(t *testing.T) {
	const src = "groups: {}\nacme:\n  accounts:\n    le: {directory: letsencrypt}\n  certificates:\n    web:\n      sni: [www.example.org, example.org]\n      to: {all: true}\n"
	pol, err := policy.Parse("policy.yaml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewMemory()
	c := &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	newManager := func() *acme.Manager {
		sealer, _ := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
		m, err := acme.NewManager(acme.Config{Store: st, Sealer: sealer, Policy: func() *policy.Policy { return pol },
			HTTP01: &acme.HTTP01Provider{Store: st}, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a, b := newManager(), newManager()

	first, err := a.Get(t.Context(), "web", "rsa-2048")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !first.Placeholder || first.Version != 0 {
		t.Errorf("served version %d, placeholder %v; want the placeholder", first.Version, first.Placeholder)
	}
	chain, err := certcrypto.ParsePEMBundle(first.Fullchain)
	if err != nil || len(chain) != 1 {
		t.Fatalf("placeholder chain: %d, %v", len(chain), err)
	}
	cert := chain[0]
	if !slices.Equal(cert.DNSNames, []string{"www.example.org", "example.org"}) || cert.Subject.CommonName != "www.example.org" ||
		!slices.Equal(cert.Subject.Organization, []string{acme.PlaceholderOrganization}) || cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) != nil {
		t.Errorf("placeholder: names %v, subject %v: want the label's, marked, self-signed", cert.DNSNames, cert.Subject)
	}
	if got := cert.NotAfter.Sub(c.Now()); got != acme.PlaceholderLifetime {
		t.Errorf("placeholder valid for %v more, want %v", got, acme.PlaceholderLifetime)
	}
	key, err := certcrypto.ParsePEMPrivateKey(first.Key)
	if err != nil || !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Errorf("placeholder key does not match its certificate: %v", err)
	}

	other, err := b.Get(t.Context(), "web", "rsa-2048")
	if err != nil || !bytes.Equal(other.Fullchain, first.Fullchain) || !bytes.Equal(other.Key, first.Key) {
		t.Errorf("another keyserver serves another placeholder (%v)", err)
	}
	if ec, err := b.Get(t.Context(), "web", "ecdsa-p256"); err != nil || !ec.Placeholder {
		t.Errorf("ecdsa placeholder: %+v, %v", ec, err)
	}

	c.Set(c.Now().Add(acme.PlaceholderLifetime/2 - time.Second))
	if same, _ := a.Get(t.Context(), "web", "rsa-2048"); !bytes.Equal(same.Fullchain, first.Fullchain) {
		t.Error("placeholder replaced before half its life")
	}
	c.Set(c.Now().Add(time.Second))
	if next, _ := a.Get(t.Context(), "web", "rsa-2048"); bytes.Equal(next.Fullchain, first.Fullchain) {
		t.Error("placeholder not replaced at half its life")
	}
	kvs, _ := st.List(t.Context(), "")
	for _, kv := range kvs {
		if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a private key in clear", kv.Key)
		}
	}
}
