package keyclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keysystem/keysystem/authority/keyfile"
	"github.com/keysystem/keysystem/keyserver/api"
)

// keepStatic does one pass for a static item. The keyserver is asked every
// refresh interval (with jitter), or at once when the client holds no
// content; in between, the file on disk is compared with the content last
// fetched and rewritten when missing or changed, or when its mode or
// owner is not as configured. The file is written only when it differs.
//
// The content last fetched is also kept in the state directory (see
// staticCopyPath), so that a restarted client holds it too: when the
// keyserver cannot be asked, a file lost or changed on disk is put back
// from it, and the pass still fails, to be retried.
func (c *Client) keepStatic(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	disk, readErr := os.ReadFile(it.spec.path)
	if readErr != nil && !errors.Is(readErr, os.ErrNotExist) {
		c.log.Warn("static file unreadable; it is rewritten", "item", it.spec.id, "err", readErr)
	}
	// After a restart without a copy in the state directory, a file that
	// still holds what was last fetched is taken as the content, so that
	// no fetch is needed before its time.
	if it.content == nil && readErr == nil && it.digest != "" && api.Digest(disk) == it.digest {
		it.content = disk
	}
	c.saveStaticCopy(it)
	if force || it.content == nil || !now.Before(it.nextRefresh) {
		act, err := c.refreshStatic(ctx, it, now, disk, readErr)
		if err == nil || it.content == nil {
			return act, err
		}
		// The keyserver could not be asked (or refused): the file is
		// kept as last fetched all the same.
		if act, werr := c.restoreStatic(it, disk, readErr); werr != nil || act != ActionNone {
			return act, errors.Join(err, werr)
		}
		return ActionFailed, err
	}
	return c.restoreStatic(it, disk, readErr)
}

// restoreStatic puts the content held back on disk when the file differs
// from it, or has another mode or owner than configured.
func (c *Client) restoreStatic(it *item, disk []byte, readErr error) (Action, error) {
	if readErr == nil && bytes.Equal(disk, it.content) {
		it.held = true
		if attrs := checkAttrs(it.spec); len(attrs.wrong) > 0 {
			c.log.Warn("static file has another mode or owner than configured; writing it again", "item", it.spec.id, "problem", attrs)
		} else {
			return ActionNone, nil
		}
	} else {
		c.log.Warn("static file missing or changed on disk; rewriting it", "item", it.spec.id, "path", it.spec.path)
	}
	if err := writeStatic(it.spec, it.content); err != nil {
		return ActionFailed, err
	}
	it.held = true
	return ActionRecreated, nil
}

// refreshStatic fetches the content and writes it if the file differs.
func (c *Client) refreshStatic(ctx context.Context, it *item, now time.Time, disk []byte, readErr error) (Action, error) {
	if err := c.requireCGC(now); err != nil {
		return ActionFailed, err
	}
	body, digest, err := c.remote.static(ctx, it.spec.name)
	if err != nil {
		return ActionFailed, err
	}
	if err := checkStatic(body, digest); err != nil {
		return ActionFailed, fmt.Errorf("keyclient: static %s: %w", it.spec.name, err)
	}
	digest = api.Digest(body)
	it.nextRefresh = now.Add(it.jittered(it.spec.refresh))
	why := ActionUpdated // the keyserver's content changed
	switch {
	case it.digest == "" && readErr != nil:
		why = ActionIssued // never had it
	case it.digest == digest:
		why = ActionRecreated // same content: the file was lost or changed
	}
	it.content, it.digest = body, digest
	c.saveStaticCopy(it)
	if readErr == nil && bytes.Equal(disk, body) {
		// The same content: only its mode or owner may want putting right.
		return c.restoreStatic(it, disk, readErr)
	}
	if err := writeStatic(it.spec, body); err != nil {
		return ActionFailed, err
	}
	it.held = true
	return why, nil
}

// writeStatic writes a static item's file atomically, with the item's
// owner and mode.
func writeStatic(s *itemSpec, body []byte) error {
	st, err := stageOwned(s, s.path, body, s.mode)
	if err != nil {
		return err
	}
	if err := st.Commit(); err != nil {
		return fmt.Errorf("keyclient: %s: %w", s.label(), err)
	}
	return nil
}

// staticCopyPath is where the state directory keeps the content last
// fetched for the static grant name.
func staticCopyPath(stateDir, name string) string {
	return filepath.Join(stateDir, StaticDir, name)
}

// loadStaticCopy takes the copy in the state directory as the item's
// content when it is what was last fetched (its digest is the one the
// status file recorded).
func (c *Client) loadStaticCopy(it *item) {
	if it.digest == "" {
		return
	}
	data, err := os.ReadFile(staticCopyPath(c.cfg.StateDir, it.spec.name))
	if err != nil || api.Digest(data) != it.digest {
		return
	}
	it.content, it.copied = data, it.digest
}

// saveStaticCopy keeps the content held in the state directory, unless
// the copy there is already of it. A failure is logged, not the item's:
// the copy only helps should the keyserver be unreachable after a restart.
func (c *Client) saveStaticCopy(it *item) {
	if it.content == nil || it.copied == it.digest {
		return
	}
	dir := filepath.Join(c.cfg.StateDir, StaticDir)
	err := os.MkdirAll(dir, 0o700)
	if err == nil {
		err = keyfile.Write(staticCopyPath(c.cfg.StateDir, it.spec.name), it.content, 0o600)
	}
	if err != nil {
		c.log.Warn("could not keep a copy of the static file in the state directory", "item", it.spec.id, "err", err)
		return
	}
	it.copied = it.digest
}
