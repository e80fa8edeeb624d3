package main

// The keyclient daemon against a real keyserver over loopback TLS, both
// driven by one hand-advanced clock: renewal timing, backoff and expiry are
// tested without sleeping. These tests live here, beside the keyclient
// binary, because the keyclient package itself never links the keyserver.

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyclient"
	"github.com/keysystem/keysystem/keyclient/clocktest"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

// newFakeClock starts at the real time: the keyserver's own authorities
// (GenerateAuthorities) are made with the real clock, so a fixed start
// would fall before their validity once the real date passes it.
func newFakeClock() *clocktest.Clock {
	c := clocktest.New(time.Now().UTC().Truncate(time.Second))
	c.Waits = make(chan time.Duration, 16)
	return c
}

type rig struct {
	t     *testing.T
	clk   *clocktest.Clock
	srv   *keyserver.Server
	st    store.Store
	auths *keyserver.Authorities
	addr  string
	stop  func()
}

// startKeyserver serves a keyserver on addr ("" for a fresh port) until
// the returned rig's stop is called; edit adds to its config.
func startKeyserver(t *testing.T, clk *clocktest.Clock, st store.Store, auths *keyserver.Authorities, addr string, edit ...func(*keyserver.Config)) *rig {
	t.Helper()
	cfg := keyserver.Config{
		Names:       []string{"127.0.0.1"},
		KeyGranting: auths.KeyGranting,
		Server:      auths.Server,
		Admin:       auths.Admin,
		Store:       st,
		CGCLifetime: 30 * 24 * time.Hour,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:         clk.Now,
	}
	for _, e := range edit {
		e(&cfg)
	}
	srv, err := keyserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &rig{t: t, clk: clk, srv: srv, st: st, auths: auths, addr: l.Addr().String(), stop: stop}
}

func newClient(t *testing.T, r *rig, node string, tok string, opts keyclient.Options, edit ...func(*keyclient.Config)) *keyclient.Client {
	t.Helper()
	cfg := &keyclient.Config{
		Node:        node,
		Servers:     []string{"https://" + r.addr},
		TrustAnchor: authority.SPKIPin(r.auths.Server.Root()),
		Token:       tok,
		StateDir:    filepath.Join(t.TempDir(), "state"),
	}
	for _, f := range edit {
		f(cfg)
	}
	opts.Clock = r.clk
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := keyclient.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func issue(t *testing.T, r *rig, node string) string {
	t.Helper()
	tok, _, err := r.srv.Admission().IssueToken(context.Background(), admission.TokenSpec{Node: node, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok.String()
}

func setup(t *testing.T) *rig {
	auths, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	return startKeyserver(t, newFakeClock(), store.NewMemory(), auths, "")
}

// nextWait returns what the daemon waits for next.
func nextWait(t *testing.T, clk *clocktest.Clock) time.Duration {
	t.Helper()
	select {
	case d := <-clk.Waits:
		return d
	case <-time.After(30 * time.Second): // only a hang guard: the daemon has no reason to be slow
		t.Fatal("the daemon never went to sleep")
		return 0
	}
}

func TestRunRenewsAtTwoThirdsWithJitter(t *testing.T) {
	r := setup(t)
	c := newClient(t, r, "web1", issue(t, r, "web1"), keyclient.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	life := 30 * 24 * time.Hour
	var serials []string
	for i := range 3 {
		d := nextWait(t, r.clk)
		cert, renewAt := c.State()
		if cert == nil {
			t.Fatalf("round %d: no CGC held", i)
		}
		serials = append(serials, cert.SerialNumber.String())
		// The wait ends at renewAt, which lies at 2/3 of the lifetime,
		// give or take a twentieth of it.
		if got := r.clk.Now().Add(d); !got.Equal(renewAt) {
			t.Fatalf("round %d: sleeps until %v, renewal due %v", i, got, renewAt)
		}
		lo := cert.NotBefore.Add(life*2/3 - life/20 - time.Minute)
		hi := cert.NotBefore.Add(life*2/3 + life/20 + time.Minute)
		if renewAt.Before(lo) || renewAt.After(hi) {
			t.Fatalf("round %d: renewal at %v, outside [%v, %v]", i, renewAt, lo, hi)
		}
		r.clk.Advance(d)
	}
	if serials[0] == serials[1] || serials[1] == serials[2] {
		t.Fatalf("serials did not change across renewals: %v", serials)
	}
	nodes, err := r.srv.Admission().ListNodes(context.Background())
	if err != nil || len(nodes) != 1 || nodes[0].Renewals < 2 {
		t.Fatalf("keyserver inventory after renewals: %+v, %v", nodes, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v", err)
	}
}

func TestRunBacksOffWhenTheKeyserverIsDown(t *testing.T) {
	r := setup(t)
	minB, maxB := 5*time.Second, 2*time.Minute
	c := newClient(t, r, "web1", issue(t, r, "web1"), keyclient.Options{MinBackoff: minB, MaxBackoff: maxB})
	if _, err := c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	r.stop() // the keyserver goes away
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	// First the daemon sleeps until the renewal is due...
	d := nextWait(t, r.clk)
	r.clk.Advance(d)
	// ...then each failure doubles the wait (half of it jitter), up to the cap.
	want := minB
	for i := range 8 {
		d := nextWait(t, r.clk)
		if d < want/2 || d > want {
			t.Fatalf("failure %d: waits %v, want within [%v, %v]", i+1, d, want/2, want)
		}
		want = min(want*2, maxB)
		r.clk.Advance(d)
	}

	// The keyserver comes back on the same address: the next try succeeds
	// and the daemon goes back to sleeping until the next renewal.
	before, _ := c.State()
	startKeyserver(t, r.clk, r.st, r.auths, r.addr)
	r.clk.Advance(nextWait(t, r.clk))
	d = nextWait(t, r.clk)
	after, renewAt := c.State()
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatal("no renewal after the keyserver came back")
	}
	if !r.clk.Now().Add(d).Equal(renewAt) {
		t.Fatalf("after recovery the daemon waits %v, not until the next renewal %v", d, renewAt)
	}
	cancel()
	<-done
}

func TestOnceReadmitsAfterExpiryOnlyWithAToken(t *testing.T) {
	r := setup(t)
	c := newClient(t, r, "web1", issue(t, r, "web1"), keyclient.Options{})
	rep, err := c.Once(context.Background(), false)
	if err != nil || rep.Action != keyclient.ActionAdmitted {
		t.Fatalf("first pass: %+v, %v", rep, err)
	}
	// The token is spent; once the CGC has expired the node needs a new one.
	r.clk.Advance(31 * 24 * time.Hour)
	if _, err := c.Once(context.Background(), false); !errors.Is(err, keyclient.ErrNoToken) {
		t.Fatalf("expired CGC and no token: err = %v, want ErrNoToken", err)
	}
}

// TestOnceRenewsAnExpiredCGCWithinTheWindow: a node switched off past its
// CGC's expiry comes back without a token while the keyserver's
// renew_after_expiry allows it, and needs one after.
func TestOnceRenewsAnExpiredCGCWithinTheWindow(t *testing.T) {
	r := setup(t)
	if err := r.srv.Admission().SetCGCLimits(admission.CGCLimits{Lifetime: 30 * 24 * time.Hour, RenewAfterExpiry: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	tok := issue(t, r, "web1")
	stateDir := filepath.Join(t.TempDir(), "state")
	inDir := func(cfg *keyclient.Config) { cfg.StateDir = stateDir }
	c := newClient(t, r, "web1", tok, keyclient.Options{}, inDir)
	if _, err := c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	old, _ := c.State()
	r.clk.Advance(old.NotAfter.Sub(r.clk.Now()) + 24*time.Hour) // expired a day ago
	// Restarted, with the spent token still in its config (as the
	// installer wrote it): the renewal is tried, not the token.
	c.Close()
	c = newClient(t, r, "web1", tok, keyclient.Options{}, inDir)
	t.Cleanup(func() { c.Close() })
	rep, err := c.Once(context.Background(), false)
	if err != nil || rep.Action != keyclient.ActionRenewed || !rep.Cert.NotAfter.After(r.clk.Now()) {
		t.Fatalf("expired a day ago, window two days: %+v, %v; want a renewal", rep, err)
	}
	cur, _ := c.State()
	r.clk.Advance(cur.NotAfter.Sub(r.clk.Now()) + 49*time.Hour) // past the window
	_, err = c.Once(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "token_invalid") || !strings.Contains(err.Error(), "would not renew") {
		t.Fatalf("expired past the window, only the spent token: %v, want the token refused after the renewal", err)
	}
}

// TestNewTokenFileReadmits: a revoked node still holds a CGC that looks
// valid; a new token in its token file brings it back.
func TestNewTokenFileReadmits(t *testing.T) {
	r := setup(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(issue(t, r, "web1")), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, r, "web1", "", keyclient.Options{}, func(cfg *keyclient.Config) { cfg.TokenFile = tokenFile })
	t.Cleanup(func() { c.Close() })
	if rep, err := c.Once(context.Background(), false); err != nil || rep.Action != keyclient.ActionAdmitted {
		t.Fatalf("first pass: %+v, %v", rep, err)
	}
	if _, err := os.Stat(tokenFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the spent token file is still there: %v", err)
	}
	if rep, err := c.Once(context.Background(), false); err != nil || rep.Action != keyclient.ActionNone {
		t.Fatalf("second pass: %+v, %v", rep, err)
	}
	if _, err := r.srv.Admission().RevokeNode(context.Background(), "web1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(issue(t, r, "web1")), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Once(context.Background(), false)
	if err != nil || rep.Action != keyclient.ActionAdmitted {
		t.Fatalf("with a new token file: %+v, %v; want admitted again", rep, err)
	}
	if n, _ := r.srv.Admission().Node(context.Background(), "web1"); n.Revoked || n.Serial != admission.SerialHex(rep.Cert) {
		t.Fatalf("keyserver's record after re-admission: %+v", n)
	}
}

func TestRenewalWithSupersededCGCIsRefused(t *testing.T) {
	r := setup(t)
	tok := issue(t, r, "web1")
	c := newClient(t, r, "web1", tok, keyclient.Options{})
	if _, err := c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	stolen, _ := c.State()
	if _, err := c.Once(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	// The renewal made the new CGC current, so the older one is dead.
	nodes, _ := r.srv.Admission().ListNodes(context.Background())
	current, _ := c.State()
	if nodes[0].Serial != admission.SerialHex(current) || nodes[0].Previous != admission.SerialHex(stolen) {
		t.Fatalf("keyserver did not make the new CGC current: %+v", nodes[0])
	}
	_, err := r.srv.Admission().Authenticate(context.Background(), []*x509.Certificate{stolen})
	if !errors.Is(err, admission.ErrCertSuperseded) {
		t.Fatalf("old CGC after confirmed renewal: %v, want superseded", err)
	}
}

func TestAnchorMismatchSendsNoToken(t *testing.T) {
	r := setup(t)
	tok := issue(t, r, "web1")
	other, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &keyclient.Config{
		Node:        "web1",
		Servers:     []string{"https://" + r.addr},
		TrustAnchor: authority.SPKIPin(other.Server.Root()), // a different keyserver's anchor
		Token:       tok,
		StateDir:    t.TempDir(),
	}
	c, err := keyclient.New(cfg, keyclient.Options{Clock: r.clk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Once(context.Background(), false); !errors.Is(err, keyclient.ErrAnchorMismatch) {
		t.Fatalf("err = %v, want ErrAnchorMismatch", err)
	}
	recs, _ := r.srv.Admission().ListTokens(context.Background())
	if len(recs) != 1 || recs[0].State != "pending" {
		t.Fatalf("the token was touched: %+v", recs)
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		t.Fatalf("the keyserver was asked anything at all: %v", ae)
	}
}

func TestSpentTokenFileIsRemoved(t *testing.T) {
	r := setup(t)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(issue(t, r, "web1")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, r, "web1", "", keyclient.Options{}, func(c *keyclient.Config) { c.TokenFile = path })
	if _, err := c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("token file still there after admission: %v", err)
	}
}

// The keyserver spent the token but its answer never arrived: the node's
// next attempt comes with the same key (kept in the state directory) and
// gets the very same CGC, instead of being locked out.
func TestAdmissionRetryAfterLostAnswerGetsTheSameCGC(t *testing.T) {
	r := setup(t)
	tok := issue(t, r, "web1")
	stateDir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := authority.EncodeKeyPEM(key)
	if err := os.WriteFile(filepath.Join(stateDir, keyclient.AdmissionKeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	lost, err := r.srv.Admission().Admit(context.Background(), admission.AdmitRequest{Token: tok, Node: "web1", CSR: csr})
	if err != nil {
		t.Fatal(err)
	}

	c := newClient(t, r, "web1", tok, keyclient.Options{}, func(c *keyclient.Config) { c.StateDir = stateDir })
	rep, err := c.Once(context.Background(), false)
	if err != nil {
		t.Fatalf("retry after a lost answer: %v", err)
	}
	if rep.Cert.SerialNumber.Cmp(lost.Cert.SerialNumber) != 0 {
		t.Fatalf("retry got serial %x, the lost answer carried %x", rep.Cert.SerialNumber, lost.Cert.SerialNumber)
	}
	if _, err := os.Stat(filepath.Join(stateDir, keyclient.AdmissionKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("admission key left behind after success: %v", err)
	}
}

// TestRenewalRetryAfterLostAnswer: the keyserver renewed, but its answer
// never arrived (here: the keyclient died before installing it). The old
// CGC is superseded for everything but repeating that renewal, and the
// keyclient repeats it with the key it wrote down first, so the node is
// not locked out; the key is not used again afterwards.
func TestRenewalRetryAfterLostAnswer(t *testing.T) {
	r := setup(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	inState := func(c *keyclient.Config) { c.StateDir = stateDir }
	c := newClient(t, r, "web1", issue(t, r, "web1"), keyclient.Options{}, inState)
	if _, err := c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	old, _ := c.State()
	c.Close()

	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := authority.EncodeKeyPEM(key)
	if err := os.WriteFile(filepath.Join(stateDir, keyclient.RenewalKeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	adm := r.srv.Admission()
	caller, err := adm.AuthenticateRenewal(context.Background(), []*x509.Certificate{old})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := adm.Renew(context.Background(), caller, csr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Authenticate(context.Background(), []*x509.Certificate{old}); !errors.Is(err, admission.ErrCertSuperseded) {
		t.Fatalf("old CGC after the renewal: %v, want superseded", err)
	}

	c = newClient(t, r, "web1", "", keyclient.Options{}, inState)
	rep, err := c.Once(context.Background(), true)
	if err != nil || rep.Action != keyclient.ActionRenewed {
		t.Fatalf("retry after a lost answer: %+v, %v", rep, err)
	}
	if !rep.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Error("the retry was not for the key written down before the lost renewal")
	}
	if rep.Cert.SerialNumber.Cmp(lost.Cert.SerialNumber) == 0 {
		t.Error("the retry got the lost certificate back; want a new one")
	}
	if n, _ := adm.Node(context.Background(), "web1"); n.Serial != admission.SerialHex(rep.Cert) || n.Previous != admission.SerialHex(old) {
		t.Errorf("keyserver's record after the retry: %+v", n)
	}
	if _, err := os.Stat(filepath.Join(stateDir, keyclient.RenewalKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("renewal key left behind after success: %v", err)
	}

	// The next renewal uses a new key.
	rep2, err := c.Once(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Error("a second renewal reused the spent renewal key")
	}
}
