package keyclient

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
)

func states(lines []StatusLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l.Item+"="+l.State)
	}
	return out
}

func TestInspect(t *testing.T) {
	r := newRig(t, []Item{webItem(), bundleItem()}, false)
	r.ks.addGrant("web")
	r.ks.setStatic("bundle", []byte("roots\n"))
	if _, err := r.c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	inspect := func(now time.Time) []StatusLine {
		t.Helper()
		before, _ := os.ReadDir(r.state)
		lines, warnings, err := Inspect(r.cfg, now)
		if err != nil || len(warnings) > 0 {
			t.Fatal(err, warnings)
		}
		if after, _ := os.ReadDir(r.state); len(after) != len(before) {
			t.Fatal("Inspect wrote to the state directory")
		}
		return lines
	}
	lines := inspect(r.clk.Now())
	if got := states(lines); !slices.Equal(got, []string{"web1=ok", "web=ok", "bundle=ok"}) {
		t.Fatalf("after a good pass: %v", got)
	}
	for _, l := range lines {
		if !l.Healthy() {
			t.Errorf("%s is not healthy", l.Item)
		}
	}
	web := lines[1]
	if web.Type != TypeX509 || !web.NextRenewal.Equal(r.c.items[0].renewAt) || !web.Expires.Equal(r.c.items[0].notAfter) {
		t.Errorf("web line %+v: renewal and expiry are not the client's", web)
	}
	if cgc, renewAt := r.c.State(); !lines[0].Expires.Equal(cgc.NotAfter) || !lines[0].NextRenewal.Equal(renewAt) {
		t.Errorf("cgc line %+v", lines[0])
	}
	if !lines[2].NextRenewal.Equal(r.c.items[1].nextRefresh) {
		t.Errorf("bundle's next refresh %v, want %v", lines[2].NextRenewal, r.c.items[1].nextRefresh)
	}

	// Expiry, seen a month later; nothing checked the bundle since.
	if got := states(inspect(r.clk.Now().Add(40 * 24 * time.Hour))); !slices.Equal(got, []string{"web1=expired", "web=expired", "bundle=stale"}) {
		t.Errorf("a month on: %v", got)
	}

	// A failing item, as the status file says.
	r.ks.setFail("web", errors.New("keyserver unreachable"))
	r.clk.Set(r.c.items[0].nextRefresh)
	r.pass(0)
	lines = inspect(r.clk.Now())
	if lines[1].State != StateFailing || lines[1].Failures != 1 || !strings.Contains(lines[1].LastError, "keyserver unreachable") || lines[1].Healthy() {
		t.Errorf("failing item: %+v", lines[1])
	}

	// Files broken on disk.
	k, _ := authority.GenerateKey(authority.ECDSAP256)
	keyPEM, _ := authority.EncodeKeyPEM(k)
	os.WriteFile(r.path("web.key"), keyPEM, 0o600)
	os.WriteFile(r.path("bundle.pem"), []byte("changed"), 0o644)
	lines = inspect(r.clk.Now())
	if got := states(lines); !slices.Equal(got, []string{"web1=ok", "web=invalid", "bundle=invalid"}) {
		t.Fatalf("broken files: %v", got)
	}
	if !strings.Contains(lines[1].LastError, "does not match") || !strings.Contains(lines[2].LastError, "differs") {
		t.Errorf("errors: %q, %q", lines[1].LastError, lines[2].LastError)
	}
	os.Remove(r.path("web.crt"))
	os.Remove(r.path("bundle.pem"))
	os.Remove(filepath.Join(r.state, CGCFile))
	if got := states(inspect(r.clk.Now())); !slices.Equal(got, []string{"web1=missing", "web=missing", "bundle=missing"}) {
		t.Fatalf("missing files: %v", got)
	}
}

// Inspect needs nothing but the config: no state directory, no status
// file; and it refuses a bad config as such.
func TestInspectFreshNode(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Node: "web1", Servers: []string{"https://k:1"}, TrustAnchor: pin, StateDir: filepath.Join(dir, "state"),
		Items: []Item{{Type: TypeStatic, Name: "bundle", Path: filepath.Join(dir, "b")}}}
	lines, warnings, err := Inspect(cfg, time.Now())
	if err != nil || len(warnings) > 0 {
		t.Fatal(err, warnings)
	}
	if got := states(lines); !slices.Equal(got, []string{"web1=missing", "bundle=missing"}) {
		t.Fatalf("fresh node: %v", got)
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Error("Inspect created the state directory")
	}
	cfg.Items[0].Type = "bogus"
	var ce *ConfigError
	if _, _, err := Inspect(cfg, time.Now()); !errors.As(err, &ce) {
		t.Fatalf("bad config: %v, want a ConfigError", err)
	}
}

// Each item runs on its own in Run: one blocked in its reload command
// does not hold up another, and Run returns only when every item has
// stopped (the blocked command killed, its reload still owed).
func TestRunItemsDoNotBlockEachOther(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	web := webItem()
	web.Reload = "touch " + started + "; sleep 300"
	r := newRig(t, []Item{web, bundleItem()}, false)
	r.ks.addGrant("web")
	r.ks.setStatic("bundle", []byte("roots\n"))
	r.c.items[0].spec.reloadTimeout = 10 * time.Minute

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.c.Run(ctx) }()
	waitFor(t, "web's reload to start and bundle to be written", func() bool {
		_, e1 := os.Stat(started)
		_, e2 := os.Stat(r.path("bundle.pem"))
		return e1 == nil && e2 == nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second): // a hang guard only
		t.Fatal("Run did not return after cancel")
	}
	st, err := ReadStatus(r.state)
	if err != nil || st == nil {
		t.Fatalf("status: %v", err)
	}
	if e := st.find(TypeX509, "web"); e == nil || !e.ReloadPending || e.ReloadEvent != "issued" {
		t.Errorf("web's interrupted reload is not owed: %+v", e)
	}
}

// waitFor polls for a goroutine's effect, for Run tests only.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An item not checked for three check intervals is stale, unless it is
// waiting for a retry, or its reload command may still be running.
func TestInspectStale(t *testing.T) {
	slow := bundleItem()
	slow.Name, slow.Path = "slow", "slow.pem"
	slow.Reload, slow.ReloadTimeout = "true", "10m"
	r := newRig(t, []Item{webItem(), bundleItem(), slow}, false)
	r.ks.addGrant("web")
	r.ks.setStatic("bundle", []byte("roots\n"))
	r.ks.setStatic("slow", []byte("slow\n"))
	if _, err := r.c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ci := r.c.set.checkInterval
	at := func(d time.Duration) []string {
		t.Helper()
		lines, _, err := Inspect(r.cfg, r.clk.Now().Add(d))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if l.State == StateStale && (l.Healthy() || !strings.Contains(l.LastError, "is the keyclient daemon running?")) {
				t.Errorf("stale line %+v", l)
			}
		}
		return states(lines)
	}
	if got := at(3 * ci); !slices.Equal(got, []string{"web1=ok", "web=ok", "bundle=ok", "slow=ok"}) {
		t.Errorf("three check intervals on: %v", got)
	}
	if got := at(3*ci + time.Second); !slices.Equal(got, []string{"web1=ok", "web=stale", "bundle=stale", "slow=ok"}) {
		t.Errorf("just past three check intervals: %v", got)
	}
	if got := at(3*ci + 10*time.Minute + time.Second); !slices.Equal(got, []string{"web1=ok", "web=stale", "bundle=stale", "slow=stale"}) {
		t.Errorf("past the reload timeout too: %v", got)
	}

	// A failing item backing off is due at its retry, not at its check.
	r.ks.setFail("web", errors.New("keyserver unreachable"))
	r.clk.Set(r.c.items[0].nextRefresh)
	for range 8 {
		if res := r.pass(0); res.Err == nil {
			t.Fatalf("pass against a failing keyserver: %+v", res)
		}
		r.clk.Set(r.c.items[0].nextWake())
	}
	r.pass(0)
	retry := r.c.items[0].nextAttempt.Sub(r.clk.Now())
	if retry <= 3*ci {
		t.Fatalf("backoff %v too short for this test", retry)
	}
	if got := at(retry + ci); got[1] != "web=failing" {
		t.Errorf("before the retry is overdue: %v", got)
	}
	if got := at(retry + 2*ci + time.Second); got[1] != "web=stale" {
		t.Errorf("retry overdue: %v", got)
	}
}

// A status file that does not parse is a warning; the lines say what is
// on disk.
func TestInspectCorruptStatusFile(t *testing.T) {
	r := newRig(t, []Item{bundleItem()}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if _, err := r.c.Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.state, StatusFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	lines, warnings, err := Inspect(r.cfg, r.clk.Now())
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], StatusFile) || !strings.Contains(warnings[0], "unreadable") {
		t.Errorf("warnings %q", warnings)
	}
	if got := states(lines); !slices.Equal(got, []string{"web1=ok", "bundle=ok"}) {
		t.Errorf("lines: %v", got)
	}
}
