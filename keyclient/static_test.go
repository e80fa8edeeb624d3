package keyclient

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

func TestStaticItem(t *testing.T) {
	r := newRig(t, []Item{bundleItem()}, false)
	it := r.c.items[0]
	r.ks.setStatic("bundle", []byte("root one\n"))
	res := r.pass(0)
	if res.Action != ActionIssued || res.Err != nil {
		t.Fatalf("first pass: %+v", res)
	}
	if got, _ := os.ReadFile(r.path("bundle.pem")); string(got) != "root one\n" {
		t.Fatalf("file holds %q", got)
	}
	if fi, _ := os.Stat(r.path("bundle.pem")); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want the default 0644", fi.Mode().Perm())
	}
	if d := res.RenewAt.Sub(r.clk.Now()); d < 54*time.Minute || d > 66*time.Minute {
		t.Errorf("next refresh in %v, want 1h ± 10%%", d)
	}

	// Checks between refreshes read the file and call nothing.
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("static bundle") != 1 {
		t.Fatalf("check: %+v, %d fetches", res, r.ks.count("static bundle"))
	}

	// A file changed or removed on disk is put back at the next check,
	// from what was fetched, without a fetch.
	os.WriteFile(r.path("bundle.pem"), []byte("tampered"), 0o644)
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionRecreated || r.ks.count("static bundle") != 1 {
		t.Fatalf("changed on disk: %+v, %d fetches", res, r.ks.count("static bundle"))
	}
	os.Remove(r.path("bundle.pem"))
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionRecreated {
		t.Fatalf("removed: %+v", res)
	}
	if got, _ := os.ReadFile(r.path("bundle.pem")); string(got) != "root one\n" {
		t.Fatalf("file holds %q after repair", got)
	}

	// At the refresh the same content is not written again.
	fi1, _ := os.Stat(r.path("bundle.pem"))
	r.clk.Set(it.nextRefresh)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("static bundle") != 2 {
		t.Fatalf("refresh with unchanged content: %+v, %d fetches", res, r.ks.count("static bundle"))
	}
	if fi2, _ := os.Stat(r.path("bundle.pem")); !os.SameFile(fi1, fi2) {
		t.Error("unchanged content was written again")
	}

	// New content at the keyserver arrives at the next refresh.
	r.ks.setStatic("bundle", []byte("root one\nroot two\n"))
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone {
		t.Fatalf("before the refresh: %+v", res)
	}
	r.clk.Set(it.nextRefresh)
	if res := r.pass(0); res.Action != ActionUpdated {
		t.Fatalf("refresh with new content: %+v", res)
	}
	if got, _ := os.ReadFile(r.path("bundle.pem")); string(got) != "root one\nroot two\n" {
		t.Fatalf("file holds %q", got)
	}
}

// Content that does not match its digest, or is too large, is never
// written.
func TestStaticBadContentIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   []byte
		digest string
		want   string
	}{
		{"wrong digest", []byte("a"), api.Digest([]byte("b")), "does not match its digest"},
		{"no digest", []byte("a"), "", "without its X-Keysystem-Digest"},
		{"too large", make([]byte, api.MaxStaticBytes+1), "", "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, []Item{bundleItem()}, false)
			r.ks.setStatic("bundle", tc.body)
			if tc.digest != "" || tc.name == "no digest" {
				r.ks.digest["bundle"] = tc.digest
			}
			res := r.pass(0)
			if res.Action != ActionFailed || res.Err == nil || !strings.Contains(res.Err.Error(), tc.want) {
				t.Fatalf("pass: %+v, want an error saying %q", res, tc.want)
			}
			if _, err := os.Stat(r.path("bundle.pem")); !os.IsNotExist(err) {
				t.Error("refused content was written")
			}
		})
	}
	if err := checkStatic([]byte("x"), strings.ToUpper(api.Digest([]byte("x")))); err != nil {
		t.Errorf("digest in upper case refused: %v", err)
	}
}

// A restarted client takes the file on disk as the content when it
// matches the digest recorded, and asks the keyserver only when the
// refresh is due.
func TestStaticRestartNeedsNoFetch(t *testing.T) {
	r := newRig(t, []Item{bundleItem()}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	due := r.c.items[0].nextRefresh
	r.c = r.newClient()
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone || r.ks.count("static bundle") != 1 {
		t.Fatalf("after a restart: %+v, %d fetches", res, r.ks.count("static bundle"))
	}
	if got := r.c.items[0].nextRefresh; !got.Equal(due) {
		t.Errorf("refresh after restart at %v, want the recorded %v", got, due)
	}
}

// A directory that does not exist yet is created for an item's files, and
// the status file is rewritten after every pass, with the pass's time.
func TestMissingDirectoryAndStatusEveryPass(t *testing.T) {
	it := bundleItem()
	it.Path = "etc/ssl/new/bundle.pem"
	r := newRig(t, []Item{it}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.Action != ActionIssued {
		t.Fatalf("pass: %+v", res)
	}
	if fi, err := os.Stat(r.path("etc/ssl/new")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("directory: %v, %v", fi, err)
	}
	for range 3 {
		r.clk.Advance(time.Minute)
		r.pass(0)
		st, err := ReadStatus(r.state)
		if err != nil || !st.Items[0].CheckedAt.Equal(r.clk.Now()) || st.Items[0].State != StateOK {
			t.Fatalf("status after a pass at %v: %+v, %v", r.clk.Now(), st, err)
		}
	}
}

// A static file with another mode than configured is written again, from
// the content held, without a fetch.
func TestStaticModeIsPutRight(t *testing.T) {
	r := newRig(t, []Item{bundleItem()}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := os.Chmod(r.path("bundle.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionRecreated || r.ks.count("static bundle") != 1 {
		t.Fatalf("after chmod: %+v, %d fetches", res, r.ks.count("static bundle"))
	}
	if fi, _ := os.Stat(r.path("bundle.pem")); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	// The same at a refresh that finds the content unchanged.
	if err := os.Chmod(r.path("bundle.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.clk.Set(r.c.items[0].nextRefresh)
	if res := r.pass(0); res.Action != ActionRecreated || r.ks.count("static bundle") != 2 {
		t.Fatalf("refresh after chmod: %+v, %d fetches", res, r.ks.count("static bundle"))
	}
	if fi, _ := os.Stat(r.path("bundle.pem")); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
}

// The content last fetched is kept in the state directory (0600), so that
// a restarted client whose keyserver is unreachable still puts back a
// file lost or changed on disk; the item fails all the same, and the
// reload command runs for the file put back.
func TestStaticRestoredWithoutTheKeyserver(t *testing.T) {
	reloads := filepath.Join(t.TempDir(), "reloads")
	it := bundleItem()
	it.Reload = `echo "$KEYCLIENT_EVENT" >> ` + reloads
	r := newRig(t, []Item{it}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.Err != nil {
		t.Fatal(res.Err)
	}
	cp := filepath.Join(r.state, StaticDir, "bundle")
	if data, err := os.ReadFile(cp); err != nil || string(data) != "roots\n" {
		t.Fatalf("copy in the state directory: %q, %v", data, err)
	}
	if fi, _ := os.Stat(cp); fi.Mode().Perm() != 0o600 {
		t.Errorf("copy has mode %v, want 0600", fi.Mode().Perm())
	}

	for _, tc := range []struct {
		name    string
		break_  func() error
		due     bool // the refresh is due: the keyserver is asked, and fails
		wantErr bool
	}{
		{"removed, refresh not due", func() error { return os.Remove(r.path("bundle.pem")) }, false, false},
		{"removed, refresh due", func() error { return os.Remove(r.path("bundle.pem")) }, true, true},
		{"changed, refresh due", func() error { return os.WriteFile(r.path("bundle.pem"), []byte("tampered"), 0o644) }, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.c = r.newClient() // holds no content in memory
			r.ks.setFail("bundle", errors.New("connection refused"))
			defer r.ks.setFail("bundle", nil)
			if err := tc.break_(); err != nil {
				t.Fatal(err)
			}
			r.clk.Advance(time.Minute)
			if tc.due {
				r.clk.Set(r.c.items[0].nextRefresh)
			}
			fetches := r.ks.count("static bundle")
			res := r.pass(0)
			if (res.Err != nil) != tc.wantErr || (res.Err != nil) != (res.Action == ActionFailed) || (r.ks.count("static bundle") > fetches) != tc.due {
				t.Fatalf("pass with the keyserver down: %+v, want a failure: %v, a fetch: %v", res, tc.wantErr, tc.due)
			}
			if got, _ := os.ReadFile(r.path("bundle.pem")); string(got) != "roots\n" {
				t.Errorf("file holds %q, want it put back", got)
			}
			if ev := r.c.items[0].reload.event; ev != "" {
				t.Errorf("reload still owed: %q (it should have run)", ev)
			}
		})
	}
	data, _ := os.ReadFile(reloads)
	if got := strings.Fields(string(data)); strings.Join(got, ",") != "issued,recreated,recreated,recreated" {
		t.Errorf("reloads: %v", got)
	}
	// A copy that is not what the status file recorded is not used.
	if err := os.WriteFile(cp, []byte("forged\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(r.path("bundle.pem"))
	r.c = r.newClient()
	r.ks.setFail("bundle", errors.New("connection refused"))
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Err == nil {
		t.Fatalf("pass: %+v", res)
	}
	if _, err := os.Stat(r.path("bundle.pem")); !os.IsNotExist(err) {
		t.Error("a forged copy was written")
	}
}

// A pass that changes nothing but CheckedAt rewrites the status file only
// once the entry on disk is a check interval old; any other change is
// written at once.
func TestStatusWritesAreThrottled(t *testing.T) {
	r := newRig(t, []Item{bundleItem()}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.Action != ActionIssued {
		t.Fatalf("pass: %+v", res)
	}
	path := filepath.Join(r.state, StatusFile)
	stat := func() os.FileInfo {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	written := stat()
	checked := r.clk.Now()
	for range 5 {
		r.clk.Advance(10 * time.Second)
		r.pass(0) // as a Once, or a wake-up for a retry, would
		if !os.SameFile(written, stat()) {
			t.Fatalf("status file rewritten %v after the last write, for CheckedAt alone", r.clk.Now().Sub(checked))
		}
	}
	r.clk.Set(checked.Add(time.Minute))
	r.pass(0)
	if os.SameFile(written, stat()) {
		t.Fatal("status file not rewritten a check interval on")
	}
	written = stat()
	// A change is written at once.
	r.ks.setFail("bundle", errors.New("connection refused"))
	r.clk.Set(r.c.items[0].nextRefresh)
	r.pass(0)
	if os.SameFile(written, stat()) {
		t.Fatal("a failure was not written at once")
	}
	st, err := ReadStatus(r.state)
	if err != nil || st.Items[0].State != StateFailing || !st.Items[0].CheckedAt.Equal(r.clk.Now()) {
		t.Errorf("status %+v, %v", st, err)
	}
}
