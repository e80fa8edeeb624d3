package keyclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// keepStatic does one pass for a static item. The keyserver is asked every
// refresh interval (with jitter), or at once when the client holds no
// content; in between, the file on disk is compared with the content last
// fetched and rewritten when missing or changed. The file is written only
// when its content differs.
func (c *Client) keepStatic(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	disk, readErr := os.ReadFile(it.spec.path)
	if readErr != nil && !errors.Is(readErr, os.ErrNotExist) {
		c.log.Warn("static file unreadable; it is rewritten", "item", it.spec.name, "err", readErr)
	}
	// After a restart, a file that still holds what was last fetched is
	// taken as the content, so that no fetch is needed before its time.
	if it.content == nil && readErr == nil && it.digest != "" && contentDigest(disk) == it.digest {
		it.content = disk
	}
	if force || it.content == nil || !now.Before(it.nextRefresh) {
		return c.refreshStatic(ctx, it, now, disk, readErr)
	}
	if readErr == nil && bytes.Equal(disk, it.content) {
		it.held = true
		return ActionNone, nil
	}
	c.log.Warn("static file missing or changed on disk; rewriting it", "item", it.spec.name, "path", it.spec.path)
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
	digest = contentDigest(body)
	it.nextRefresh = now.Add(it.jittered(it.spec.refresh))
	why := ActionUpdated // the keyserver's content changed
	switch {
	case it.digest == "" && readErr != nil:
		why = ActionIssued // never had it
	case it.digest == digest:
		why = ActionRecreated // same content: the file was lost or changed
	}
	it.content, it.digest = body, digest
	if readErr == nil && bytes.Equal(disk, body) {
		it.held = true
		return ActionNone, nil
	}
	if err := writeStatic(it.spec, body); err != nil {
		return ActionFailed, err
	}
	it.held = true
	return why, nil
}

func writeStatic(s *itemSpec, body []byte) error {
	return writeOwned(s, s.path, body, s.mode)
}
