package acme_test

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

const oneKeyType = "    web:\n      sni: [www.example.test]\n      key_types: [ecdsa-p256]\n      to: {all: true}\n"

// TestRenewByARIThenByLifetime: the first version's renewal time comes
// from the CA's renewal window (ARI); when the CA moves the window into
// the past, the label is renewed at once by an order that says which
// certificate it replaces. Without renewal information, the next
// version is renewed at two thirds of its lifetime, not before. While
// one keyserver orders, another leaves the label alone.
func TestRenewByARIThenByLifetime(t *testing.T) {
	t.Parallel()
	e := newACMEEnv(t, oneKeyType)
	other := e.newManager()
	e.store.hook = func() {
		if ordered, err := other.Check(t.Context(), "web"); ordered || err != nil {
			t.Errorf("another keyserver's Check during the order = %v, %v; want it to leave the label alone", ordered, err)
		}
		if s, _ := other.Status(t.Context(), "web"); s == nil || s.Ordering == "" {
			t.Errorf("status during the order does not say a keyserver is ordering: %+v", s)
		}
	}
	v1 := e.obtain(t, "web")

	if ordered, err := e.mgr.Check(t.Context(), "web"); ordered || err != nil {
		t.Fatalf("Check of a fresh version = %v, %v; want nothing to do", ordered, err)
	}
	s, err := e.mgr.Status(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if s.Current == nil || s.Current.Number != 1 || s.RenewBy != "ari" || s.ARICheckedAt.IsZero() ||
		!s.RenewAt.After(v1.NotBefore) || !s.RenewAt.Before(v1.NotAfter) || s.Placeholder {
		t.Fatalf("status: %+v; want version 1 renewed in the CA's window", s)
	}

	served, err := e.mgr.Get(t.Context(), "web", "ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pemutil.ParseCertificate(served.Fullchain)
	if err != nil {
		t.Fatal(err)
	}
	certID, err := certificate.MakeARICertID(leaf)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	e.pebble.SetRenewalInfo(t, served.Fullchain, now.Add(-2*time.Hour), now.Add(-time.Hour))
	// The window is asked again only when due.
	if ordered, _ := e.mgr.Check(t.Context(), "web"); ordered {
		t.Fatal("renewed before the renewal information was asked again")
	}
	e.clock.Set(e.clock.Now().Add(acme.DefaultARIInterval))
	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err != nil {
		t.Fatalf("Check after the CA moved the window = %v, %v; want an order", ordered, err)
	}
	if n, replaces := e.orders.count(); n != 2 || replaces[1] != certID {
		t.Fatalf("%d orders replacing %q; want the second to replace %q", n, replaces, certID)
	}

	e.orders.mu.Lock()
	e.orders.noARI = true
	e.orders.mu.Unlock()
	// The clock is past version 2's staging time already.
	if ordered, err := e.mgr.Check(t.Context(), "web"); ordered || err != nil {
		t.Fatalf("Check of version 2 = %v, %v; want nothing to do", ordered, err)
	}
	s, _ = e.mgr.Status(t.Context(), "web")
	want := s.Current.NotBefore.Add(s.Current.NotAfter.Sub(s.Current.NotBefore) * 2 / 3)
	if s.Current.Number != 2 || s.RenewBy != "lifetime" || !s.RenewAt.Equal(want) {
		t.Fatalf("status: version %d renewed by %q at %v; want version 2 by lifetime at %v", s.Current.Number, s.RenewBy, s.RenewAt, want)
	}
	e.clock.Set(want.Add(-time.Second))
	if ordered, _ := e.mgr.Check(t.Context(), "web"); ordered {
		t.Fatal("renewed before two thirds of the lifetime")
	}
	e.clock.Set(want)
	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err != nil {
		t.Fatalf("Check at two thirds of the lifetime = %v, %v; want an order", ordered, err)
	}
	// The clock is two months on: version 3 is served, the one order
	// of these last 24 hours its own.
	if s, _ = e.mgr.Status(t.Context(), "web"); s.Current.Number != 3 || s.OrdersToday != 1 {
		t.Fatalf("status: version %d, %d orders today; want version 3, 1 order", s.Current.Number, s.OrdersToday)
	}
}

// notFound is a front end that does not pass the challenge path on.
func notFound(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	port, _ := strconv.Atoi(strings.TrimPrefix(l.Addr().String(), "127.0.0.1:"))
	return port
}

// TestFailedValidationBacksOff: a validation that fails at the CA is
// retried after 5 minutes, then 10, not sooner; a forced renewal skips
// the wait but not the daily cap, which stops orders until the oldest is
// a day old. The failures change nothing served.
func TestFailedValidationBacksOff(t *testing.T) {
	t.Parallel()
	e := newACMEEnvWith(t, envOptions{
		certs:  "    web:\n      sni: [www.example.test]\n      to: {all: true}\n",
		caPort: notFound(t),
		config: func(c *acme.Config) { c.MaxOrdersPerDay = 3 },
	})
	start := e.clock.Now()
	status := func() (n int, failures int, next time.Time, lastErr string) {
		t.Helper()
		s, err := e.mgr.Status(t.Context(), "web")
		if err != nil {
			t.Fatal(err)
		}
		n, _ = e.orders.count()
		return n, s.Failures, s.NextAttempt, s.LastError
	}

	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err == nil {
		t.Fatalf("Check = %v, %v; want a failed order", ordered, err)
	}
	if n, f, next, msg := status(); n != 1 || f != 1 || !next.Equal(start.Add(5*time.Minute)) || !strings.Contains(msg, "www.example.test") {
		t.Fatalf("after one failure: %d orders, %d failures, next %v, error %q", n, f, next.Sub(start), msg)
	}
	e.clock.Set(start.Add(5*time.Minute - time.Second))
	if ordered, err := e.mgr.Check(t.Context(), "web"); ordered || err != nil {
		t.Fatalf("Check while backing off = %v, %v", ordered, err)
	}
	e.clock.Set(start.Add(5 * time.Minute))
	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err == nil {
		t.Fatalf("Check after the wait = %v, %v; want a failed order", ordered, err)
	}
	if n, f, next, _ := status(); n != 2 || f != 2 || !next.Equal(start.Add(15*time.Minute)) {
		t.Fatalf("after two failures: %d orders, %d failures, next attempt %v after the first", n, f, next.Sub(start))
	}

	if err := e.mgr.Renew(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.Check(t.Context(), "web"); !errors.Is(err, acme.ErrOrderCap) {
		t.Fatalf("forced Check with 2 orders today (each stopped at its first key type) and 2 more to place = %v; want ErrOrderCap", err)
	}
	n, _, next, msg := status()
	if n != 2 || !next.Equal(start.Add(24*time.Hour)) || !strings.Contains(msg, "max_orders_per_day") {
		t.Fatalf("capped: %d orders, next attempt %v after the first, error %q", n, next.Sub(start), msg)
	}
	if s, err := e.mgr.Get(t.Context(), "web", "rsa-2048"); err != nil || !s.Placeholder {
		t.Errorf("served after the failures: %v, %v; want the placeholder", s, err)
	}
	if err := e.mgr.Renew(t.Context(), "nosuch"); !errors.Is(err, acme.ErrUnknownLabel) {
		t.Errorf("Renew of an unknown label = %v", err)
	}
}

// TestStagingFirst: with a staging directory, a new label's names are
// proven there first (its own account), and once proven are not again.
func TestStagingFirst(t *testing.T) {
	t.Parallel()
	e := newACMEEnvWith(t, envOptions{certs: oneKeyType, account: "      staging_directory: $DIRECTORY\n"})
	e.obtain(t, "web")
	if n, _ := e.orders.count(); n != 2 {
		t.Fatalf("%d orders for the first version; want one at staging, one for real", n)
	}
	for _, k := range []string{"acme/accounts/pebble", "acme/accounts/pebble@staging"} {
		if _, err := e.store.Get(t.Context(), k); err != nil {
			t.Errorf("account %s: %v", k, err)
		}
	}
	if err := e.mgr.Renew(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if ordered, err := e.mgr.Check(t.Context(), "web"); !ordered || err != nil {
		t.Fatalf("forced Check = %v, %v", ordered, err)
	}
	if n, _ := e.orders.count(); n != 3 {
		t.Fatalf("%d orders after a renewal; want 3: proven names go straight to the real CA", n)
	}
	if s, _ := e.mgr.Status(t.Context(), "web"); s.Forced || s.OrdersToday != 2 {
		t.Errorf("status: forced %v, %d orders today; want the renewal done, staging orders not counted", s.Forced, s.OrdersToday)
	}
}

// TestUnreachableDirectory: a CA that does not answer is an order that
// failed: a clear error in the label's status, the back-off, no account
// kept, and the placeholder still served.
func TestUnreachableDirectory(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := "https://" + l.Addr().String() + "/dir"
	l.Close()
	pol, err := policy.Parse("policy.yaml", []byte("groups: {}\nacme:\n  accounts:\n    ca: {directory: \""+dir+"\"}\n  certificates:\n    web:\n      sni: [www.example.test]\n      to: {all: true}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewMemory()
	sealer, _ := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
	c := &clock{now: time.Now()}
	m, err := acme.NewManager(acme.Config{Store: st, Sealer: sealer, Policy: func() *policy.Policy { return pol },
		HTTP01: &acme.HTTP01Provider{Store: st}, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	if ordered, err := m.Check(t.Context(), "web"); !ordered || err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Check = %v, %v; want a failed order naming the directory", ordered, err)
	}
	s, err := m.Status(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if s.Failures != 1 || !s.NextAttempt.Equal(c.Now().Add(acme.DefaultRetryMin)) || !strings.Contains(s.LastError, "connection refused") || s.OrdersToday != 0 {
		t.Errorf("status: %d failures, next attempt %v, error %q, %d orders today (none reached the CA)", s.Failures, s.NextAttempt.Sub(c.Now()), s.LastError, s.OrdersToday)
	}
	if _, err := st.Get(t.Context(), "acme/accounts/ca"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("an account was kept for a CA that never answered: %v", err)
	}
	if served, err := m.Get(t.Context(), "web", "ecdsa-p256"); err != nil || !served.Placeholder {
		t.Errorf("Get = %v, %v; want the placeholder", served, err)
	}
}
