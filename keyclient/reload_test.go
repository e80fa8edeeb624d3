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
	if err == nil || !strings.Contains(err.Error(), "terminated after reload_timeout") {
		t.Fatalf("err = %v, want killed", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
	waitGone(t, readPid(t, pidFile))
}

// readPid reads the pid a command wrote to path.
func readPid(t *testing.T, path string) int {
	t.Helper()
	data, _ := os.ReadFile(path)
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("pid file: %q", data)
	}
	return pid
}

// waitGone fails unless process pid ends within a few seconds. It was
// sent SIGKILL with its group; the kernel takes a moment to finish it,
// and it may linger as a zombie until init reaps it, which signal 0 still
// finds, so alive looks at its state.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the command's child %d survived", pid)
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

// With once alone nothing retries a reload command that failed: Once
// counts it as a failure; the reload stays owed, and a later Once runs it.
func TestOnceCountsAFailedReload(t *testing.T) {
	okFile := filepath.Join(t.TempDir(), "ok")
	it := bundleItem()
	it.Reload = "test -f " + okFile
	r := newRig(t, []Item{it}, false)
	r.ks.setStatic("bundle", []byte("roots\n"))
	rep, err := r.c.Once(context.Background(), false)
	if !errors.Is(err, ErrItemsFailed) || !strings.Contains(err.Error(), "bundle (reload)") {
		t.Fatalf("err = %v, want ErrItemsFailed naming bundle's reload", err)
	}
	if res := rep.Items[0]; res.Action != ActionIssued || res.Err != nil || res.ReloadErr == nil {
		t.Fatalf("result %+v", res)
	}
	if st, _ := ReadStatus(r.state); !st.Items[0].ReloadPending {
		t.Error("the failed reload is not owed in the status file")
	}
	os.WriteFile(okFile, nil, 0o644)
	r.c = r.newClient()
	if rep, err := r.c.Once(context.Background(), false); err != nil || rep.Items[0].ReloadErr != nil {
		t.Fatalf("next once: %v, %+v", err, rep.Items[0])
	}
	if st, _ := ReadStatus(r.state); st.Items[0].ReloadPending {
		t.Error("the reload is still owed after it ran")
	}
}

// At the timeout the command's group is sent SIGTERM first, so that it
// can end cleanly; what ignores SIGTERM is killed after the grace.
func TestReloadTimeoutTerminatesFirst(t *testing.T) {
	dir := t.TempDir()
	termFile, pidFile := filepath.Join(dir, "term"), filepath.Join(dir, "pid")
	cmd := `trap 'echo term > ` + termFile + `; exit 0' TERM
sh -c 'trap "" TERM; echo $$ > ` + pidFile + `; sleep 60' &
wait`
	start := time.Now()
	_, err := runCommand(context.Background(), cmd, time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "terminated after reload_timeout") {
		t.Fatalf("err = %v, want terminated (even though the command exited 0 on SIGTERM)", err)
	}
	if data, _ := os.ReadFile(termFile); strings.TrimSpace(string(data)) != "term" {
		t.Error("the command was not sent SIGTERM")
	}
	if d := time.Since(start); d < time.Second+50*time.Millisecond || d > 10*time.Second {
		t.Errorf("took %v, want the timeout and the grace (a tenth of it)", d)
	}
	waitGone(t, readPid(t, pidFile)) // it ignored SIGTERM
}

// A command that ends by itself is never signalled, nor what it left
// running in its group.
func TestReloadLeavesWhatItStartedAlone(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	_, err := runCommand(context.Background(), "sleep 30 >/dev/null 2>&1 & echo $! > "+pidFile, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := readPid(t, pidFile)
	defer syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(1500 * time.Millisecond) // past the timeout
	if !alive(pid) {
		t.Error("what the command left running was killed")
	}
}
