package keyclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reloadState is an item's reload command still owed.
type reloadState struct {
	event    Action    // the latest change not yet reloaded for; "" when none is owed
	failures int       // consecutive failed runs
	next     time.Time // after a failure: not run again before this
	lastErr  error
}

// reloadGrace is, at most, how long a reload command has to end after
// SIGTERM before it is killed, and how long its output is waited for
// after it ended, should something it started keep it open. A tenth of
// the timeout when that is shorter.
const reloadGrace = 5 * time.Second

// maxReloadOutput is how much of a reload command's output is kept for
// the log.
const maxReloadOutput = 2048

// runReload runs the item's reload command for the change owed. A failure
// is retried with backoff; it never makes the item's files be requested
// again, since they are in place and good.
func (c *Client) runReload(ctx context.Context, it *item, now time.Time) error {
	ev := it.reload.event
	if it.spec.reload == "" {
		it.reload = reloadState{}
		return nil
	}
	// KEYCLIENT_ITEM is the grant (or static name, or acme label), which
	// two items of one grant or label share; KEYCLIENT_CERT tells those
	// apart.
	env := []string{"KEYCLIENT_ITEM=" + it.spec.name, "KEYCLIENT_EVENT=" + string(ev)}
	switch it.spec.typ {
	case TypeX509:
		env = append(env, "KEYCLIENT_CERT="+it.spec.cert)
	case TypeACME:
		cert := it.spec.cert
		if cert == "" {
			cert = it.spec.fullchain
		}
		env = append(env, "KEYCLIENT_CERT="+cert)
		if it.acme != nil {
			env = append(env, "KEYCLIENT_ACME_VERSION="+strconv.Itoa(it.acme.version))
		}
	}
	out, err := runCommand(ctx, it.spec.reload, it.spec.reloadTimeout, env)
	if err == nil {
		c.log.Info("reload command ran", "item", it.spec.id, "event", ev)
		c.log.Debug("reload command output", "item", it.spec.id, "output", out)
		it.reload = reloadState{}
		return nil
	}
	err = fmt.Errorf("keyclient: %s: reload command: %w", it.spec.label(), err)
	if ctx.Err() != nil {
		return err // stopping: still owed, and run at the next start
	}
	it.reload.failures++
	it.reload.lastErr = err
	wait := backoff(c.opts.MinBackoff, c.opts.MaxBackoff, it.reload.failures, it.rnd)
	it.reload.next = now.Add(wait)
	c.log.Error("reload command failed", "item", it.spec.id, "event", ev, "err", err, "output", out,
		"failures", it.reload.failures, "retry_in", wait.Round(time.Second))
	return err
}

// runCommand runs command with /bin/sh -c and env added to the client's
// own environment. Once timeout has passed (or ctx is done) while it
// runs, the command and everything it started (its process group) are
// sent SIGTERM, and what is left of the group after a grace (reloadGrace,
// or a tenth of the timeout when shorter) SIGKILL. A command that ended
// by itself is never signalled, nor what it left running.
func runCommand(ctx context.Context, command string, timeout time.Duration, env []string) (string, error) {
	grace := min(reloadGrace, timeout/10)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	out := &tailBuffer{max: maxReloadOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	terminated := make(chan time.Time, 1) // when SIGTERM was sent
	cmd.Cancel = func() error {
		terminated <- time.Now()
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	// After SIGTERM, Wait gives the shell this long before it kills it;
	// the rest of the group is seen to below.
	cmd.WaitDelay = grace
	err := cmd.Run()
	select {
	case at := <-terminated:
		killGroupAfter(cmd.Process.Pid, at.Add(grace))
	default:
	}
	switch {
	case errors.Is(err, exec.ErrWaitDelay) && ctx.Err() == nil:
		err = nil // it succeeded; something it left running holds its output open
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("terminated after reload_timeout %v (SIGTERM, then SIGKILL after %v): %w", timeout, grace, err)
	}
	return strings.TrimSpace(out.String()), err
}

// killGroupAfter sends SIGKILL to process group pgid at deadline, unless
// the group is gone by then.
func killGroupAfter(pgid int, deadline time.Time) {
	for time.Now().Before(deadline) {
		if errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
			return
		}
		time.Sleep(min(10*time.Millisecond, time.Until(deadline)))
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
