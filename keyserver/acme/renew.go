package acme

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	legoacme "github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certificate"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/policy"
)

// Defaults of the renewal schedule (Config).
const (
	// Ten orders a day is five renewals of a label in two key types: room
	// for a forced renewal or two after a bad day, far inside Let's
	// Encrypt's five duplicate certificates a week only if nobody forces
	// renewals all week, which is the operator's call.
	DefaultMaxOrdersPerDay = 10
	// Let's Encrypt allows five failed validations per name an hour:
	// waits of 5, 10, 20, 40 minutes stay under that, then 80, 160 and a
	// slow retry every four hours.
	DefaultRetryMin      = 5 * time.Minute
	DefaultRetryMax      = 4 * time.Hour
	DefaultARIInterval   = 6 * time.Hour
	DefaultLeaseTime     = 15 * time.Minute
	DefaultCheckInterval = time.Minute
)

// ErrOrderCap is returned when a label has had its day's orders.
var ErrOrderCap = errors.New("acme: the label's orders for the last 24 hours are used up")

// Why a label is due: the values of api.ACMEStatus.RenewBy.
const (
	byFirstIssue    = "first issue"
	byPolicyChanged = "policy changed"
	byForced        = "forced"
	byARI           = "ari"
	byLifetime      = "lifetime"
)

// status is a label's renewal state, kept in its record so every
// keyserver sharing the store follows one schedule, backs off together
// and counts the same orders.
type status struct {
	LastAttempt time.Time   `json:"last_attempt,omitzero"`
	LastSuccess time.Time   `json:"last_success,omitzero"`
	LastError   string      `json:"last_error,omitempty"`
	Failures    int         `json:"failures,omitempty"`  // in a row
	NotBefore   time.Time   `json:"not_before,omitzero"` // no order before then: backing off, or capped
	Orders      []time.Time `json:"orders,omitempty"`    // placed in the last 24 hours, one per key type
	Forced      bool        `json:"forced,omitempty"`    // keyctl acme renew, until it succeeds
	// StagingProven is the proof digest of what last passed an order at
	// the account's staging CA.
	StagingProven string   `json:"staging_proven,omitempty"`
	Renewal       *renewal `json:"renewal,omitempty"`
	Lease         *lease   `json:"lease,omitempty"`
}

// renewal is when the current version is to be renewed.
type renewal struct {
	Version int       `json:"version"`
	At      time.Time `json:"at"`
	By      string    `json:"by"` // byARI or byLifetime
	// The CA's window as last seen: a time is picked in it once, and
	// again only when the CA moves it.
	WindowStart  time.Time `json:"window_start,omitzero"`
	WindowEnd    time.Time `json:"window_end,omitzero"`
	ARICheckedAt time.Time `json:"ari_checked_at,omitzero"`
	ARINext      time.Time `json:"ari_next,omitzero"`
}

// lease says which keyserver is ordering a label's certificates, so that
// keyservers sharing a store never order the same label at once.
type lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// covers reports whether version v is what the policy asks of the label
// now: its names, common name and every key type.
func covers(v *Version, lc *policy.ACMECert) bool {
	if v == nil || v.CommonName != lc.CommonName || !slices.Equal(v.Names, lc.Names) {
		return false
	}
	for _, kt := range lc.KeyTypes {
		if v.Certs[kt] == nil {
			return false
		}
	}
	return true
}

// due says why and from when the label needs a new version; "" when it
// does not (a next version is waiting to be served).
// now is the caller's: a time read again here would be later than the
// one it compares at with.
func (m *Manager) due(st *labelState, lc *policy.ACMECert, now time.Time) (by string, at time.Time) {
	switch {
	case st.Status.Forced:
		return byForced, now
	case st.Next != nil && covers(st.Next, lc):
		return "", time.Time{}
	case st.Current == nil && st.Next == nil:
		return byFirstIssue, now
	case !covers(st.Current, lc):
		return byPolicyChanged, now
	}
	if r := st.Status.Renewal; r != nil && r.Version == st.Current.Number {
		return r.By, r.At
	}
	return byLifetime, lifetimeRenewal(st.Current)
}

// lifetimeRenewal is two thirds into a version's lifetime.
func lifetimeRenewal(v *Version) time.Time {
	return v.NotBefore.Add(v.NotAfter.Sub(v.NotBefore) * 2 / 3)
}

// backoff is the wait after the n-th failure in a row, at least what
// the CA asked for.
func (m *Manager) backoff(n int, err error) time.Duration {
	d := m.cfg.RetryMax
	if n < 32 {
		d = min(m.cfg.RetryMin<<(n-1), m.cfg.RetryMax)
	}
	var rl *legoacme.RateLimitedError
	if errors.As(err, &rl) {
		if ra, perr := api.ParseRetryAfter(rl.RetryAfter); perr == nil && ra > d {
			d = ra
		}
	}
	return d
}

// proof is what an order at the staging CA proves: these names, by this
// challenge, for this account.
func proof(lc *policy.ACMECert) string {
	sum := sha256.Sum256([]byte(lc.Account + "\n" + lc.Challenge + "\n" + strings.Join(lc.Names, "\n")))
	return hex.EncodeToString(sum[:8])
}

// Renew asks for a new version of a label now, whatever its schedule,
// and clears its back-off; the daily cap still holds.
func (m *Manager) Renew(ctx context.Context, label string) error {
	if m.cfg.Policy().ACMECert(label) == nil {
		return fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	_, err := m.updateState(ctx, label, func(st *labelState) (bool, error) {
		st.Status.Forced, st.Status.NotBefore = true, time.Time{}
		return true, nil
	})
	if err != nil {
		return err
	}
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run checks every label of the policy in force, every CheckInterval and
// at once after Renew, until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.CheckInterval)
	defer t.Stop()
	for {
		for _, label := range m.cfg.Policy().ACMELabels() {
			if ctx.Err() != nil {
				return
			}
			// An order's failure is logged where it happens and kept in
			// the label's status; anything else is logged here.
			if ordered, err := m.Check(ctx, label); err != nil && !ordered && !errors.Is(err, ErrOrderCap) && ctx.Err() == nil {
				m.cfg.Log.Error("acme check", "label", label, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.wake:
		}
	}
}

// Check does what is due for one label now: serves a next version whose
// time has come, asks the CA's renewal window (ARI) when it is time to,
// and orders a new version when one is due, unless the label is backing
// off, has had its day's orders, or another keyserver holds its lease.
// It reports whether it ordered; the error is the order's (or
// ErrOrderCap when that stopped it).
func (m *Manager) Check(ctx context.Context, label string) (ordered bool, err error) {
	lc := m.cfg.Policy().ACMECert(label)
	if lc == nil {
		return false, fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	st, err := m.updateState(ctx, label, func(st *labelState) (bool, error) {
		return m.promote(st), nil
	})
	if err != nil {
		return false, err
	}
	now := m.cfg.Now()
	by, at := m.due(&st, lc, now)
	if by == byLifetime || by == byARI {
		if st, err = m.checkARI(ctx, lc, st); err != nil {
			return false, err
		}
		by, at = m.due(&st, lc, now)
	}
	if by == "" || now.Before(at) || now.Before(st.Status.NotBefore) {
		return false, nil
	}
	return m.renew(ctx, lc, by)
}

// checkARI asks the CA when to renew the current version, when it has
// not yet or its answer is due for a refresh, and keeps the answer.
func (m *Manager) checkARI(ctx context.Context, lc *policy.ACMECert, st labelState) (labelState, error) {
	now := m.cfg.Now()
	cur := st.Current
	if r := st.Status.Renewal; r != nil && r.Version == cur.Number && now.Before(r.ARINext) {
		return st, nil
	}
	r := &renewal{Version: cur.Number, By: byLifetime, At: lifetimeRenewal(cur), ARICheckedAt: now, ARINext: now.Add(m.cfg.ARIInterval)}
	if old := st.Status.Renewal; old != nil && old.Version == cur.Number && old.By == byARI {
		r.By, r.At, r.WindowStart, r.WindowEnd = old.By, old.At, old.WindowStart, old.WindowEnd
	}
	ctx, cancel := context.WithCancel(ctx) // see ctxTransport
	defer cancel()
	client, err := m.client(ctx, m.cfg.Policy().ACMEAccount(lc.Account), false)
	if err == nil {
		for kt, cf := range cur.Certs {
			leaf, perr := pemutil.ParseCertificate(cf.Fullchain)
			if perr != nil {
				return st, fmt.Errorf("acme: %s (%s): %w", lc.Label, kt, perr)
			}
			info, ierr := client.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: leaf})
			if ierr != nil {
				err = ierr
				break
			}
			if info.RetryAfter > 0 {
				r.ARINext = now.Add(min(max(info.RetryAfter, time.Minute), 24*time.Hour))
			}
			w := info.SuggestedWindow
			if r.By == byARI && w.Start.Equal(r.WindowStart) && w.End.Equal(r.WindowEnd) {
				continue // the time picked in this window stands
			}
			// A time picked at random in the window (RFC 9773 §4.2),
			// once, and kept in the store, so that every keyserver
			// renews at the same time.
			pick := info.ShouldRenewAt(now, cur.NotAfter.Sub(now))
			if pick != nil && (r.By != byARI || pick.Before(r.At)) {
				r.By, r.At, r.WindowStart, r.WindowEnd = byARI, *pick, w.Start, w.End
			}
		}
	}
	switch {
	case errors.Is(err, api.ErrNoARI):
		r.ARINext = now.Add(24 * time.Hour)
	case err != nil:
		// The schedule by lifetime (or the last window) stands; ask
		// again later.
		m.cfg.Log.Warn("acme renewal information", "label", lc.Label, "err", err)
		r.ARINext = now.Add(m.cfg.RetryMin)
	}
	return m.updateState(ctx, lc.Label, func(st *labelState) (bool, error) {
		if st.Current == nil || st.Current.Number != r.Version {
			return false, nil
		}
		st.Status.Renewal = r
		return true, nil
	})
}

// renew orders a new version of the label under its lease, and reports
// whether it did.
func (m *Manager) renew(ctx context.Context, lc *policy.ACMECert, by string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	var skip, capped bool
	st, err := m.updateState(ctx, lc.Label, func(st *labelState) (bool, error) {
		skip, capped = false, false
		if by2, at := m.due(st, lc, now); by2 == "" || now.Before(at) || now.Before(st.Status.NotBefore) {
			skip = true // done or deferred meanwhile, maybe by another keyserver
			return false, nil
		}
		if l := st.Status.Lease; l != nil && l.Holder != m.holder && now.Before(l.Until) {
			skip = true
			return false, nil
		}
		st.Status.Orders = slices.DeleteFunc(st.Status.Orders, func(t time.Time) bool { return !now.Before(t.Add(24 * time.Hour)) })
		if len(st.Status.Orders)+len(lc.KeyTypes) > m.cfg.MaxOrdersPerDay {
			capped = true
			st.Status.NotBefore = st.Status.Orders[0].Add(24 * time.Hour)
			st.Status.LastError = fmt.Sprintf("%d orders in the last 24 hours, the most allowed is %d (max_orders_per_day)", len(st.Status.Orders), m.cfg.MaxOrdersPerDay)
			return true, nil
		}
		st.Status.Lease = &lease{Holder: m.holder, Until: now.Add(m.cfg.LeaseTime)}
		st.Status.LastAttempt = now
		return true, nil
	})
	switch {
	case err != nil:
		return false, err
	case capped:
		m.cfg.Log.Warn("acme order cap reached", "label", lc.Label, "next_attempt", st.Status.NotBefore)
		return false, ErrOrderCap
	case skip:
		return false, nil
	}
	m.cfg.Log.Info("acme ordering", "label", lc.Label, "why", by, "names", strings.Join(lc.Names, ","))

	acct := m.cfg.Policy().ACMEAccount(lc.Account)
	proven := st.Status.StagingProven
	var got map[string]issued
	placed := 0
	if acct.StagingDirectory != "" && proven != proof(lc) {
		// One order at the staging CA proves the names and the
		// challenge; a failure there costs nothing at the real one.
		if _, _, err = m.order(ctx, lc, true, lc.KeyTypes[:1], nil); err == nil {
			proven = proof(lc)
		} else {
			err = fmt.Errorf("at the staging CA: %w", err)
		}
	}
	if err == nil {
		replaces := map[string]string{}
		if st.Current != nil {
			for kt, cf := range st.Current.Certs {
				replaces[kt] = cf.ARICertID
			}
		}
		got, placed, err = m.order(ctx, lc, false, lc.KeyTypes, replaces)
	}

	var v *Version
	// A cancelled ctx (shutdown) still records what happened.
	_, uerr := m.updateState(context.WithoutCancel(ctx), lc.Label, func(st *labelState) (bool, error) {
		s := &st.Status
		if s.Lease != nil && s.Lease.Holder == m.holder {
			s.Lease = nil
		}
		s.StagingProven = proven
		for range placed {
			s.Orders = append(s.Orders, now)
		}
		if err != nil {
			s.Failures++
			s.NotBefore = m.cfg.Now().Add(m.backoff(s.Failures, err))
			// One line: lego lists a problem per name on lines of its own.
			s.LastError = strings.Join(strings.Fields(err.Error()), " ")
			return true, nil
		}
		var verr error
		if v, verr = m.newVersion(lc, st, got); verr != nil {
			return false, verr
		}
		st.Next = v
		s.Failures, s.NotBefore, s.LastError, s.Forced = 0, time.Time{}, "", false
		s.LastSuccess = m.cfg.Now()
		return true, nil
	})
	if err != nil {
		m.cfg.Log.Warn("acme order failed", "label", lc.Label, "err", err, "failures", st.Status.Failures+1)
		return true, errors.Join(err, uerr)
	}
	if uerr != nil {
		return true, fmt.Errorf("acme: %s: keep it: %w", lc.Label, uerr)
	}
	m.cfg.Log.Info("acme certificate obtained", "label", lc.Label, "version", v.Number, "names", strings.Join(v.Names, ","), "not_after", v.NotAfter, "ready_at", v.ReadyAt)
	return true, nil
}

// ctxTransport ends every request when the work it is for ends (ctx),
// as well as on its own deadline. ctx must end when that work does: the
// requests' cancellation hooks are released with it.
type ctxTransport struct {
	ctx  context.Context
	next http.RoundTripper
}

func (t ctxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(r.Context())
	context.AfterFunc(t.ctx, cancel)
	return t.next.RoundTrip(r.WithContext(ctx))
}
