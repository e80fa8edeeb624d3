package keyclient

import (
	"context"
	"encoding/binary"
	"errors"
	mrand "math/rand/v2"
	"time"
)

// item is one configured item and what the client knows about it. Only
// the item's own goroutine (in Run) or Once touches it.
type item struct {
	spec *itemSpec
	rnd  *mrand.Rand // this item's jitter, so items never share a source

	failures    int       // consecutive failed passes
	lastErr     error     // of the last pass; nil after a success
	nextAttempt time.Time // after a failure: no keyserver call before this
	nextCheck   time.Time // the next look at the files on disk
	nextRefresh time.Time // the next time the keyserver is asked (grant or content)
	waitingCGC  bool      // the last pass could not start for want of a CGC
	held        bool      // the item's files were written, or found good, at least once

	// x509: the certificate on disk, as last seen.
	serial   string
	notAfter time.Time
	renewAt  time.Time // drawn once per certificate
	rootPin  string    // of the root the certificate with serial was issued under; "" unknown
	dueEarly int       // consecutive new certificates already due when issued

	// static: the content last fetched, and its digest; copied is the
	// digest of the copy in the state directory ("" none known).
	content []byte
	digest  string
	copied  string

	// acme: the version held (nil: none yet), as kept in the state
	// directory; serial and notAfter are its certificate's.
	acme *acmeHeld

	reload reloadState
}

// ItemResult is what one pass did for one item.
type ItemResult struct {
	Name      string    // the item's id: the grant, the static file's name or the acme label, with "#2"... for further items of one grant or label
	Type      string    // TypeX509, TypeStatic or TypeACME
	Action    Action    // none, issued, renewed, updated, recreated or failed
	NotAfter  time.Time // x509, acme: the certificate's expiry
	RenewAt   time.Time // x509: when it is due; static, acme: the next refresh
	Err       error     // why the pass failed
	ReloadErr error     // the reload command failed; the files are in place and the reload stays owed

	// acme: the version held (0 is the keyserver's placeholder), if any.
	Version     int
	Placeholder bool
}

func (c *Client) initItems() {
	prev, err := ReadStatus(c.cfg.StateDir)
	if err != nil {
		c.log.Warn("ignoring an unreadable status file", "err", err)
		prev = nil
	}
	c.status = newStatusBook(c.cfg, c.set.checkInterval)
	c.status.cgc = c.cgcStatus(nil, time.Time{})
	now := c.opts.Clock.Now()
	for _, spec := range c.set.items {
		var seed [32]byte
		for i := 0; i < len(seed); i += 8 {
			binary.LittleEndian.PutUint64(seed[i:], c.rnd.Uint64())
		}
		it := &item{spec: spec, rnd: mrand.New(mrand.NewChaCha8(seed))}
		var rec *ItemStatus
		if prev != nil {
			if rec = prev.find(spec.typ, spec.id); rec != nil {
				it.restore(rec, now)
			}
		}
		switch spec.typ {
		case TypeStatic:
			c.loadStaticCopy(it)
		case TypeACME:
			c.loadACMECopy(it, rec)
			// Holding the placeholder, it asks more often than refresh.
			if d := it.acmeRefresh(); it.nextRefresh.After(now.Add(d + d/10)) {
				it.nextRefresh = now.Add(d + d/10)
			}
		}
		c.items = append(c.items, it)
		c.status.items = append(c.status.items, it.status(now))
	}
}

// restore takes over what a previous run recorded: a reload still owed
// (so that a crash or restart never loses one), and what lets a restarted
// client skip asking the keyserver again at once (a restart of a whole
// fleet must not become a storm of requests).
func (it *item) restore(st *ItemStatus, now time.Time) {
	if it.spec.typ != TypeACME { // an acme item holds what its copy in the state directory holds
		it.serial, it.rootPin, it.renewAt, it.notAfter = st.Serial, st.RootPin, st.RenewAt, st.NotAfter
		it.digest = st.Digest
		it.held = st.Serial != "" || st.Digest != ""
	}
	// A refresh interval shortened in the config since takes effect now.
	it.nextRefresh = st.NextRefresh
	if limit := now.Add(it.spec.refresh + it.spec.refresh/10); it.nextRefresh.After(limit) {
		it.nextRefresh = limit
	}
	if st.ReloadPending {
		it.reload.event = Action(st.ReloadEvent)
		if it.reload.event == "" {
			it.reload.event = ActionUpdated
		}
	}
}

// runItem keeps one item fresh until ctx is cancelled.
func (c *Client) runItem(ctx context.Context, it *item) {
	for {
		// Taken before the pass, so that a CGC arriving during it is not missed.
		cgc := c.cgcSignal()
		c.itemPass(ctx, it, false, false)
		if ctx.Err() != nil {
			return
		}
		if !it.waitingCGC {
			cgc = nil // a nil channel never fires
		}
		wait := max(it.nextWake().Sub(c.opts.Clock.Now()), 0)
		select {
		case <-ctx.Done():
			return
		case <-cgc:
		case <-c.opts.Clock.After(wait):
		}
	}
}

// nextWake is when the item next has something to do.
func (it *item) nextWake() time.Time {
	var t time.Time
	switch {
	case it.waitingCGC:
		t = it.nextCheck // due work must wait for the CGC, which wakes the item when it comes
	case it.failures > 0:
		t = it.nextAttempt // checking earlier would only find the same work, and must not call out
	default:
		t = it.nextCheck
		for _, u := range []time.Time{it.renewAt, it.nextRefresh} {
			if !u.IsZero() && u.Before(t) {
				t = u
			}
		}
	}
	if it.reload.event != "" && it.reload.next.Before(t) {
		t = it.reload.next
	}
	return t
}

// itemPass checks the item's files and does what is due: renewal,
// refresh, repair. ignoreBackoff (for Once) tries even while an earlier
// failure's backoff lasts. A pending reload is run when due. The status
// file is written afterwards.
func (c *Client) itemPass(ctx context.Context, it *item, force, ignoreBackoff bool) ItemResult {
	now := c.opts.Clock.Now()
	res := ItemResult{Name: it.spec.id, Type: it.spec.typ, Action: ActionNone}
	if ignoreBackoff || !now.Before(it.nextAttempt) {
		act, err := c.keep(ctx, it, now, force)
		if err != nil && ctx.Err() != nil {
			res.Action, res.Err = ActionFailed, err
			return res // stopping: not the item's failure, nothing to record
		}
		c.settle(it, now, act, err)
		res.Action, res.Err = act, err
		if err != nil {
			res.Action = ActionFailed
		}
	} else if it.lastErr != nil {
		res.Action, res.Err = ActionFailed, it.lastErr // still backing off
	}
	if it.reload.event != "" && (ignoreBackoff || !now.Before(it.reload.next)) {
		res.ReloadErr = c.runReload(ctx, it, now)
	}
	it.nextCheck = now.Add(c.set.checkInterval)
	c.recordItem(it, now)
	res.NotAfter = it.notAfter
	res.RenewAt = it.renewAt
	switch it.spec.typ {
	case TypeStatic:
		res.RenewAt = it.nextRefresh
	case TypeACME:
		res.RenewAt = it.nextRefresh
		if it.acme != nil {
			res.Version, res.Placeholder = it.acme.version, it.acme.placeholder()
		}
	}
	return res
}

// keep does the item's work for one pass.
func (c *Client) keep(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	switch it.spec.typ {
	case TypeStatic:
		return c.keepStatic(ctx, it, now, force)
	case TypeACME:
		return c.keepACME(ctx, it, now, force)
	}
	return c.keepX509(ctx, it, now, force)
}

// settle records the outcome of a pass: a failure backs off, a change of
// files makes a reload due. A pass may both fail and change files (a
// static file put back from the content held while the keyserver could
// not be asked); the change is then reloaded for all the same.
func (c *Client) settle(it *item, now time.Time, act Action, err error) {
	it.waitingCGC = errors.Is(err, ErrNoCGC)
	switch {
	case it.waitingCGC:
		// Not a failure of the item: it waits for the CGC (and is woken
		// when one arrives), and makes no call in the meantime.
		it.failures, it.lastErr, it.nextAttempt = 0, err, time.Time{}
	case err != nil:
		it.failures++
		it.lastErr = err
		wait := honourRetryAfter(err, backoff(c.opts.MinBackoff, c.opts.MaxBackoff, it.failures, it.rnd), it.rnd)
		it.nextAttempt = now.Add(wait)
		c.log.Error("keeping an item fresh failed", "item", it.spec.id, "type", it.spec.typ, "err", err,
			"failures", it.failures, "retry_in", wait.Round(time.Second))
	default:
		if it.failures > 0 {
			c.log.Info("item recovered", "item", it.spec.id, "after_failures", it.failures)
		}
		it.failures, it.lastErr, it.nextAttempt = 0, nil, time.Time{}
	}
	if act != ActionNone && act != ActionFailed {
		c.logChange(it, act)
		if it.spec.reload != "" {
			// Recorded before the command runs, so that a crash during it
			// still leaves the reload owed.
			it.reload = reloadState{event: act}
			c.recordItem(it, now)
		}
	}
}

func (c *Client) logChange(it *item, act Action) {
	switch it.spec.typ {
	case TypeStatic:
		c.log.Info("static file "+string(act), "item", it.spec.id, "path", it.spec.path, "digest", it.digest)
		return
	case TypeACME:
		c.log.Info("acme certificate "+string(act), "item", it.spec.id, "label", it.spec.name, "version", it.acme.version,
			"placeholder", it.acme.placeholder(), "serial", it.serial, "not_after", it.notAfter)
		return
	}
	c.log.Info("certificate "+string(act), "item", it.spec.id, "cert", it.spec.cert, "serial", it.serial,
		"not_after", it.notAfter, "renew_at", it.renewAt)
}

// jittered is d moved by up to a tenth either way, so that nodes that
// started together spread their calls.
func (it *item) jittered(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(it.rnd.Int64N(int64(d/5)+1))
}

// state sums the item up for the status file.
func (it *item) state(now time.Time) string {
	switch {
	case it.spec.typ != TypeStatic && it.held && !it.notAfter.IsZero() && !now.Before(it.notAfter):
		return StateExpired
	case it.failures > 0 || it.reload.failures > 0:
		return StateFailing
	case !it.held || it.waitingCGC:
		return StatePending
	case it.acme != nil && it.acme.placeholder():
		return StatePending // the CA's certificate is not there yet
	}
	return StateOK
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
