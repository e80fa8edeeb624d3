package keyclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
)

// StatusFile, in the state directory, is what the client last knew about
// the CGC and every item; `keyclient status` reads it, and a restarted
// client takes over the reloads it still owes.
const StatusFile = "status.json"

// States of the CGC and of items. The status file holds the first four;
// `keyclient status` also reports what it finds on disk, and whether the
// client still looks at the items.
const (
	StateOK      = "ok"
	StateFailing = "failing" // the last attempt failed (or the reload command did); the files are still valid
	StateExpired = "expired"
	StatePending = "pending" // not obtained yet, or waiting for the CGC
	StateMissing = "missing" // files absent
	StateInvalid = "invalid" // files unreadable, not matching each other or the config, or with another mode or owner
	StateStale   = "stale"   // not checked for a while: no daemon runs, or it is stuck
)

// TypeCGC is the type the CGC has in status displays.
const TypeCGC = "cgc"

// Status is the content of the status file.
type Status struct {
	Node  string       `json:"node"`
	CGC   ItemStatus   `json:"cgc"`
	Items []ItemStatus `json:"items"`
}

// ItemStatus is what the client knows about the CGC or one item.
type ItemStatus struct {
	Name           string    `json:"name"` // the node (cgc), or the item's id: its grant, static name or acme label, "#2"... for further items of one grant or label
	Type           string    `json:"type"` // cgc, x509, static or acme
	State          string    `json:"state"`
	LastError      string    `json:"last_error,omitempty"`
	Failures       int       `json:"failures"`
	NextAttempt    time.Time `json:"next_attempt,omitzero"` // while failing
	NotAfter       time.Time `json:"not_after,omitzero"`
	RenewAt        time.Time `json:"renew_at,omitzero"`
	NextRefresh    time.Time `json:"next_refresh,omitzero"`
	ReloadPending  bool      `json:"reload_pending,omitempty"`
	ReloadEvent    string    `json:"reload_event,omitempty"` // the change the pending reload is for
	ReloadFailures int       `json:"reload_failures,omitempty"`
	ReloadError    string    `json:"reload_error,omitempty"`
	Serial         string    `json:"serial,omitempty"`      // x509, acme and cgc: the certificate's, hex
	RootPin        string    `json:"root_pin,omitempty"`    // x509: the root it was issued under
	Digest         string    `json:"digest,omitempty"`      // static: of the content last fetched
	Label          string    `json:"label,omitempty"`       // acme: the policy's label
	Version        int       `json:"version,omitempty"`     // acme: the version held; 0 with placeholder
	Placeholder    bool      `json:"placeholder,omitempty"` // acme: the keyserver's self-signed placeholder is held
	ETag           string    `json:"etag,omitempty"`        // acme: the keyserver's tag of the version held
	CheckedAt      time.Time `json:"checked_at,omitzero"`   // the last pass
}

// find returns the entry for an item, or nil.
func (s *Status) find(typ, name string) *ItemStatus {
	for i := range s.Items {
		if s.Items[i].Type == typ && s.Items[i].Name == name {
			return &s.Items[i]
		}
	}
	return nil
}

// ReadStatus reads the status file in stateDir; a missing file is (nil, nil).
func ReadStatus(stateDir string) (*Status, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, StatusFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("keyclient: %w", err)
	}
	var s Status
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("keyclient: %s: %w", StatusFile, err)
	}
	return &s, nil
}

// statusBook holds the status and writes it, from any goroutine.
type statusBook struct {
	mu       sync.Mutex
	path     string
	node     string
	interval time.Duration // check_interval
	cgc      ItemStatus
	items    []ItemStatus // in the order of the config
	written  *Status      // what the file last written holds; nil before the first write
}

func newStatusBook(cfg *Config, checkInterval time.Duration) *statusBook {
	return &statusBook{
		path:     filepath.Join(cfg.StateDir, StatusFile),
		node:     cfg.Node,
		interval: checkInterval,
		cgc:      ItemStatus{Name: cfg.Node, Type: TypeCGC, State: StatePending},
	}
}

// put records one entry (the CGC's when its type is cgc) and writes the
// file after a pass: its CheckedAt times show the client is alive. A pass
// that changed nothing but CheckedAt writes only when the entry's
// CheckedAt on disk is at least check_interval old, so that passes more
// frequent than the checks (retries, refreshes, reloads) do not rewrite
// the file each time.
func (b *statusBook) put(st ItemStatus) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var old *ItemStatus // as last written
	if st.Type == TypeCGC {
		b.cgc = st
		if b.written != nil {
			old = &b.written.CGC
		}
	} else {
		for i := range b.items {
			if b.items[i].Type == st.Type && b.items[i].Name == st.Name {
				b.items[i] = st
				if b.written != nil {
					old = &b.written.Items[i]
				}
			}
		}
	}
	if old != nil && sameButCheckedAt(*old, st) && st.CheckedAt.Sub(old.CheckedAt) < b.interval {
		return nil
	}
	now := Status{Node: b.node, CGC: b.cgc, Items: slices.Clone(b.items)}
	data, err := json.MarshalIndent(now, "", "  ")
	if err != nil {
		return fmt.Errorf("keyclient: status: %w", err)
	}
	if err := keyfile.Write(b.path, append(data, '\n'), 0o600); err != nil {
		return err
	}
	b.written = &now
	return nil
}

// sameButCheckedAt says two entries differ at most in CheckedAt.
func sameButCheckedAt(a, b ItemStatus) bool {
	a.CheckedAt, b.CheckedAt = time.Time{}, time.Time{}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// status is the item's entry in the status file.
func (it *item) status(now time.Time) ItemStatus {
	st := ItemStatus{
		Name:        it.spec.id,
		Type:        it.spec.typ,
		State:       it.state(now),
		LastError:   errText(it.lastErr),
		Failures:    it.failures,
		NextAttempt: it.nextAttempt,
		NextRefresh: it.nextRefresh,
		Digest:      it.digest,
		CheckedAt:   now,
	}
	switch it.spec.typ {
	case TypeX509:
		st.NotAfter, st.RenewAt, st.Serial, st.RootPin = it.notAfter, it.renewAt, it.serial, it.rootPin
	case TypeACME:
		st.Label = it.spec.name
		if h := it.acme; h != nil {
			st.NotAfter, st.Serial = it.notAfter, it.serial
			st.Version, st.Placeholder, st.ETag = h.version, h.placeholder(), h.etag
		}
	}
	if it.reload.event != "" {
		st.ReloadPending, st.ReloadEvent = true, string(it.reload.event)
		st.ReloadFailures, st.ReloadError = it.reload.failures, errText(it.reload.lastErr)
	}
	return st
}

func (c *Client) recordItem(it *item, now time.Time) {
	if err := c.status.put(it.status(now)); err != nil {
		c.log.Warn("could not write the status file", "err", err)
	}
}

// recordCGC records the outcome of a CGC pass; next is when a failed pass
// is retried, if known.
func (c *Client) recordCGC(passErr error, next time.Time) {
	if err := c.status.put(c.cgcStatus(passErr, next)); err != nil {
		c.log.Warn("could not write the status file", "err", err)
	}
}

// cgcStatus is the CGC's entry in the status file.
func (c *Client) cgcStatus(passErr error, next time.Time) ItemStatus {
	now := c.opts.Clock.Now()
	st := ItemStatus{Name: c.cfg.Node, Type: TypeCGC, State: StateOK, NextAttempt: next, CheckedAt: now}
	c.stateMu.Lock()
	if c.certs != nil {
		st.Serial, st.NotAfter, st.RenewAt = authority.SerialText(c.certs[0]), c.certs[0].NotAfter, c.renewAt
	}
	c.stateMu.Unlock()
	if passErr != nil {
		st.LastError = passErr.Error()
		st.Failures = max(c.failures, 1)
		st.State = StateFailing
	}
	switch {
	case st.Serial == "":
		st.State = StatePending
	case !now.Before(st.NotAfter):
		st.State = StateExpired
	}
	return st
}
