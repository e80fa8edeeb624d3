package keyclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
)

// StatusLine is one line of `keyclient status`: the CGC or an item, as
// found on disk, with what the status file adds (failures, errors).
type StatusLine struct {
	Item          string    `json:"item"`
	Type          string    `json:"type"` // cgc, x509, static or acme
	State         string    `json:"state"`
	Expires       time.Time `json:"expires,omitzero"`
	NextRenewal   time.Time `json:"next_renewal,omitzero"` // static, acme: the next refresh
	LastError     string    `json:"last_error,omitempty"`  // what is wrong on disk, else the client's last error
	Failures      int       `json:"failures"`
	ReloadPending bool      `json:"reload_pending,omitempty"`

	// acme: the policy's label, and the version on disk as the status
	// file knows it (0 with Placeholder: the keyserver's self-signed
	// placeholder, served until the CA's certificate is there).
	Label       string `json:"label,omitempty"`
	Version     int    `json:"version,omitempty"`
	Placeholder bool   `json:"placeholder,omitempty"`
}

// Healthy says the line needs no attention: nothing expired, missing,
// invalid, failing or stale.
func (l StatusLine) Healthy() bool {
	return l.State == StateOK || l.State == StatePending
}

// Inspect reports on the CGC and every item of cfg, reading only: the
// files on disk (parsed, key matched, expiry, mode and owner) and the
// status file. It changes nothing and calls no keyserver. An unreadable
// status file does not stop it: the lines then say only what is on disk,
// and a warning says why.
//
// An item the status file says was last checked more than three check
// intervals ago (and past the retry it was waiting for, and its reload
// command's timeout) is stale: the daemon that checks it is not running,
// or is stuck. Only a running daemon keeps the items fresh; `keyclient
// once` records its checks too, but nothing checks again after it.
func Inspect(cfg *Config, now time.Time) (lines []StatusLine, warnings []string, err error) {
	set, err := cfg.settings()
	if err != nil {
		return nil, nil, &ConfigError{fmt.Errorf("keyclient: %w", err)}
	}
	st, err := ReadStatus(cfg.StateDir)
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("%s is unreadable, so the last errors, pending reloads and whether the daemon still checks are unknown (the daemon rewrites it at its next check): %v",
			filepath.Join(cfg.StateDir, StatusFile), strings.TrimPrefix(err.Error(), "keyclient: ")))
	}
	if st == nil {
		st = &Status{}
	}
	var cgcRec *ItemStatus
	if st.CGC.Type == TypeCGC {
		cgcRec = &st.CGC
	}
	lines = []StatusLine{inspectCGC(cfg, cgcRec, now)}
	for _, spec := range set.items {
		rec := st.find(spec.typ, spec.id)
		var l StatusLine
		switch spec.typ {
		case TypeStatic:
			l = inspectStatic(spec, rec)
		case TypeACME:
			l = inspectACME(spec, rec)
		default:
			l = inspectX509(spec, rec)
		}
		settleLine(&l, rec, now)
		markStale(&l, spec, rec, set.checkInterval, now)
		lines = append(lines, l)
	}
	return lines, warnings, nil
}

// markStale turns a line that would be ok, pending or failing into stale
// when its item has not been checked for too long (see Inspect). What is
// wrong on disk (expired, missing, invalid) is said first.
func markStale(l *StatusLine, s *itemSpec, rec *ItemStatus, checkInterval time.Duration, now time.Time) {
	if rec == nil || rec.CheckedAt.IsZero() || (l.State != StateOK && l.State != StatePending && l.State != StateFailing) {
		return
	}
	limit := rec.CheckedAt.Add(3 * checkInterval)
	if retry := rec.NextAttempt.Add(2 * checkInterval); retry.After(limit) {
		limit = retry // backing off after a failure, the item waits longer than a check interval
	}
	if s.reload != "" {
		limit = limit.Add(s.reloadTimeout) // a pass may wait that long for its reload command
	}
	if !now.After(limit) {
		return
	}
	msg := fmt.Sprintf("not checked since %s (check_interval %v): is the keyclient daemon running?", rec.CheckedAt.UTC().Format(time.RFC3339), checkInterval)
	if l.LastError != "" {
		msg += "; last error: " + l.LastError
	}
	l.State, l.LastError = StateStale, msg
}

func inspectCGC(cfg *Config, rec *ItemStatus, now time.Time) StatusLine {
	l := StatusLine{Item: cfg.Node, Type: TypeCGC}
	data, err := os.ReadFile(filepath.Join(cfg.StateDir, CGCFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		l.State, l.LastError = StateMissing, "not admitted yet"
	case err != nil:
		l.State, l.LastError = StateInvalid, err.Error()
	default:
		_, certs, err := parseCGCFile(data)
		switch {
		case err != nil:
			l.State, l.LastError = StateInvalid, fmt.Sprintf("%s: %v", CGCFile, err)
		case certs[0].Subject.CommonName != cfg.Node:
			l.State, l.LastError = StateInvalid, fmt.Sprintf("%s holds a CGC for %q", CGCFile, certs[0].Subject.CommonName)
		default:
			l.Expires, l.NextRenewal = certs[0].NotAfter, renewalOf(certs[0], rec)
		}
	}
	settleLine(&l, rec, now)
	return l
}

func inspectX509(s *itemSpec, rec *ItemStatus) StatusLine {
	l := StatusLine{Item: s.id, Type: s.typ}
	f, err := readX509Files(s)
	var fp *FileProblem
	switch {
	case errors.As(err, &fp) && fp.Missing:
		l.State, l.LastError = StateMissing, "no files yet"
	case err != nil && isMissing(s):
		l.State, l.LastError = StateMissing, err.Error()
	case err != nil:
		l.State, l.LastError = StateInvalid, err.Error()
	default:
		l.Expires, l.NextRenewal = f.leaf.NotAfter, renewalOf(f.leaf, rec)
		if a := checkAttrs(s); len(a.wrong) > 0 {
			l.State, l.LastError = StateInvalid, a.String()
			if a.exposed {
				l.LastError += " (the key may have been read by others: it is replaced at the next check)"
			} else {
				l.LastError += " (rewritten at the next check)"
			}
		}
	}
	return l
}

// isMissing says some file of the item is absent.
func isMissing(s *itemSpec) bool {
	for _, p := range s.files() {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return false
}

// inspectACME reports an acme item's files: whether they agree with
// each other and the config, and whether they hold the version the status
// file says was last fetched (by the certificate's serial).
func inspectACME(s *itemSpec, rec *ItemStatus) StatusLine {
	l := StatusLine{Item: s.id, Type: s.typ, Label: s.name}
	if rec != nil {
		l.NextRenewal = rec.NextRefresh
	}
	leaf, err := readACMEFiles(s)
	var fp *FileProblem
	switch {
	case errors.As(err, &fp) && fp.Missing:
		l.State, l.LastError = StateMissing, "no files yet"
	case err != nil && isMissing(s):
		l.State, l.LastError = StateMissing, err.Error()
	case err != nil:
		l.State, l.LastError = StateInvalid, err.Error()+" (rewritten at the next check)"
	default:
		l.Expires = leaf.NotAfter
		if rec != nil && rec.Serial != "" && rec.Serial != authority.SerialText(leaf) {
			l.State = StateInvalid
			l.LastError = fmt.Sprintf("the certificate on disk (serial %s) is not version %d, which the client holds (rewritten at the next check)",
				authority.SerialText(leaf), rec.Version)
			break
		}
		if rec != nil {
			l.Version, l.Placeholder = rec.Version, rec.Placeholder
		}
		if a := checkAttrs(s); len(a.wrong) > 0 {
			l.State, l.LastError = StateInvalid, a.String()+" (rewritten at the next check)"
			if a.exposed {
				l.LastError += "; the key may have been read by others, and every node of the label shares it: `keyctl acme renew " + s.name + "` replaces it"
			}
		}
	}
	return l
}

func inspectStatic(s *itemSpec, rec *ItemStatus) StatusLine {
	l := StatusLine{Item: s.id, Type: s.typ}
	if rec != nil {
		l.NextRenewal = rec.NextRefresh
	}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		l.State, l.LastError = StateMissing, s.path+" is missing"
	case err != nil:
		l.State, l.LastError = StateInvalid, err.Error()
	case rec != nil && rec.Digest != "" && api.Digest(data) != rec.Digest:
		l.State, l.LastError = StateInvalid, s.path+" differs from the content last fetched (rewritten at the next check)"
	default:
		if a := checkAttrs(s); len(a.wrong) > 0 {
			l.State, l.LastError = StateInvalid, a.String()+" (rewritten at the next check)"
		}
	}
	return l
}

// renewalOf is when a certificate is due: as the client drew it, when the
// status file is about this certificate, else the middle of the window.
func renewalOf(c *x509.Certificate, rec *ItemStatus) time.Time {
	if rec != nil && rec.Serial == authority.SerialText(c) && !rec.RenewAt.IsZero() {
		return rec.RenewAt
	}
	return RenewTime(c.NotBefore, c.NotAfter, 0.5)
}

// settleLine completes a line whose files were found good (State still
// empty) with expiry and the status file's failures.
func settleLine(l *StatusLine, rec *ItemStatus, now time.Time) {
	if rec != nil {
		l.Failures = rec.Failures + rec.ReloadFailures
		l.ReloadPending = rec.ReloadPending
	}
	if l.State != "" {
		// What is wrong on disk, and why the client has not repaired it.
		if rec != nil && rec.LastError != "" {
			l.LastError += "; last error: " + rec.LastError
		}
		return
	}
	switch {
	case !l.Expires.IsZero() && !now.Before(l.Expires):
		l.State = StateExpired
	case l.Failures > 0:
		l.State = StateFailing
	case rec != nil && rec.State == StatePending:
		l.State = StatePending
	default:
		l.State = StateOK
	}
	if rec != nil {
		l.LastError = rec.LastError
		if l.LastError == "" {
			l.LastError = rec.ReloadError
		}
	}
}
