package keyclient

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reloadLog returns the lines the reload commands wrote.
func reloadLog(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(data), " ", "/"))
}

// The reload command runs once per change of the item's files, with the
// item and the event in its environment, and not when nothing changed.
func TestReloadRunsOncePerChange(t *testing.T) {
	log := filepath.Join(t.TempDir(), "reloads")
	it := webItem()
	it.Reload = `echo "$KEYCLIENT_ITEM $KEYCLIENT_EVENT" >> ` + log
	st := bundleItem()
	st.Reload = `echo "$KEYCLIENT_ITEM $KEYCLIENT_EVENT" >> ` + log
	r := newRig(t, []Item{it, st}, false)
	r.ks.addGrant("web")
	r.ks.setStatic("bundle", []byte("roots\n"))

	r.pass(0)
	r.pass(1)
	if got := reloadLog(t, log); strings.Join(got, ",") != "web/issued,bundle/issued" {
		t.Fatalf("reloads after the first pass: %v", got)
	}
	for range 5 {
		r.clk.Advance(time.Minute)
		r.pass(0)
		r.pass(1)
	}
	if got := reloadLog(t, log); len(got) != 2 {
		t.Fatalf("reloads without a change: %v", got)
	}
	r.clk.Set(r.c.items[0].renewAt)
	if res := r.pass(0); res.Action != ActionRenewed || res.ReloadErr != nil {
		t.Fatalf("renewal: %+v", res)
	}
	os.Remove(r.path("bundle.pem"))
	r.pass(1)
	if got := reloadLog(t, log); strings.Join(got[2:], ",") != "web/renewed,bundle/recreated" {
		t.Fatalf("reloads after renewal and repair: %v", got)
	}
	if st, _ := ReadStatus(r.state); st.Items[0].ReloadPending || st.Items[1].ReloadPending {
		t.Errorf("a reload that ran is still pending: %+v", st.Items)
	}
}

// A failed reload is retried with backoff; the files are not requested
// again because of it.
func TestReloadFailureIsRetried(t *testing.T) {
	dir := t.TempDir()
	log, okFile := filepath.Join(dir, "reloads"), filepath.Join(dir, "ok")
	it := webItem()
	it.Reload = `echo "try $KEYCLIENT_EVENT" >> ` + log + `; test -f ` + okFile
	r := newRig(t, []Item{it}, false)
	r.ks.addGrant("web")
	item := r.c.items[0]

	res := r.pass(0)
	if res.Action != ActionIssued || res.Err != nil || res.ReloadErr == nil {
		t.Fatalf("first pass: %+v, want issued with a failed reload", res)
	}
	if item.reload.failures != 1 || item.state(r.clk.Now()) != StateFailing {
		t.Fatalf("after a failed reload: %d failures, state %s", item.reload.failures, item.state(r.clk.Now()))
	}
	retry := item.reload.next
	if d := retry.Sub(r.clk.Now()); d < r.c.opts.MinBackoff/2 || d > r.c.opts.MinBackoff {
		t.Fatalf("retry in %v", d)
	}
	if !item.nextWake().Equal(retry) {
		t.Errorf("item wakes at %v, want the reload retry %v", item.nextWake(), retry)
	}
	r.clk.Advance(retry.Sub(r.clk.Now()) / 2)
	r.pass(0)
	if n := len(reloadLog(t, log)); n != 1 {
		t.Fatalf("reload retried before its time: %v", reloadLog(t, log))
	}
	r.clk.Set(retry)
	if res := r.pass(0); res.ReloadErr == nil || item.reload.failures != 2 {
		t.Fatalf("second try: %+v, %d failures", res, item.reload.failures)
	}
	if err := os.WriteFile(okFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.clk.Set(item.reload.next)
	if res := r.pass(0); res.ReloadErr != nil || item.reload.event != "" || item.state(r.clk.Now()) != StateOK {
		t.Fatalf("third try: %+v, state %s", res, item.state(r.clk.Now()))
	}
	if n := r.ks.count("sign web"); n != 1 {
		t.Errorf("%d certificates requested; a failing reload must not cause new ones", n)
	}
	if got := strings.Join(reloadLog(t, log), " "); got != "try/issued try/issued try/issued" {
		t.Errorf("reload runs: %q", got)
	}
}

// A reload still owed when the client stops is run by the next client,
// with the event it was owed for.
func TestPendingReloadSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "reloads")
	it := bundleItem()
	it.Reload = "exit 1"
	r := newRig(t, []Item{it}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	if res := r.pass(0); res.ReloadErr == nil {
		t.Fatalf("first pass: %+v", res)
	}
	st, err := ReadStatus(r.state)
	if err != nil || !st.Items[0].ReloadPending || st.Items[0].ReloadEvent != "issued" || st.Items[0].ReloadFailures != 1 {
		t.Fatalf("status file after a failed reload: %+v, %v", st, err)
	}

	// Restart with a working command.
	r.cfg.Items[0].Reload = `echo "$KEYCLIENT_ITEM $KEYCLIENT_EVENT" >> ` + log
	r.c = r.newClient()
	if ev := r.c.items[0].reload.event; ev != ActionIssued {
		t.Fatalf("restarted client owes reload %q, want issued", ev)
	}
	r.clk.Advance(time.Minute)
	if res := r.pass(0); res.Action != ActionNone || res.ReloadErr != nil {
		t.Fatalf("pass after restart: %+v", res)
	}
	if got := reloadLog(t, log); strings.Join(got, ",") != "bundle/issued" {
		t.Fatalf("reloads after restart: %v", got)
	}
	if st, _ := ReadStatus(r.state); st.Items[0].ReloadPending {
		t.Error("status file still shows the reload pending")
	}
}

// A reload command that outlives its timeout is killed with everything it
// started.
func TestReloadTimeoutKillsTheCommand(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	_, err := runCommand(context.Background(), "sleep 60 & echo $! > "+pidFile+"; wait", 300*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "killed after reload_timeout") {
		t.Fatalf("err = %v, want killed", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
	data, _ := os.ReadFile(pidFile)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(data)))
	if perr != nil {
		t.Fatalf("pid file: %q", data)
	}
	// The child was sent SIGKILL with its group; the kernel takes a
	// moment to finish it, and it may linger as a zombie until init reaps
	// it, which signal 0 still finds, so its state is looked at.
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the command's child %d survived the timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// Field 3, after the parenthesised command name, is the state.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestRunCommandOutputAndEnv(t *testing.T) {
	out, err := runCommand(context.Background(), `echo "$KEYCLIENT_ITEM"; echo oops >&2; exit 3`, time.Minute, []string{"KEYCLIENT_ITEM=web"})
	if err == nil || !strings.Contains(out, "web") || !strings.Contains(out, "oops") {
		t.Fatalf("out %q, err %v", out, err)
	}
	var tb tailBuffer
	tb.max = 4
	tb.Write([]byte("abcdef"))
	if tb.String() != "cdef" {
		t.Errorf("tail %q", tb.String())
	}
}
