package authority

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func fixedNow(t *time.Time) func() time.Time { return func() time.Time { return *t } }

func TestGenerateSaveLoadSign(t *testing.T) {
	for _, tc := range []struct {
		kt    KeyType
		inter bool
	}{
		{ECDSAP256, false},
		{ECDSAP256, true},
		{Ed25519, true},
		{RSA3072, false},
	} {
		t.Run(string(tc.kt)+map[bool]string{true: "+intermediate", false: ""}[tc.inter], func(t *testing.T) {
			now := t0
			a, err := Generate(Config{Name: "test", KeyType: tc.kt, Intermediate: tc.inter, Now: fixedNow(&now)})
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "ca")
			if err := a.Save(dir); err != nil {
				t.Fatal(err)
			}
			if err := a.Save(dir); err == nil {
				t.Error("second Save over an existing authority succeeded")
			}
			for _, f := range []string{RootKeyFile, IntermediateKeyFile} {
				fi, err := os.Stat(filepath.Join(dir, f))
				if errors.Is(err, os.ErrNotExist) && (f == IntermediateKeyFile) != tc.inter {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
				}
			}
			b, err := Load(dir, "test", Options{Now: fixedNow(&now)})
			if err != nil {
				t.Fatal(err)
			}
			if !b.Root().Equal(a.Root()) || len(b.Chain()) != len(a.Chain()) {
				t.Fatal("loaded authority differs from the saved one")
			}
			if tc.inter && b.rootKey != nil {
				t.Error("root key was loaded although an intermediate signs")
			}
			wantPathLen := 0
			if tc.inter {
				wantPathLen = 1
				if ic := b.Chain()[0]; ic.MaxPathLen != 0 || !ic.MaxPathLenZero || !ic.IsCA {
					t.Errorf("intermediate path length %d (zero %v), want 0", ic.MaxPathLen, ic.MaxPathLenZero)
				}
			}
			if r := b.Root(); r.MaxPathLen != wantPathLen || !r.IsCA || len(r.SubjectKeyId) == 0 || r.CheckSignatureFrom(r) != nil {
				t.Errorf("root: CA %v, path length %d (want %d), SKI %x, self-signed: %v", r.IsCA, r.MaxPathLen, wantPathLen, r.SubjectKeyId, r.CheckSignatureFrom(r))
			}

			leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			leaf, err := b.Sign(Request{
				PublicKey:   leafKey.Public(),
				CommonName:  "web1",
				DNSNames:    []string{"web1.example.org"},
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
				Lifetime:    time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := leaf.SerialNumber.BitLen(); got > 128 || got < 64 || leaf.SerialNumber.Sign() <= 0 {
				t.Errorf("serial has %d bits, want a positive 128-bit random number", got)
			}
			if !leaf.NotBefore.Equal(now.Add(-Backdate).Truncate(time.Second)) || !leaf.NotAfter.Equal(now.Add(time.Hour)) {
				t.Errorf("validity %v..%v", leaf.NotBefore, leaf.NotAfter)
			}
			if leaf.IsCA || len(leaf.SubjectKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, b.issuer.SubjectKeyId) {
				t.Error("leaf lacks SKI/AKI or is a CA")
			}
			if err := b.Verify(leaf, x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("leaf does not verify: %v", err)
			}
			if err := b.Verify(leaf, x509.ExtKeyUsageServerAuth); err == nil {
				t.Error("client certificate verified for server use")
			}
			now = now.Add(2 * time.Hour)
			var inv x509.CertificateInvalidError
			if err := b.Verify(leaf, x509.ExtKeyUsageClientAuth); !errors.As(err, &inv) || inv.Reason != x509.Expired {
				t.Errorf("expired leaf: err = %v, want x509 Expired", err)
			}
		})
	}
}

func TestSignCapsLifetimeAtIssuer(t *testing.T) {
	now := t0
	a, err := Generate(Config{Name: "short", RootLifetime: 24 * time.Hour, Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := a.Sign(Request{PublicKey: k.Public(), CommonName: "x", Lifetime: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.NotAfter.After(a.Root().NotAfter) {
		t.Errorf("leaf outlives its issuer: %v > %v", leaf.NotAfter, a.Root().NotAfter)
	}
}

func TestCheckKey(t *testing.T) {
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	ed, _ := GenerateKey(Ed25519)
	for _, tc := range []struct {
		name string
		pub  any
		ok   bool
	}{
		{"P-224", p224.Public(), false},
		{"P-384", p384.Public(), true},
		{"RSA-1024", rsa1024.Public(), false},
		{"RSA-2048", rsa2048.Public(), true},
		{"Ed25519", ed.Public(), true},
		{"nil", nil, false},
	} {
		err := CheckKey(tc.pub)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrWeakKey) {
			t.Errorf("%s: %v is not ErrWeakKey", tc.name, err)
		}
		if !tc.ok && tc.pub != nil {
			a, _ := Generate(Config{Name: "ca"})
			if _, err := a.Sign(Request{PublicKey: tc.pub, CommonName: "x", Lifetime: time.Hour}); !errors.Is(err, ErrWeakKey) {
				t.Errorf("%s: Sign err = %v, want ErrWeakKey", tc.name, err)
			}
		}
	}
}

func TestLoadRejectsMismatchedKey(t *testing.T) {
	dir := t.TempDir()
	a, _ := Generate(Config{Name: "a"})
	b, _ := Generate(Config{Name: "b"})
	if err := a.Save(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(dir, "b", RootKeyFile))
	if err := os.WriteFile(filepath.Join(dir, "a", RootKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(dir, "a"), "a", Options{}); err == nil {
		t.Fatal("Load accepted a key that does not match the certificate")
	}
}

func TestPin(t *testing.T) {
	a, _ := Generate(Config{Name: "a"})
	pin := SPKIPin(a.Root())
	if got, err := ParsePin("  sha256:" + strings.ToUpper(pin[7:]) + "\n"); err != nil || got != pin {
		t.Errorf("ParsePin(%q) = %q, %v", pin, got, err)
	}
	for _, bad := range []string{"", "sha1:00", "sha256:zz", pin[:len(pin)-2], "md5" + pin[6:]} {
		if _, err := ParsePin(bad); err == nil {
			t.Errorf("ParsePin(%q) accepted", bad)
		}
	}
}

func TestSerialUsesAll128Bits(t *testing.T) {
	// With all-ones input the serial is 2^128-1: nothing was masked off.
	n, err := Serial(bytes.NewReader(bytes.Repeat([]byte{0xff}, 16)))
	if err != nil || n.BitLen() != 128 {
		t.Fatalf("Serial = %v (%d bits), %v", n, n.BitLen(), err)
	}
	// An all-zero draw is not a valid serial and is drawn again.
	in := append(make([]byte, 16), bytes.Repeat([]byte{1}, 16)...)
	if n, err := Serial(bytes.NewReader(in)); err != nil || n.Sign() <= 0 {
		t.Fatalf("Serial after a zero draw = %v, %v", n, err)
	}
}

// A loaded intermediate must be what Generate would have made: a CA with
// path length 0 that does not outlive its root.
func TestLoadRejectsBadIntermediate(t *testing.T) {
	root, err := Generate(Config{Name: "r", RootLifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		pathLen  int
		lifetime time.Duration
	}{
		{"outlives its root", 0, 48 * time.Hour},
		{"path length 1", 1, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := GenerateKey(ECDSAP256)
			now := time.Now()
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "inter"},
				NotBefore: now.Add(-time.Minute), NotAfter: now.Add(tc.lifetime),
				IsCA: true, BasicConstraintsValid: true, MaxPathLen: tc.pathLen,
				KeyUsage: x509.KeyUsageCertSign,
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Root(), key.Public(), root.signer)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := root.Save(filepath.Join(dir, "ca")); err != nil {
				t.Fatal(err)
			}
			keyPEM, _ := EncodeKeyPEM(key)
			os.WriteFile(filepath.Join(dir, "ca", IntermediateKeyFile), keyPEM, 0o600)
			os.WriteFile(filepath.Join(dir, "ca", IntermediateCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
			if _, err := Load(filepath.Join(dir, "ca"), "r", Options{}); err == nil {
				t.Fatal("Load accepted the intermediate")
			}
		})
	}
}

func TestAuthorityNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		want error
	}{
		{"etcd", nil},
		{"a", nil},
		{"0", nil},
		{"web.dc1", nil},
		{"kube_api-2", nil},
		{strings.Repeat("a", 63), nil},
		{strings.Repeat("a", 64), ErrBadName},
		{"", ErrBadName},
		{"Etcd", ErrBadName},
		{"-etcd", ErrBadName},
		{"etcd.", ErrBadName},
		{".", ErrBadName},
		{"..", ErrBadName},
		{"a/b", ErrBadName},
		{"a b", ErrBadName},
		{KeyGranting, ErrReservedName},
		{Server, ErrReservedName},
		{Admin, ErrReservedName},
	} {
		err := CheckName(tc.name)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("CheckName(%q) = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// GenerateUnder makes an intermediate signed by a shared root; saved and
// loaded, it is an authority whose chain ends at that root, without the
// root key.
func TestAuthorityGenerateUnder(t *testing.T) {
	now := t0
	root, err := Generate(Config{Name: "cluster", Shared: true, RootLifetime: 24 * time.Hour, Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	if r := root.Root(); r.MaxPathLen != 1 || len(root.Chain()) != 0 {
		t.Fatalf("shared root: path length %d, chain %d, want 1 and none", r.MaxPathLen, len(root.Chain()))
	}
	dir := t.TempDir()
	if err := root.Save(filepath.Join(dir, "cluster")); err != nil {
		t.Fatal(err)
	}
	// The parent as keyctl finds it: loaded from disk, with its root key.
	parent, err := Load(filepath.Join(dir, "cluster"), "cluster", Options{Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	var kids []*Authority
	for _, tc := range []struct {
		name string
		kt   KeyType
	}{{"etcd", ECDSAP256}, {"kube", Ed25519}} {
		a, err := GenerateUnder(parent, Config{Name: tc.name, KeyType: tc.kt, Now: fixedNow(&now)})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Save(filepath.Join(dir, tc.name)); err != nil {
			t.Fatal(err)
		}
		if err := a.Save(filepath.Join(dir, tc.name)); err == nil {
			t.Error("second Save over an existing authority succeeded")
		}
		if _, err := os.Stat(filepath.Join(dir, tc.name, RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: root key written (%v)", tc.name, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, tc.name, IntermediateKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: intermediate key: %v", tc.name, err)
		}
		b, err := Load(filepath.Join(dir, tc.name), tc.name, Options{Now: fixedNow(&now)})
		if err != nil {
			t.Fatal(err)
		}
		if !b.Root().Equal(parent.Root()) || len(b.Chain()) != 1 || !b.Chain()[0].Equal(a.Chain()[0]) || b.rootKey != nil {
			t.Fatalf("%s: loaded authority differs from the saved one, or holds a root key", tc.name)
		}
		ic := b.Chain()[0]
		if ic.Subject.CommonName != tc.name+" intermediate" || !ic.IsCA || ic.MaxPathLen != 0 || !ic.MaxPathLenZero {
			t.Errorf("%s: intermediate %q, CA %v, path length %d", tc.name, ic.Subject.CommonName, ic.IsCA, ic.MaxPathLen)
		}
		if err := ic.CheckSignatureFrom(parent.Root()); err != nil {
			t.Errorf("%s: intermediate not signed by the shared root: %v", tc.name, err)
		}
		if KeyTypeOf(ic.PublicKey) != string(tc.kt) {
			t.Errorf("%s: intermediate key %s, want %s", tc.name, KeyTypeOf(ic.PublicKey), tc.kt)
		}
		// Five years asked for, the root's day given.
		if !ic.NotAfter.Equal(parent.Root().NotAfter) {
			t.Errorf("%s: intermediate expires %v, root %v", tc.name, ic.NotAfter, parent.Root().NotAfter)
		}
		kids = append(kids, b)
	}
	// Each issues leaves that verify against the shared root and its own
	// chain, and not against a sibling's chain.
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := kids[0].Sign(Request{PublicKey: k.Public(), CommonName: "etcd1", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := kids[0].Verify(leaf, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("leaf under etcd: %v", err)
	}
	if err := kids[1].Verify(leaf, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("etcd leaf verified through kube's chain")
	}
	pool := x509.NewCertPool()
	pool.AddCert(kids[0].Chain()[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: parent.Roots(), Intermediates: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("leaf does not chain to the shared root: %v", err)
	}
}

func TestAuthorityGenerateUnderRefuses(t *testing.T) {
	now := t0
	gen := func(cfg Config) *Authority {
		t.Helper()
		cfg.Now = fixedNow(&now)
		a, err := Generate(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	dir := t.TempDir()
	// Saved with an intermediate, then loaded: the root key is not read.
	withInter := gen(Config{Name: "inter", Intermediate: true})
	if err := withInter.Save(filepath.Join(dir, "inter")); err != nil {
		t.Fatal(err)
	}
	loadedInter, err := Load(filepath.Join(dir, "inter"), "inter", Options{Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	shared := gen(Config{Name: "cluster", Shared: true})
	under, err := GenerateUnder(shared, Config{Name: "etcd", Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	shortLived := gen(Config{Name: "short", Shared: true, RootLifetime: time.Hour})
	for _, tc := range []struct {
		name   string
		parent *Authority
		later  time.Duration
	}{
		{"nil parent", nil, 0},
		{"root of path length 0", gen(Config{Name: "plain"}), 0},
		{"loaded without its root key", loadedInter, 0},
		{"itself under a parent", under, 0},
		{"expired root", shortLived, 2 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now = t0.Add(tc.later)
			defer func() { now = t0 }()
			if _, err := GenerateUnder(tc.parent, Config{Name: "x", Now: fixedNow(&now)}); !errors.Is(err, ErrNotParent) {
				t.Errorf("GenerateUnder = %v, want ErrNotParent", err)
			}
		})
	}
	if _, err := GenerateUnder(shared, Config{Now: fixedNow(&now)}); err == nil {
		t.Error("GenerateUnder without a name succeeded")
	}
	if _, err := Generate(Config{Name: "both", Shared: true, Intermediate: true}); err == nil {
		t.Error("Generate made a shared root with an intermediate of its own")
	}
	// A loaded authority without its root key still cannot be saved.
	if err := loadedInter.Save(filepath.Join(dir, "copy")); err == nil {
		t.Error("Save wrote a loaded authority that has no root key")
	}
}

func TestKeyTypeOf(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tc := range []struct {
		want string
		pub  func() any
	}{
		{"ecdsa-p256", func() any { k, _ := GenerateKey(ECDSAP256); return k.Public() }},
		{"ecdsa-p384", func() any { return p384.Public() }},
		{"ed25519", func() any { k, _ := GenerateKey(Ed25519); return k.Public() }},
		{"rsa-3072", func() any { k, _ := GenerateKey(RSA3072); return k.Public() }},
		{"", func() any { return "not a key" }},
		{"", func() any { return nil }},
	} {
		if got := KeyTypeOf(tc.pub()); got != tc.want {
			t.Errorf("KeyTypeOf = %q, want %q", got, tc.want)
		}
	}
}

// Request.Subject gives the leaf's further subject attributes; its
// CommonName is ignored in favour of Request.CommonName.
func TestSignSubject(t *testing.T) {
	a, err := Generate(Config{Name: "ca"})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := GenerateKey(ECDSAP256)
	leaf, err := a.Sign(Request{
		PublicKey:  k.Public(),
		CommonName: "etcd1.example.org",
		Subject:    pkix.Name{CommonName: "ignored", Organization: []string{"example"}, OrganizationalUnit: []string{"etcd"}},
		Lifetime:   time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := leaf.Subject
	if s.CommonName != "etcd1.example.org" || len(s.Organization) != 1 || s.Organization[0] != "example" || len(s.OrganizationalUnit) != 1 || s.OrganizationalUnit[0] != "etcd" {
		t.Errorf("subject %v, want CN=etcd1.example.org,OU=etcd,O=example", s)
	}
}

// VerifyAt checks a certificate as of a given time: one expired now
// verifies at a moment inside its validity, and not outside it.
func TestVerifyAt(t *testing.T) {
	now := t0
	a, err := Generate(Config{Name: "ca", Intermediate: true, Now: fixedNow(&now)})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := GenerateKey(ECDSAP256)
	leaf, err := a.Sign(Request{PublicKey: k.Public(), CommonName: "n", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now = t0.Add(2 * time.Hour)
	if err := a.Verify(leaf, x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("expired leaf verified now")
	}
	if err := a.VerifyAt(leaf, x509.ExtKeyUsageClientAuth, t0.Add(30*time.Minute)); err != nil {
		t.Errorf("VerifyAt inside the validity: %v", err)
	}
	if err := a.VerifyAt(leaf, x509.ExtKeyUsageServerAuth, t0.Add(30*time.Minute)); err == nil {
		t.Error("VerifyAt accepted the wrong usage")
	}
	var inv x509.CertificateInvalidError
	if err := a.VerifyAt(leaf, x509.ExtKeyUsageClientAuth, t0.Add(-2*time.Minute)); !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Errorf("VerifyAt before the validity: %v, want x509 Expired", err)
	}
}
