package keyclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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

// reloadWaitDelay bounds how long a finished or killed reload command's
// output is waited for, should something it started keep it open.
const reloadWaitDelay = 5 * time.Second

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
	out, err := runCommand(ctx, it.spec.reload, it.spec.reloadTimeout,
		[]string{"KEYCLIENT_ITEM=" + it.spec.name, "KEYCLIENT_EVENT=" + string(ev)})
	if err == nil {
		c.log.Info("reload command ran", "item", it.spec.name, "event", ev)
		c.log.Debug("reload command output", "item", it.spec.name, "output", out)
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
	c.log.Error("reload command failed", "item", it.spec.name, "event", ev, "err", err, "output", out,
		"failures", it.reload.failures, "retry_in", wait.Round(time.Second))
	return err
}

// runCommand runs command with /bin/sh -c and env added to the client's
// own environment. Once timeout has passed, the command and everything it
// started (its process group) are killed.
func runCommand(ctx context.Context, command string, timeout time.Duration, env []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	out := &tailBuffer{max: maxReloadOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = reloadWaitDelay
	err := cmd.Run()
	switch {
	case errors.Is(err, exec.ErrWaitDelay):
		err = nil // it succeeded; something it left running holds its output open
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("killed after reload_timeout %v: %w", timeout, err)
	}
	return strings.TrimSpace(out.String()), err
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
