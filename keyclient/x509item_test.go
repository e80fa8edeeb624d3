package keyclient

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
)

func TestX509IssueWritesEveryFile(t *testing.T) {
	it := webItem()
	it.DNS, it.IPs, it.URIs = []string{"extra.web.internal"}, []string{"10.9.9.9"}, []string{"spiffe://example.org/web"}
	it.Mode = "0640"
	r := newRig(t, []Item{it}, false)
	r.ks.addGrant("web")

	res := r.pass(0)
	if res.Err != nil || res.Action != ActionIssued {
		t.Fatalf("first pass: %+v", res)
	}
	// The CSR carried the key and the extra names, nothing else.
	csr := r.ks.lastCSR
	if csr.Subject.String() != "" || !slices.Equal(csr.DNSNames, []string{"extra.web.internal"}) ||
		len(csr.IPAddresses) != 1 || !csr.IPAddresses[0].Equal(net.ParseIP("10.9.9.9")) || len(csr.URIs) != 1 {
		t.Errorf("CSR asked for subject %q, %v %v %v", csr.Subject, csr.DNSNames, csr.IPAddresses, csr.URIs)
	}
	leaf := readCertFile(t, r.path("web.crt"))
	keyPEM, _ := os.ReadFile(r.path("web.key"))
	key, err := pemutil.ParseKey(keyPEM)
	if err != nil || keyutil.VerifyPair(leaf.PublicKey, key) != nil {
		t.Fatalf("key file does not match the certificate: %v", err)
	}
	if !slices.Contains(leaf.DNSNames, "extra.web.internal") || leaf.Subject.CommonName != "web1" {
		t.Errorf("certificate names %v %q", leaf.DNSNames, leaf.Subject.CommonName)
	}
	chain, _ := readBundle("chain", r.path("chain.crt"))
	full, _ := readBundle("fullchain", r.path("full.crt"))
	ca := readCertFile(t, r.path("ca.crt"))
	if len(chain) != 1 || !chain[0].Equal(r.ks.auth.Chain()[0]) {
		t.Errorf("chain file holds %d certificates, want the intermediate", len(chain))
	}
	if len(full) != 2 || !full[0].Equal(leaf) || !full[1].Equal(chain[0]) {
		t.Errorf("fullchain is not leaf + chain")
	}
	if !ca.Equal(r.ks.auth.Root()) {
		t.Errorf("ca file is not the authority's root")
	}
	for name, want := range map[string]os.FileMode{"web.key": 0o640, "web.crt": 0o644, "chain.crt": 0o644, "full.crt": 0o644, "ca.crt": 0o644} {
		if fi, err := os.Stat(r.path(name)); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, %v; want %v", name, fi.Mode().Perm(), err, want)
		}
	}
	st, err := ReadStatus(r.state)
	if err != nil || st == nil || len(st.Items) != 1 {
		t.Fatalf("status file: %+v, %v", st, err)
	}
	if e := st.Items[0]; e.State != StateOK || e.Serial != authority.SerialText(leaf) || e.RootPin != authority.SPKIPin(ca) || !e.NotAfter.Equal(leaf.NotAfter) {
		t.Errorf("status entry %+v", e)
	}
}

// The keyserver's root is the authority's, and a chain-less authority
// gives an empty chain file.
func TestX509WithoutIntermediate(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	a, err := authority.Generate(authority.Config{Name: "flat", Now: r.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	r.ks.auth = a
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	if data, _ := os.ReadFile(r.path("chain.crt")); len(data) != 0 {
		t.Errorf("chain file for an authority without intermediates: %q", data)
	}
	if _, err := readX509Files(r.c.items[0].spec); err != nil {
		t.Errorf("files written do not check out: %v", err)
	}
}

// Files that are missing, unreadable or disagree are repaired at the next
// check with a new certificate for a new key; good files are left alone
// and cost no keyserver call.
func TestX509FileProblemsAreRepairedAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		break_ func(r *rig)
	}{
		{"cert missing", func(r *rig) { os.Remove(r.path("web.crt")) }},
		{"every file missing", func(r *rig) {
			for _, f := range []string{"web.key", "web.crt", "chain.crt", "full.crt", "ca.crt"} {
				os.Remove(r.path(f))
			}
		}},
		// A symbolic link to itself cannot be read, even by root, which
		// these tests may run as.
		{"key unreadable", func(r *rig) { os.Remove(r.path("web.key")); os.Symlink("web.key", r.path("web.key")) }},
		{"key garbage", func(r *rig) { os.WriteFile(r.path("web.key"), []byte("garbage"), 0o600) }},
		{"key of another certificate", func(r *rig) {
			k, _ := authority.GenerateKey(authority.ECDSAP256)
			pemKey, _ := authority.EncodeKeyPEM(k)
			os.WriteFile(r.path("web.key"), pemKey, 0o600)
		}},
		{"fullchain of another certificate", func(r *rig) {
			os.WriteFile(r.path("full.crt"), authority.EncodePEM(r.ks.auth.Chain()...), 0o644)
		}},
		{"ca of another authority", func(r *rig) {
			other := newAuthority(t, "other", r.clk.Now)
			os.WriteFile(r.path("ca.crt"), authority.EncodePEM(other.Root()), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, []Item{webItem()}, false)
			r.ks.addGrant("web")
			if res := r.pass(0); res.Err != nil {
				t.Fatal(res.Err)
			}
			first := readCertFile(t, r.path("web.crt"))
			r.clk.Advance(time.Minute)
			if res := r.pass(0); res.Action != ActionNone || r.ks.count("sign web") != 1 || r.ks.count("grant web") != 1 {
				t.Fatalf("good files: %+v, %d signs, %d grant calls; want nothing done", res, r.ks.count("sign web"), r.ks.count("grant web"))
			}

			tc.break_(r)
			if _, err := readX509Files(r.c.items[0].spec); err == nil {
				t.Fatal("the broken files check out")
			}
			r.clk.Advance(time.Minute)
			res := r.pass(0)
			if res.Err != nil || res.Action != ActionRecreated {
				t.Fatalf("after breaking: %+v, want recreated", res)
			}
			if _, err := readX509Files(r.c.items[0].spec); err != nil {
				t.Fatalf("repaired files do not check out: %v", err)
			}
			if again := readCertFile(t, r.path("web.crt")); again.Equal(first) || r.ks.count("sign web") != 2 {
				t.Error("no new certificate was requested")
			}
		})
	}
}

// A config change that the certificate does not satisfy (another key
// type, another extra name) is noticed by the file check itself.
func TestX509ConfigChangeIsNoticedWithoutTheKeyserver(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, edit := range []func(s *itemSpec){
		func(s *itemSpec) { s.keyType = authority.Ed25519 },
		func(s *itemSpec) { s.dns = []string{"new.web.internal"} },
	} {
		edit(r.c.items[0].spec)
		var fp *FileProblem
		if _, err := readX509Files(r.c.items[0].spec); !errors.As(err, &fp) || fp.Missing {
			t.Errorf("after a config change: %v, want a file problem", err)
		}
		if res := r.pass(0); res.Action != ActionRecreated || res.Err != nil {
			t.Fatalf("after a config change: %+v", res)
		}
		leaf := readCertFile(t, r.path("web.crt"))
		if authority.KeyTypeOf(leaf.PublicKey) != string(r.c.items[0].spec.keyType) {
			t.Errorf("new certificate has a %s key", authority.KeyTypeOf(leaf.PublicKey))
		}
	}
}

func TestX509RenewsAtTwoThirdsWithJitter(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web", func(g *api.GrantInfo) { g.Lifetime = api.Duration(r.ks.lifetime) })
	start := r.clk.Now()
	res := r.pass(0)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	leaf := readCertFile(t, r.path("web.crt"))
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	lo, hi := leaf.NotBefore.Add(life*2/3-life/20), leaf.NotBefore.Add(life*2/3+life/20)
	if res.RenewAt.Before(lo) || res.RenewAt.After(hi) {
		t.Fatalf("renewal at %v, outside [%v, %v]", res.RenewAt, lo, hi)
	}
	it := r.c.items[0]
	if next := it.nextWake(); !next.Equal(start.Add(time.Minute)) {
		t.Errorf("next wake %v, want the next check a minute on", next)
	}
	// Checks up to just before the renewal do not renew.
	r.clk.Set(res.RenewAt.Add(-time.Second))
	if got := r.pass(0); got.Action != ActionNone || !got.RenewAt.Equal(res.RenewAt) {
		t.Fatalf("before the renewal time: %+v", got)
	}
	r.clk.Set(res.RenewAt)
	got := r.pass(0)
	if got.Action != ActionRenewed || got.Err != nil {
		t.Fatalf("at the renewal time: %+v", got)
	}
	renewed := readCertFile(t, r.path("web.crt"))
	if renewed.Equal(leaf) || !got.RenewAt.After(res.RenewAt) {
		t.Errorf("renewal did not bring a new certificate and a later renewal time")
	}
	// Two items issued at the same moment draw different renewal times.
	r2 := newRig(t, []Item{webItem(), {Type: TypeX509, Grant: "api", Key: "api.key", Cert: "api.crt"}}, false)
	r2.ks.addGrant("web")
	r2.ks.addGrant("api")
	a, b := r2.pass(0), r2.pass(1)
	if a.RenewAt.Equal(b.RenewAt) {
		t.Errorf("two certificates issued together are renewed at the same moment %v", a.RenewAt)
	}
}

// The grant is asked for only every refresh interval (with jitter), not at
// every check, and a certificate that no longer matches it is replaced.
func TestX509GrantIsComparedEveryRefresh(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	it := r.c.items[0]
	start := r.clk.Now()
	if d := it.nextRefresh.Sub(start); d < 54*time.Minute || d > 66*time.Minute {
		t.Fatalf("next refresh in %v, want 1h ± 10%%", d)
	}
	for r.clk.Now().Add(time.Minute).Before(it.nextRefresh) {
		r.clk.Advance(time.Minute)
		if res := r.pass(0); res.Action != ActionNone || res.Err != nil {
			t.Fatalf("check at %v: %+v", r.clk.Now(), res)
		}
	}
	if n := r.ks.count("grant web"); n != 1 {
		t.Fatalf("%d grant calls during an hour of checks, want only the one at issue", n)
	}
	r.clk.Set(it.nextRefresh)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("grant web") != 2 {
		t.Fatalf("at the refresh: %+v, %d grant calls", res, r.ks.count("grant web"))
	}

	// The policy now grants one more name.
	r.ks.addGrant("web", func(g *api.GrantInfo) { g.DNSNames = append(g.DNSNames, "www.example.org") })
	r.clk.Set(it.nextRefresh)
	res := r.pass(0)
	if res.Action != ActionUpdated || res.Err != nil {
		t.Fatalf("after the grant changed: %+v, want updated", res)
	}
	if leaf := readCertFile(t, r.path("web.crt")); !slices.Contains(leaf.DNSNames, "www.example.org") {
		t.Errorf("updated certificate lacks the new name: %v", leaf.DNSNames)
	}

	// The grant moves to another authority: new root, new certificate.
	r.ks.auth = newAuthority(t, "web2", r.clk.Now)
	r.ks.addGrant("web", func(g *api.GrantInfo) { g.DNSNames = append(g.DNSNames, "www.example.org") })
	r.clk.Set(it.nextRefresh)
	if res := r.pass(0); res.Action != ActionUpdated {
		t.Fatalf("after the root changed: %+v, want updated", res)
	}
	if ca := readCertFile(t, r.path("ca.crt")); !ca.Equal(r.ks.auth.Root()) {
		t.Error("ca file still holds the old root")
	}
}

// A failing grant check backs off and leaves the good files alone.
func TestX509RefreshFailureKeepsFiles(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	before, _ := os.ReadFile(r.path("web.crt"))
	r.ks.setFail("web", errors.New("connection refused"))
	r.clk.Set(r.c.items[0].nextRefresh)
	res := r.pass(0)
	if res.Action != ActionFailed || res.Err == nil {
		t.Fatalf("refresh against a failing keyserver: %+v", res)
	}
	if after, _ := os.ReadFile(r.path("web.crt")); string(after) != string(before) {
		t.Error("a failed refresh changed the certificate")
	}
	if st := r.c.items[0].state(r.clk.Now()); st != StateFailing {
		t.Errorf("state %s, want failing", st)
	}
}

func TestX509RefusedGrants(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(g *api.GrantInfo)
		want string
	}{
		{"static grant", func(g *api.GrantInfo) { g.Type = TypeStatic }, `is of type "static"`},
		{"unrenderable", func(g *api.GrantInfo) { g.Error = "template: no IPs" }, "cannot be rendered"},
		{"key type not allowed", func(g *api.GrantInfo) { g.KeyTypes = []string{"rsa-3072"} }, "does not allow key_type ecdsa-p256"},
		{"root pin mismatch", func(g *api.GrantInfo) { g.RootPin = pin }, "but the grant names root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, []Item{webItem()}, false)
			r.ks.addGrant("web", tc.edit)
			res := r.pass(0)
			if res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
				t.Fatalf("pass: %+v, want an error saying %q", res, tc.want)
			}
			if _, err := os.Stat(r.path("web.key")); !errors.Is(err, os.ErrNotExist) {
				t.Error("files written for a refused certificate")
			}
		})
	}
}

func TestCheckIssuedRefuses(t *testing.T) {
	clk := newTestClock()
	ks := newFakeKeyserver(t, clk.Now)
	g := ks.addGrant("web")
	key, _ := authority.GenerateKey(authority.ECDSAP256)
	csr, _ := csrPEM(key, nil)
	good, err := ks.sign(context.Background(), "web", csr)
	if err != nil {
		t.Fatal(err)
	}
	other := newAuthority(t, "other", clk.Now)
	otherKey, _ := authority.GenerateKey(authority.ECDSAP256)
	for _, tc := range []struct {
		name string
		edit func(r *api.CertificateResponse)
		key  bool // answer for another key
		want string
	}{
		{"good", nil, false, ""},
		{"another key", nil, true, "for another key"},
		{"another grant", func(r *api.CertificateResponse) { r.Grant = "db" }, false, `grant "db"`},
		{"garbage", func(r *api.CertificateResponse) { r.Certificate = "nope" }, false, "unusable certificate"},
		{"two leaves", func(r *api.CertificateResponse) { r.Certificate += r.Certificate }, false, "unusable certificate"},
		{"root of another authority", func(r *api.CertificateResponse) {
			r.Root = string(authority.EncodePEM(other.Root()))
		}, false, "but the grant names root"},
		{"chain missing", func(r *api.CertificateResponse) { r.Chain = "" }, false, "does not verify"},
		{"root is the intermediate", func(r *api.CertificateResponse) { r.Root = r.Chain }, false, "not a self-signed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := *good
			if tc.edit != nil {
				tc.edit(&resp)
			}
			k := key
			if tc.key {
				k = otherKey
			}
			_, _, _, err := checkIssued(&resp, k, "web", g, clk.Now())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("good answer refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
	// Expired by now: refused.
	clk.Advance(31 * 24 * time.Hour)
	if _, _, _, err := checkIssued(good, key, "web", g, clk.Now()); err == nil {
		t.Error("expired certificate accepted")
	}
}

func TestGrantMismatch(t *testing.T) {
	clk := newTestClock()
	ks := newFakeKeyserver(t, clk.Now)
	g := ks.addGrant("web", func(g *api.GrantInfo) { g.URIs = []string{"spiffe://example.org/web1"} })
	spec := &itemSpec{keyType: authority.ECDSAP256, dns: []string{"extra.internal"}}
	key, _ := authority.GenerateKey(authority.ECDSAP256)
	csr, _ := csrPEM(key, spec.csrTemplate())
	resp, err := ks.sign(context.Background(), "web", csr)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, root, err := checkIssued(resp, key, "web", g, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	rootPin := authority.SPKIPin(root)
	if err := grantMismatch(leaf, rootPin, g, spec); err != nil {
		t.Fatalf("matching certificate: %v", err)
	}
	if g2 := *g; grantMismatch(leaf, rootPin, func() *api.GrantInfo { g2.Subject = "CN=web1"; return &g2 }(), spec) != nil {
		t.Fatal("the same subject counts as a difference")
	}
	for _, tc := range []struct {
		name    string
		edit    func(g *api.GrantInfo, s *itemSpec) string // returns the root pin to compare
		wantSub string
	}{
		{"common name", func(g *api.GrantInfo, _ *itemSpec) string { g.CommonName = "web2"; return rootPin }, `common name "web1", the grant says "web2"`},
		{"subject", func(g *api.GrantInfo, _ *itemSpec) string { g.Subject = "CN=web1,O=example"; return rootPin }, `subject "CN=web1", the grant says "CN=web1,O=example"`},
		{"granted name missing", func(g *api.GrantInfo, _ *itemSpec) string {
			g.DNSNames = append(g.DNSNames, "new.example.org")
			return rootPin
		}, "DNS name new.example.org is granted but not in the certificate"},
		{"name no longer granted", func(g *api.GrantInfo, _ *itemSpec) string { g.DNSNames = g.DNSNames[:1]; return rootPin }, "DNS name web1.internal is in the certificate but neither granted nor asked for"},
		{"extra no longer asked for", func(_ *api.GrantInfo, s *itemSpec) string { s.dns = nil; return rootPin }, "DNS name extra.internal is in the certificate but neither"},
		{"granted IP missing", func(g *api.GrantInfo, _ *itemSpec) string { g.IPAddresses = []string{"10.0.0.2"}; return rootPin }, "IP address 10.0.0.2 is granted"},
		{"granted URI missing", func(g *api.GrantInfo, _ *itemSpec) string {
			g.URIs = []string{"spiffe://example.org/x"}
			return rootPin
		}, "URI spiffe://example.org/x is granted"},
		{"usage", func(g *api.GrantInfo, _ *itemSpec) string { g.Usage = "server"; return rootPin }, `usage differs from "server"`},
		{"root unknown", func(*api.GrantInfo, *itemSpec) string { return "" }, "root it was issued under is not known"},
		{"root changed", func(g *api.GrantInfo, _ *itemSpec) string { g.RootPin = pin; return rootPin }, "issued under root"},
		{"key type dropped", func(g *api.GrantInfo, _ *itemSpec) string { g.KeyTypes = []string{"ed25519"}; return rootPin }, "key type ecdsa-p256 is no longer allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g2, s2 := *g, *spec
			p := tc.edit(&g2, &s2)
			err := grantMismatch(leaf, p, &g2, &s2)
			if err == nil || !strings.Contains(err.Error(), tc.wantSub) {
				t.Fatalf("mismatch = %v, want one saying %q", err, tc.wantSub)
			}
		})
	}
}

// Two items: one whose grant is denied fails and backs off, doubling each
// time; the other is issued and keeps its own schedule.
func TestItemBackoffIsIsolated(t *testing.T) {
	r := newRig(t, []Item{webItem(), bundleItem()}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	// no grant "web": denied
	web, bundle := r.c.items[0], r.c.items[1]
	want := r.c.opts.MinBackoff
	for i := range 10 {
		res := r.pass(0)
		if res.Action != ActionFailed || web.failures != i+1 {
			t.Fatalf("attempt %d: %+v, failures %d", i+1, res, web.failures)
		}
		var ae *api.Error
		if !errors.As(res.Err, &ae) || ae.Code != api.CodeGrantDenied {
			t.Fatalf("attempt %d: err = %v, want grant_denied", i+1, res.Err)
		}
		wait := web.nextAttempt.Sub(r.clk.Now())
		if wait < want/2 || wait > want {
			t.Fatalf("attempt %d: retry in %v, want within [%v, %v]", i+1, wait, want/2, want)
		}
		if !web.nextWake().Equal(web.nextAttempt) {
			t.Fatalf("a failing item wakes at %v, not at its retry %v", web.nextWake(), web.nextAttempt)
		}
		// While it backs off, a pass calls nothing.
		calls := r.ks.count("grant web")
		r.clk.Advance(wait / 2)
		if res := r.pass(0); res.Err == nil || r.ks.count("grant web") != calls {
			t.Fatalf("pass during backoff called the keyserver or forgot the error: %+v", res)
		}
		// The other item is untouched by all this.
		bres := r.pass(1)
		if bres.Err != nil || bundle.failures != 0 || !bundle.nextWake().Equal(r.clk.Now().Add(time.Minute)) {
			t.Fatalf("the healthy item: %+v, failures %d, wakes %v", bres, bundle.failures, bundle.nextWake())
		}
		r.clk.Set(web.nextAttempt)
		want = min(2*want, r.c.opts.MaxBackoff)
	}
	// The grant appears: the next attempt succeeds and the count resets.
	r.ks.addGrant("web")
	if res := r.pass(0); res.Action != ActionIssued || web.failures != 0 || !web.nextAttempt.IsZero() {
		t.Fatalf("after the grant appeared: %+v, failures %d", res, web.failures)
	}
}

// Once does one pass over every item; a failing item does not stop the
// others, and the error says which failed.
func TestOnceReportsEveryItem(t *testing.T) {
	r := newRig(t, []Item{webItem(), bundleItem(), {Type: TypeX509, Grant: "db", Key: "db.key", Cert: "db.crt"}}, false)
	r.ks.addGrant("web")
	r.ks.setStatic("bundle", []byte("roots\n"))
	rep, err := r.c.Once(context.Background(), false)
	if !errors.Is(err, ErrItemsFailed) || !strings.Contains(err.Error(), "db") {
		t.Fatalf("err = %v, want ErrItemsFailed naming db", err)
	}
	if rep.Action != ActionNone || rep.Cert == nil {
		t.Errorf("CGC part of the report: %+v", rep)
	}
	var got []Action
	for _, it := range rep.Items {
		got = append(got, it.Action)
	}
	if !slices.Equal(got, []Action{ActionIssued, ActionIssued, ActionFailed}) {
		t.Fatalf("actions %v", got)
	}
	if rep.Items[0].NotAfter.IsZero() || rep.Items[0].RenewAt.IsZero() || rep.Items[1].RenewAt.IsZero() {
		t.Errorf("results lack times: %+v", rep.Items)
	}
	// Once ignores backoff: a second call tries db again at once.
	r.ks.addGrant("db")
	rep, err = r.c.Once(context.Background(), false)
	if err != nil || rep.Items[2].Action != ActionIssued || rep.Items[0].Action != ActionNone {
		t.Fatalf("second pass: %v, %+v", err, rep.Items)
	}
	// force renews the CGC, every certificate and fetches every file. No
	// keyserver answers for the CGC here: its failure is reported, and the
	// items, for which the CGC held is still good, go ahead all the same.
	rep, err = r.c.Once(context.Background(), true)
	if err == nil || errors.Is(err, ErrItemsFailed) || rep.Action != ActionFailed || rep.Cert == nil {
		t.Fatalf("forced pass with an unreachable keyserver: %v, CGC %s", err, rep.Action)
	}
	if rep.Items[0].Action != ActionRenewed || rep.Items[2].Action != ActionRenewed || r.ks.count("static bundle") != 2 {
		t.Fatalf("forced pass: %+v, %d static fetches", rep.Items, r.ks.count("static bundle"))
	}
}

// Until the node holds a CGC, items wait: no keyserver call, not counted
// as failures, and a CGC arriving wakes them.
func TestItemsWaitForTheCGC(t *testing.T) {
	r := newRig(t, []Item{webItem()}, true)
	r.ks.addGrant("web")
	sig := r.c.cgcSignal()
	res := r.pass(0)
	it := r.c.items[0]
	if !errors.Is(res.Err, ErrNoCGC) || it.failures != 0 || !it.waitingCGC || it.state(r.clk.Now()) != StatePending {
		t.Fatalf("without a CGC: %+v, failures %d, state %s", res, it.failures, it.state(r.clk.Now()))
	}
	if r.ks.count("grant web")+r.ks.count("sign web") != 0 {
		t.Fatal("an item called the keyserver without a CGC")
	}
	if !it.nextWake().Equal(it.nextCheck) {
		t.Errorf("waiting item wakes at %v, want its next check %v", it.nextWake(), it.nextCheck)
	}
	writeCGC(t, r.state, "web1", r.clk.Now)
	if err := r.c.loadState(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sig:
	default:
		t.Fatal("getting a CGC did not signal waiting items")
	}
	if res := r.pass(0); res.Action != ActionIssued {
		t.Fatalf("with a CGC: %+v", res)
	}
}

// The owner and group given are set on every file of the item (the key
// with its mode, the certificates 0644). Setting an owner takes root.
func TestX509FilesGetOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	it := webItem()
	it.Owner, it.Group, it.Mode = "65534", "65533", "0640"
	r := newRig(t, []Item{it}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	for _, f := range []string{"web.key", "web.crt", "chain.crt", "full.crt", "ca.crt"} {
		fi, err := os.Stat(r.path(f))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 65534 || st.Gid != 65533 {
			t.Errorf("%s: owner %d:%d, want 65534:65533", f, st.Uid, st.Gid)
		}
	}
}

// logTo sends the client's log to a buffer the test reads.
func (r *rig) logTo() *syncBuffer {
	b := &syncBuffer{}
	r.c.log = slog.New(slog.NewTextHandler(b, nil))
	return b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// An item's files are written as a set: when one of them cannot be
// staged, none is renamed, and the key and certificate a service uses
// stay as they were.
func TestX509FilesAreWrittenAsASet(t *testing.T) {
	it := webItem()
	it.FullChain = "sub/full.crt"
	r := newRig(t, []Item{it}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	before := map[string][]byte{}
	for _, f := range []string{"web.key", "web.crt", "chain.crt", "ca.crt"} {
		before[f], _ = os.ReadFile(r.path(f))
	}
	// The fullchain's directory becomes a file: the fullchain cannot be
	// read, so the files are repaired, and it cannot be written either.
	if err := os.RemoveAll(r.path("sub")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.path("sub"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Err == nil || r.ks.count("sign web") != 2 {
		t.Fatalf("repair with an unwritable fullchain: %+v, %d signs", res, r.ks.count("sign web"))
	}
	for f, data := range before {
		if got, _ := os.ReadFile(r.path(f)); !bytes.Equal(got, data) {
			t.Errorf("%s changed although the set could not be written", f)
		}
	}
	entries, _ := os.ReadDir(r.dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("staged file %s left behind", e.Name())
		}
	}
}

// The files' mode and owner are checked with their content. Another mode
// or owner is put right by writing the files again; a key that others
// could read is replaced with a new key and certificate.
func TestX509FileModeAndOwner(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string // the key's, in the config
		change  func(r *rig) error
		newCert bool
		root    bool
		noCA    bool // the item keeps no ca file (a repair must not need the root)
	}{
		{"certificate 0600", "", func(r *rig) error { return os.Chmod(r.path("web.crt"), 0o600) }, false, false, false},
		{"certificate 0600, no ca file", "", func(r *rig) error { return os.Chmod(r.path("web.crt"), 0o600) }, false, false, true},
		{"ca 0666", "", func(r *rig) error { return os.Chmod(r.path("ca.crt"), 0o666) }, false, false, false},
		{"key narrower than configured", "0640", func(r *rig) error { return os.Chmod(r.path("web.key"), 0o600) }, false, false, false},
		{"key readable by all", "", func(r *rig) error { return os.Chmod(r.path("web.key"), 0o644) }, true, false, false},
		{"key readable by the group", "", func(r *rig) error { return os.Chmod(r.path("web.key"), 0o640) }, true, false, false},
		{"key of another user", "", func(r *rig) error { return os.Chown(r.path("web.key"), 65534, -1) }, true, true, false},
		{"key of another group, group-readable", "0640", func(r *rig) error { return os.Chown(r.path("web.key"), -1, 65533) }, true, true, false},
		{"key of another group, not group-readable", "", func(r *rig) error { return os.Chown(r.path("web.key"), -1, 65533) }, false, true, false},
		{"certificate of another user", "", func(r *rig) error { return os.Chown(r.path("web.crt"), 65534, 65533) }, false, true, false},
		{"key replaced by a link", "", func(r *rig) error {
			if err := os.Rename(r.path("web.key"), r.path("elsewhere.key")); err != nil {
				return err
			}
			return os.Symlink(r.path("elsewhere.key"), r.path("web.key"))
		}, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("chown needs root")
			}
			it := webItem()
			it.Mode = tc.mode
			if tc.noCA {
				it.CA = ""
			}
			r := newRig(t, []Item{it}, false)
			r.ks.addGrant("web")
			if res := r.pass(0); res.Err != nil {
				t.Fatal(res.Err)
			}
			log := r.logTo()
			first := readCertFile(t, r.path("web.crt"))
			r.clk.Advance(time.Minute)
			if res := r.pass(0); res.Action != ActionNone {
				t.Fatalf("good files: %+v", res)
			}
			if err := tc.change(r); err != nil {
				t.Fatal(err)
			}
			if lines, _, _ := Inspect(r.cfg, r.clk.Now()); lines[1].State != StateInvalid {
				t.Errorf("status shows %s (%s), want invalid", lines[1].State, lines[1].LastError)
			}
			r.clk.Advance(time.Minute)
			res := r.pass(0)
			if res.Err != nil || res.Action != ActionRecreated {
				t.Fatalf("after the change: %+v, want recreated", res)
			}
			again := readCertFile(t, r.path("web.crt"))
			if renewed := !again.Equal(first); renewed != tc.newCert || (r.ks.count("sign web") == 2) != tc.newCert {
				t.Errorf("new certificate: %v, %d signs; want a new one: %v", renewed, r.ks.count("sign web"), tc.newCert)
			}
			if tc.newCert && !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "compromised") == tc.newCert {
				t.Errorf("log:\n%s", log)
			}
			if a := checkAttrs(r.c.items[0].spec); len(a.wrong) > 0 {
				t.Errorf("files still differ from the config: %s", a)
			}
			if _, err := readX509Files(r.c.items[0].spec); err != nil {
				t.Errorf("files do not check out: %v", err)
			}
			if lines, _, _ := Inspect(r.cfg, r.clk.Now()); lines[1].State != StateOK {
				t.Errorf("status shows %s (%s), want ok", lines[1].State, lines[1].LastError)
			}
		})
	}
}

// A node whose clock is behind the keyserver's by more than the
// backdating takes a certificate that is not yet valid by its own clock.
func TestX509ClockBehindTheKeyserver(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.auth = r.ks.auth.WithClock(func() time.Time { return r.clk.Now().Add(time.Hour) })
	r.ks.addGrant("web")
	res := r.pass(0)
	if res.Err != nil || res.Action != ActionIssued {
		t.Fatalf("pass with the clock an hour behind: %+v", res)
	}
	if leaf := readCertFile(t, r.path("web.crt")); !leaf.NotBefore.After(r.clk.Now()) {
		t.Fatal("the certificate is valid by the node's clock: the test shows nothing")
	}
	// Still refused: a root the grant does not name, an expired certificate.
	g := r.ks.addGrant("web")
	key, _ := authority.GenerateKey(authority.ECDSAP256)
	csr, _ := csrPEM(key, nil)
	resp, err := r.ks.sign(context.Background(), "web", csr)
	if err != nil {
		t.Fatal(err)
	}
	g2 := *g
	g2.RootPin = pin
	if _, _, _, err := checkIssued(resp, key, "web", &g2, r.clk.Now()); err == nil {
		t.Error("a certificate under another root accepted")
	}
	if _, _, _, err := checkIssued(resp, key, "web", g, r.clk.Now().Add(31*24*time.Hour)); err == nil {
		t.Error("an expired certificate accepted")
	}
}

// A grant found changed is asked for once: the answer that showed the
// change is the one the new certificate is checked against.
func TestX509UpdateAsksForTheGrantOnce(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web")
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	if n := r.ks.count("grant web"); n != 1 {
		t.Fatalf("%d grant calls for the first issue, want 1", n)
	}
	r.ks.addGrant("web", func(g *api.GrantInfo) { g.DNSNames = append(g.DNSNames, "www.example.org") })
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionUpdated {
		t.Fatalf("after the grant changed: %+v", res)
	}
	if n := r.ks.count("grant web"); n != 2 {
		t.Errorf("%d grant calls after the update, want 2 (one at issue, one at the refresh)", n)
	}
}

// A certificate due as soon as it is issued (here: a lifetime so short
// that two thirds of it lie before the backdated start) is not renewed
// at once, again and again: the next renewal waits MinBackoff, doubling.
func TestX509DueAtOnceDoesNotSpin(t *testing.T) {
	r := newRig(t, []Item{webItem()}, false)
	r.ks.addGrant("web")
	r.ks.lifetime = 10 * time.Second
	log := r.logTo()
	res := r.pass(0)
	if res.Action != ActionIssued {
		t.Fatalf("first pass: %+v", res)
	}
	it := r.c.items[0]
	minB := r.c.opts.MinBackoff
	if d := it.renewAt.Sub(r.clk.Now()); d != minB {
		t.Fatalf("renewal in %v, want MinBackoff %v", d, minB)
	}
	if !strings.Contains(log.String(), "due for renewal already") {
		t.Errorf("no warning logged:\n%s", log)
	}
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("sign web") != 1 {
		t.Fatalf("a second pass at once: %+v, %d signs", res, r.ks.count("sign web"))
	}
	if wake := it.nextWake(); wake.Before(r.clk.Now().Add(minB)) {
		t.Errorf("item wakes at %v, before MinBackoff", wake)
	}
	r.clk.Advance(minB)
	if res := r.pass(0); res.Action != ActionRenewed {
		t.Fatalf("after MinBackoff: %+v", res)
	}
	if d := it.renewAt.Sub(r.clk.Now()); d != 2*minB {
		t.Errorf("second renewal in %v, want %v", d, 2*minB)
	}
	// A normal certificate again: normal renewal time.
	r.ks.lifetime = 30 * 24 * time.Hour
	r.clk.Advance(2 * minB)
	if res := r.pass(0); res.Action != ActionRenewed || it.dueEarly != 0 || it.renewAt.Before(r.clk.Now().Add(24*time.Hour)) {
		t.Fatalf("with a normal lifetime: %+v, due early %d", res, it.dueEarly)
	}
}

// Two x509 items may share a grant, with their own files (one key type
// each, say): each has its own id in the status file and its own reload,
// which can tell them apart by KEYCLIENT_CERT.
func TestTwoItemsForOneGrant(t *testing.T) {
	log := filepath.Join(t.TempDir(), "reloads")
	reload := `echo "$KEYCLIENT_ITEM $KEYCLIENT_CERT" >> ` + log
	ec := Item{Type: TypeX509, Grant: "web", Key: "ec.key", Cert: "ec.crt", Reload: reload}
	ed := Item{Type: TypeX509, Grant: "web", Key: "ed.key", Cert: "ed.crt", KeyType: "ed25519", Reload: reload}
	r := newRig(t, []Item{ec, ed}, false)
	r.ks.addGrant("web")
	rep, err := r.c.Once(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Items[0].Name != "web" || rep.Items[1].Name != "web#2" || rep.Items[0].Action != ActionIssued || rep.Items[1].Action != ActionIssued {
		t.Fatalf("results: %+v", rep.Items)
	}
	if authority.KeyTypeOf(readCertFile(t, r.path("ed.crt")).PublicKey) != "ed25519" || authority.KeyTypeOf(readCertFile(t, r.path("ec.crt")).PublicKey) != "ecdsa-p256" {
		t.Error("the items' certificates are not of their key types")
	}
	data, _ := os.ReadFile(log)
	if got := strings.TrimSpace(string(data)); got != "web "+r.path("ec.crt")+"\nweb "+r.path("ed.crt") {
		t.Errorf("reloads:\n%s", got)
	}
	st, err := ReadStatus(r.state)
	if err != nil || len(st.Items) != 2 || st.Items[0].Name != "web" || st.Items[1].Name != "web#2" || st.Items[0].Serial == st.Items[1].Serial {
		t.Fatalf("status file: %+v, %v", st, err)
	}
	lines, _, err := Inspect(r.cfg, r.clk.Now())
	if err != nil || !slices.Equal(states(lines), []string{"web1=ok", "web=ok", "web#2=ok"}) {
		t.Fatalf("status: %v, %v", states(lines), err)
	}
	// A restart finds each item's record by its id.
	r.c = r.newClient()
	if a, b := r.c.items[0], r.c.items[1]; a.serial != st.Items[0].Serial || b.serial != st.Items[1].Serial {
		t.Errorf("restored serials %s, %s; want %s, %s", a.serial, b.serial, st.Items[0].Serial, st.Items[1].Serial)
	}
	r.clk.Advance(time.Minute)
	if rep, err := r.c.Once(context.Background(), false); err != nil || rep.Items[0].Action != ActionNone || rep.Items[1].Action != ActionNone {
		t.Fatalf("after a restart: %v, %+v", err, rep.Items)
	}
}
