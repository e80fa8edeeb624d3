package keyclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
)

// Acme items against the fake keyserver, whose answers a test can shape
// (a version landing between two requests, a key that is not the
// certificate's); acme_keyserver_test.go runs one against a real
// keyserver and a real ACME CA.

const acmeName = "www.example.test"

func acmeItem(reloads string) Item {
	it := Item{Type: TypeACME, Label: "www", Key: "www.key", Cert: "www.crt", Chain: "www-chain.crt", FullChain: "www-full.crt"}
	if reloads != "" {
		it.Reload = `echo "$KEYCLIENT_ITEM/$KEYCLIENT_EVENT/$KEYCLIENT_ACME_VERSION" >> ` + reloads
	}
	return it
}

// acmeVersion is a version as the CA issues it: a certificate from
// authority ca, through its intermediate, for a new key of type kt.
func acmeVersion(t *testing.T, ca *authority.Authority, kt authority.KeyType) (fullchain, key []byte) {
	t.Helper()
	k, err := authority.GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(authority.Request{PublicKey: k.Public(), CommonName: acmeName, DNSNames: []string{acmeName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Lifetime: 90 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := authority.EncodeKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return authority.EncodePEM(append([]*x509.Certificate{cert}, ca.Chain()...)...), keyPEM
}

// placeholderVersion is a self-signed certificate as the keyserver
// serves before the CA's exists.
func placeholderVersion(t *testing.T, now time.Time) (fullchain, key []byte) {
	t.Helper()
	k, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: acmeName, Organization: []string{"keysystem placeholder: not yet issued by the CA"}},
		DNSNames:     []string{acmeName},
		NotBefore:    now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := authority.EncodeKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return authority.EncodePEM(cert), keyPEM
}

// checkACMEFiles checks that the item's files hold the version whose full
// chain is fullchain: the key is the certificate's, the certificate and
// the chain are the full chain's, and the modes are 0600 and 0644.
func checkACMEFiles(t *testing.T, r *rig, fullchain []byte) {
	t.Helper()
	certs, err := parseBundle(fullchain)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string, mode os.FileMode) []byte {
		t.Helper()
		data, err := os.ReadFile(r.path(name))
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(r.path(name)); fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %04o, want %04o", name, fi.Mode().Perm(), mode)
		}
		return data
	}
	if got := read("www-full.crt", 0o644); !bytes.Equal(got, fullchain) {
		t.Errorf("fullchain file is not the version's full chain")
	}
	if got := read("www.crt", 0o644); !bytes.Equal(got, authority.EncodePEM(certs[0])) {
		t.Errorf("cert file is not the version's certificate")
	}
	if got := read("www-chain.crt", 0o644); !bytes.Equal(got, authority.EncodePEM(certs[1:]...)) {
		t.Errorf("chain file is not the version's chain")
	}
	key, err := parseSigner(read("www.key", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	leaf := readCertFile(t, r.path("www.crt"))
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("the key on disk is not the certificate's")
	}
}

func parseBundle(data []byte) ([]*x509.Certificate, error) {
	return pemutil.ParseCertificateBundle(data)
}

func sameFiles(t *testing.T, r *rig, before map[string]os.FileInfo) {
	t.Helper()
	for name, fi := range before {
		now, err := os.Stat(r.path(name))
		if err != nil || !os.SameFile(fi, now) {
			t.Errorf("%s was written again", name)
		}
	}
}

func statFiles(t *testing.T, r *rig) map[string]os.FileInfo {
	t.Helper()
	m := map[string]os.FileInfo{}
	for _, name := range []string{"www.key", "www.crt", "www-chain.crt", "www-full.crt"} {
		fi, err := os.Stat(r.path(name))
		if err != nil {
			t.Fatal(err)
		}
		m[name] = fi
	}
	return m
}

// The placeholder is written so a front end can start; the CA's
// certificate replaces it; each change runs the reload once, and a
// refresh that finds nothing new (a 304) writes and reloads nothing.
func TestACMEItemFollowsTheKeyserversVersions(t *testing.T) {
	reloads := filepath.Join(t.TempDir(), "reloads")
	r := newRig(t, []Item{acmeItem(reloads)}, false)
	ca := newAuthority(t, "acme ca", r.clk.Now)
	pfull, pkey := placeholderVersion(t, r.clk.Now())
	r.ks.setACME("www", "", 0, pfull, pkey)

	res := r.pass(0)
	if res.Action != ActionIssued || res.Err != nil || res.Version != 0 || !res.Placeholder || res.Type != TypeACME || res.Name != "www" {
		t.Fatalf("first pass: %+v", res)
	}
	checkACMEFiles(t, r, pfull)
	if d := res.RenewAt.Sub(r.clk.Now()); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("holding the placeholder, the next refresh is in %v; want about 5m", d)
	}
	st, _ := ReadStatus(r.state)
	if e := st.Items[0]; e.State != StatePending || !e.Placeholder || e.Label != "www" || e.ETag == "" || e.Serial == "" {
		t.Errorf("status entry holding the placeholder: %+v", e)
	}

	// Restarted, it still asks again within about 5 minutes, though the
	// status file says later (written by a client with a longer refresh).
	st.Items[0].NextRefresh = r.clk.Now().Add(15 * time.Minute)
	data, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(r.state, StatusFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	r.c = r.newClient()
	if d := r.c.items[0].nextRefresh.Sub(r.clk.Now()); d > 6*time.Minute {
		t.Errorf("after a restart holding the placeholder, the next refresh is in %v", d)
	}

	// Checks in between read the files and call nothing.
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("acme www fullchain.pem") != 1 {
		t.Fatalf("check: %+v, %d fetches", res, r.ks.count("acme www fullchain.pem"))
	}
	// At the refresh, the same version: a 304, and no key fetched.
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("acme304 www") != 1 || r.ks.count("acme www key.pem") != 1 {
		t.Fatalf("refresh, nothing new: %+v, %d 304s, %d key fetches", res, r.ks.count("acme304 www"), r.ks.count("acme www key.pem"))
	}

	// The CA's certificate arrives.
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	r.clk.Set(r.c.items[0].nextRefresh)
	res = r.pass(0)
	if res.Action != ActionUpdated || res.Version != 1 || res.Placeholder {
		t.Fatalf("the CA's certificate: %+v", res)
	}
	checkACMEFiles(t, r, full1)
	if d := res.RenewAt.Sub(r.clk.Now()); d < 13*time.Minute || d > 17*time.Minute {
		t.Errorf("next refresh in %v; want 15m ± 10%%", d)
	}
	st, _ = ReadStatus(r.state)
	if e := st.Items[0]; e.State != StateOK || e.Placeholder || e.Version != 1 || !e.NotAfter.Equal(readCertFile(t, r.path("www.crt")).NotAfter) {
		t.Errorf("status entry: %+v", e)
	}

	// Nothing new: nothing written, no reload.
	before := statFiles(t, r)
	for range 3 {
		r.clk.Set(r.c.items[0].nextRefresh)
		if res := r.pass(0); res.Action != ActionNone || res.Err != nil {
			t.Fatalf("refresh, nothing new: %+v", res)
		}
	}
	sameFiles(t, r, before)
	if n := r.ks.count("acme304 www"); n != 4 {
		t.Errorf("%d answers 304, want 4", n)
	}
	if got := reloadLog(t, reloads); strings.Join(got, ",") != "www/issued/0,www/updated/1" {
		t.Errorf("reloads: %v", got)
	}
}

// A new version landing between the certificate and its key is noticed
// by their tags, and both are fetched again; a label whose version keeps
// changing is given up on for the pass, with nothing written.
func TestACMEItemFetchesAgainWhenAVersionLandsBetween(t *testing.T) {
	reloads := filepath.Join(t.TempDir(), "reloads")
	r := newRig(t, []Item{acmeItem(reloads)}, false)
	ca := newAuthority(t, "acme ca", r.clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	if res := r.pass(0); res.Action != ActionIssued {
		t.Fatalf("first pass: %+v", res)
	}

	full2, key2 := acmeVersion(t, ca, authority.ECDSAP256)
	full3, key3 := acmeVersion(t, ca, authority.ECDSAP256)
	l := r.ks.setACME("www", "", 2, full2, key2)
	l.afterFullchain = func(l *fakeLabel) { l.version, l.fullchain, l.key, l.afterFullchain = 3, full3, key3, nil }
	r.clk.Set(r.c.items[0].nextRefresh)
	res := r.pass(0)
	if res.Action != ActionUpdated || res.Version != 3 {
		t.Fatalf("version 3 landing after version 2's certificate: %+v", res)
	}
	checkACMEFiles(t, r, full3)
	if f, k := r.ks.count("acme www fullchain.pem"), r.ks.count("acme www key.pem"); f != 3 || k != 3 {
		t.Errorf("%d certificate and %d key fetches; want 1+2 of each", f, k)
	}

	// Every time another version: given up after acmeFetchAttempts.
	pairs := [][2][]byte{{full1, key1}, {full2, key2}}
	var flip func(*fakeLabel)
	flip = func(l *fakeLabel) {
		l.version++
		l.fullchain, l.key = pairs[l.version%2][0], pairs[l.version%2][1]
		l.afterFullchain = flip
	}
	l = r.ks.setACME("www", "", 4, full1, key1)
	l.afterFullchain = flip
	r.clk.Set(r.c.items[0].nextRefresh)
	res = r.pass(0)
	if res.Action != ActionFailed || res.Err == nil || !strings.Contains(res.Err.Error(), "different versions 3 times in a row") {
		t.Fatalf("a version landing every time: %+v", res)
	}
	checkACMEFiles(t, r, full3)
	if got := reloadLog(t, reloads); strings.Join(got, ",") != "www/issued/1,www/updated/3" {
		t.Errorf("reloads: %v", got)
	}
}

// What does not hold together is never written: a key that is not the
// certificate's, a certificate of another key type than asked for, a
// chain that did not sign it, an answer that is no PEM. The tags agree,
// so it is not fetched again: the keyserver serves it so.
func TestACMEItemNeverWritesAKeyThatIsNotItsCertificates(t *testing.T) {
	clk := newTestClock()
	ca := newAuthority(t, "acme ca", clk.Now)
	other := newAuthority(t, "other ca", clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	_, key2 := acmeVersion(t, ca, authority.ECDSAP256)
	leaf1, _ := parseBundle(full1)
	misChained := append(authority.EncodePEM(leaf1[0]), authority.EncodePEM(other.Chain()...)...)
	for _, tc := range []struct {
		name, family   string
		fullchain, key []byte
		want           string
	}{
		{"key of another certificate", "", full1, key2, "the key does not match the certificate"},
		{"another key type", familyRSA, full1, key1, "the certificate has a ecdsa-p256 key; key_type rsa was asked for"},
		{"chain of another CA", "", misChained, key1, "not a certificate followed by its issuers"},
		{"not PEM", "", []byte("<html>"), key1, "unusable full chain"},
		{"key not PEM", "", full1, []byte("secret"), "unusable key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reloads := filepath.Join(t.TempDir(), "reloads")
			it := acmeItem(reloads)
			it.KeyType = tc.family
			r := newRig(t, []Item{it}, false)
			r.ks.setACME("www", tc.family, 1, tc.fullchain, tc.key)
			res := r.pass(0)
			if res.Action != ActionFailed || res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) || !strings.Contains(res.Err.Error(), "nothing written") {
				t.Fatalf("pass: %+v; want a failure saying %q", res, tc.want)
			}
			if n := r.ks.count("acme www key.pem"); n != 1 {
				t.Errorf("%d key fetches, want 1", n)
			}
			if strings.Contains(res.Err.Error(), "secret") {
				t.Errorf("the error quotes the key's content: %v", res.Err)
			}
			if _, err := os.Stat(reloads); !errors.Is(err, os.ErrNotExist) {
				t.Error("the reload command ran")
			}
			for _, f := range []string{"www.key", "www.crt", "www-chain.crt", "www-full.crt"} {
				if _, err := os.Stat(r.path(f)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s written", f)
				}
			}
			if _, err := os.Stat(acmeCopyPath(r.state, "www")); !errors.Is(err, os.ErrNotExist) {
				t.Error("the refused version was kept in the state directory")
			}
		})
	}
}

// Files removed, changed, or given another mode on disk are put back
// from the version held, without a keyserver: also after a restart, from
// the copy in the state directory, and when a refresh is due and the
// keyserver cannot be asked.
func TestACMEItemFilesArePutBackWithoutTheKeyserver(t *testing.T) {
	reloads := filepath.Join(t.TempDir(), "reloads")
	r := newRig(t, []Item{acmeItem(reloads)}, false)
	ca := newAuthority(t, "acme ca", r.clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	if res := r.pass(0); res.Action != ActionIssued {
		t.Fatalf("first pass: %+v", res)
	}
	if fi, err := os.Stat(acmeCopyPath(r.state, "www")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("copy in the state directory: %v, %v", fi, err)
	}
	r.ks.setFail("www", errors.New("connection refused"))

	_, otherKey := acmeVersion(t, ca, authority.ECDSAP256)
	os.Remove(r.path("www.crt"))
	os.WriteFile(r.path("www.key"), otherKey, 0o600)
	os.Chmod(r.path("www-full.crt"), 0o600)
	calls := r.ks.count("acme www fullchain.pem")
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionRecreated || res.Err != nil || r.ks.count("acme www fullchain.pem") != calls {
		t.Fatalf("repair between refreshes: %+v", res)
	}
	checkACMEFiles(t, r, full1)

	// A key readable by all is given its mode back (it cannot be
	// replaced from here: every node of the label shares it).
	os.Chmod(r.path("www.key"), 0o644)
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionRecreated {
		t.Fatalf("exposed key: %+v", res)
	}
	checkACMEFiles(t, r, full1)

	// Restarted, at a refresh, with the keyserver down: put back all the
	// same, and the pass fails, to be retried.
	os.Remove(r.path("www.key"))
	r.c = r.newClient()
	r.clk.Set(r.c.items[0].nextRefresh)
	res := r.pass(0)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "connection refused") {
		t.Fatalf("refresh with the keyserver down: %+v", res)
	}
	checkACMEFiles(t, r, full1)
	if got := reloadLog(t, reloads); strings.Join(got, ",") != "www/issued/1,www/recreated/1,www/recreated/1,www/recreated/1" {
		t.Errorf("reloads: %v", got)
	}
}

// The version held, its tag and a reload owed survive a restart: the
// restarted client asks again only at the refresh, with If-None-Match.
func TestACMEItemRestart(t *testing.T) {
	reloads := filepath.Join(t.TempDir(), "reloads")
	r := newRig(t, []Item{acmeItem(reloads)}, false)
	ca := newAuthority(t, "acme ca", r.clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	r.pass(0)
	old, err := os.ReadFile(acmeCopyPath(r.state, "www"))
	if err != nil {
		t.Fatal(err)
	}

	r.c = r.newClient()
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone || res.Version != 1 || r.ks.count("acme www fullchain.pem") != 1 {
		t.Fatalf("after a restart, before the refresh: %+v", res)
	}
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("acme304 www") != 1 {
		t.Fatalf("after a restart, at the refresh: %+v", res)
	}
	// once --renew asks unconditionally, and writes nothing the same.
	before := statFiles(t, r)
	if res := r.c.itemPass(context.Background(), r.c.items[0], true, true); res.Action != ActionNone || res.Err != nil || r.ks.count("acme www key.pem") != 2 {
		t.Fatalf("once --renew: %+v", res)
	}
	sameFiles(t, r, before)

	// Stopped after the version was kept and before the status file
	// recorded it: the restarted client owes the reload.
	os.Remove(filepath.Join(r.state, StatusFile))
	r.c = r.newClient()
	if ev := r.c.items[0].reload.event; ev != ActionUpdated {
		t.Fatalf("reload owed after the restart: %q", ev)
	}
	if res := r.pass(0); res.Action != ActionNone || res.ReloadErr != nil {
		t.Fatalf("pass: %+v", res)
	}
	if got := reloadLog(t, reloads); strings.Join(got, ",") != "www/issued/1,www/updated/1" {
		t.Errorf("reloads: %v", got)
	}

	// A copy older than what the status file records is not used: the
	// keyserver is asked at once, and the files, right already, are not
	// written again.
	full2, key2 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 2, full2, key2)
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionUpdated {
		t.Fatalf("version 2: %+v", res)
	}
	if err := os.WriteFile(acmeCopyPath(r.state, "www"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	r.c = r.newClient()
	if r.c.items[0].acme != nil {
		t.Fatal("an older copy was taken")
	}
	before = statFiles(t, r)
	if res := r.pass(0); res.Action != ActionNone || res.Version != 2 {
		t.Fatalf("pass with the older copy ignored: %+v", res)
	}
	sameFiles(t, r, before)
	if got := reloadLog(t, reloads); len(got) != 3 {
		t.Errorf("reloads: %v", got)
	}
}

// A front end holding a real certificate keeps it when the keyserver
// serves only its placeholder, or a version that has expired.
func TestACMEItemKeepsTheRealCertificate(t *testing.T) {
	r := newRig(t, []Item{acmeItem("")}, false)
	ca := newAuthority(t, "acme ca", r.clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	r.pass(0)

	pfull, pkey := placeholderVersion(t, r.clk.Now())
	r.ks.setACME("www", "", 0, pfull, pkey)
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionNone || res.Err != nil || res.Version != 1 || r.ks.count("acme www key.pem") != 1 {
		t.Fatalf("placeholder served: %+v", res)
	}
	checkACMEFiles(t, r, full1)

	past := newAuthority(t, "acme ca", func() time.Time { return r.clk.Now().Add(-200 * 24 * time.Hour) })
	fullOld, keyOld := acmeVersion(t, past, authority.ECDSAP256)
	r.ks.setACME("www", "", 7, fullOld, keyOld)
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionFailed || res.Err == nil || !strings.Contains(res.Err.Error(), "expired") {
		t.Fatalf("expired version served: %+v", res)
	}
	checkACMEFiles(t, r, full1)
}

// A label the node is not given is refused by the keyserver (403): the
// item fails, backs off, and nothing is written.
func TestACMEItemRefused(t *testing.T) {
	r := newRig(t, []Item{acmeItem("")}, false)
	res := r.pass(0)
	var ae *api.Error
	if res.Action != ActionFailed || !errors.As(res.Err, &ae) || ae.Status != 403 || ae.Code != api.CodeGrantDenied {
		t.Fatalf("pass: %+v", res)
	}
	if it := r.c.items[0]; it.failures != 1 || !it.nextAttempt.After(r.clk.Now()) {
		t.Errorf("no backoff: %d failures, next attempt %v", it.failures, it.nextAttempt)
	}
	if !noneExist(r.c.items[0].spec.files()) {
		t.Error("files written for a refused label")
	}
}

func TestACMEPath(t *testing.T) {
	for _, tc := range []struct{ family, file, want string }{
		{"", acmeFullchainFile, "/certs/www/public.pem"},
		{"", acmeKeyFile, "/certs/www/private.pem"},
		{familyECDSA, acmeFullchainFile, "/certs/www/ecdsa/fullchain.pem"},
		{familyRSA, acmeKeyFile, "/certs/www/rsa/key.pem"},
	} {
		if got := acmePath("www", tc.family, tc.file); got != tc.want {
			t.Errorf("acmePath(www, %q, %q) = %q, want %q", tc.family, tc.file, got, tc.want)
		}
	}
}

// keyclient status shows an acme item's label, version and placeholder,
// and notices files that are not the version held.
func TestInspectACME(t *testing.T) {
	r := newRig(t, []Item{acmeItem("")}, false)
	pfull, pkey := placeholderVersion(t, r.clk.Now())
	r.ks.setACME("www", "", 0, pfull, pkey)
	if _, err := r.c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	line := func() StatusLine {
		t.Helper()
		lines, _, err := Inspect(r.cfg, r.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return lines[1]
	}
	if l := line(); l.State != StatePending || !l.Placeholder || l.Label != "www" || l.Version != 0 || !l.Healthy() || l.NextRenewal.IsZero() {
		t.Errorf("holding the placeholder: %+v", l)
	}
	ca := newAuthority(t, "acme ca", r.clk.Now)
	full1, key1 := acmeVersion(t, ca, authority.ECDSAP256)
	r.ks.setACME("www", "", 1, full1, key1)
	r.clk.Set(r.c.items[0].nextRefresh)
	r.pass(0)
	l := line()
	if l.State != StateOK || l.Placeholder || l.Version != 1 || !l.Expires.Equal(readCertFile(t, r.path("www.crt")).NotAfter) {
		t.Errorf("holding version 1: %+v", l)
	}

	// Files of another version, a key that is not the certificate's.
	full2, key2 := acmeVersion(t, ca, authority.ECDSAP256)
	certs, _ := parseBundle(full2)
	os.WriteFile(r.path("www.crt"), authority.EncodePEM(certs[0]), 0o644)
	os.WriteFile(r.path("www-full.crt"), full2, 0o644)
	if l := line(); l.State != StateInvalid || !strings.Contains(l.LastError, "does not match") {
		t.Errorf("key of another certificate: %+v", l)
	}
	os.WriteFile(r.path("www.key"), key2, 0o600)
	if l := line(); l.State != StateInvalid || !strings.Contains(l.LastError, "is not version 1") {
		t.Errorf("files of another version: %+v", l)
	}
	os.Remove(r.path("www-chain.crt"))
	if l := line(); l.State != StateMissing {
		t.Errorf("chain removed: %+v", l)
	}
	r.clk.Advance(time.Minute)
	r.pass(0)
	if l := line(); l.State != StateOK || l.Version != 1 {
		t.Errorf("after the repair: %+v", l)
	}
}
