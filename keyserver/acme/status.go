package acme

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

const fetchPrefix = "acme/fetched/" // + label + "/" + node + "/" + key type

// fetchRefresh: a node fetching the version it fetched before is written
// down again only this long after, so that front ends polling often do
// not each write to the store every time.
const fetchRefresh = time.Hour

type fetchRecord struct {
	Version int       `json:"version"`
	KeyType string    `json:"key_type"`
	At      time.Time `json:"at"`
}

// RecordFetch notes that node fetched a version of a label, so that the
// label's status shows the front ends still on an old certificate. It
// reports whether that version of that key type is new to the node.
func (m *Manager) RecordFetch(ctx context.Context, label, node string, version int, keyType string) (changed bool, err error) {
	key := fetchPrefix + label + "/" + node + "/" + keyType
	now := m.cfg.Now()
	err = store.Update(ctx, m.cfg.Store, key, func(old []byte) ([]byte, error) {
		var rec fetchRecord
		known := old != nil && json.Unmarshal(old, &rec) == nil && rec.Version == version
		changed = !known
		if known && now.Sub(rec.At) < fetchRefresh {
			return nil, nil
		}
		return json.Marshal(fetchRecord{Version: version, KeyType: keyType, At: now})
	})
	return changed, err
}

// Status is a label's state: its versions, its renewal schedule, how its
// last order went, and which version each node last fetched.
func (m *Manager) Status(ctx context.Context, label string) (*api.ACMEStatus, error) {
	lc := m.cfg.Policy().ACMECert(label)
	if lc == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	raw, err := m.cfg.Store.Get(ctx, labelPrefix+label)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	st, err := decodeState(label, raw)
	if err != nil {
		return nil, err
	}
	// What Get would serve now (the record promotes on the next Get).
	m.promote(&st)
	now := m.cfg.Now()
	s := &api.ACMEStatus{
		Label: label, Account: lc.Account, CommonName: lc.CommonName, Names: lc.Names,
		Challenge: lc.Challenge, KeyTypes: lc.KeyTypes,
		Current: versionInfo(st.Current), Next: versionInfo(st.Next),
		Placeholder:     !covers(st.Current, lc),
		LastAttempt:     st.Status.LastAttempt,
		LastSuccess:     st.Status.LastSuccess,
		LastError:       st.Status.LastError,
		Failures:        st.Status.Failures,
		Forced:          st.Status.Forced,
		MaxOrdersPerDay: m.cfg.MaxOrdersPerDay,
	}
	for _, t := range st.Status.Orders {
		if now.Before(t.Add(24 * time.Hour)) {
			s.OrdersToday++
		}
	}
	if now.Before(st.Status.NotBefore) {
		s.NextAttempt = st.Status.NotBefore
	}
	if l := st.Status.Lease; l != nil && now.Before(l.Until) {
		s.Ordering = l.Holder
	}
	s.RenewBy, s.RenewAt = m.due(&st, lc, now)
	if r := st.Status.Renewal; r != nil && st.Current != nil && r.Version == st.Current.Number {
		s.ARICheckedAt = r.ARICheckedAt
	}

	kvs, err := m.cfg.Store.List(ctx, fetchPrefix+label+"/")
	if err != nil {
		return nil, err
	}
	for _, kv := range kvs {
		var rec fetchRecord
		if json.Unmarshal(kv.Value, &rec) != nil {
			continue
		}
		node, _, _ := strings.Cut(strings.TrimPrefix(kv.Key, fetchPrefix+label+"/"), "/")
		f := api.ACMEFetch{Node: node, Version: rec.Version, KeyType: rec.KeyType, At: rec.At}
		f.Stale = st.Current != nil && rec.Version < st.Current.Number
		s.Nodes = append(s.Nodes, f)
	}
	return s, nil
}

// StatusAll is Status for every label of the policy in force.
func (m *Manager) StatusAll(ctx context.Context) ([]api.ACMEStatus, error) {
	labels := m.cfg.Policy().ACMELabels()
	out := make([]api.ACMEStatus, 0, len(labels))
	for _, l := range labels {
		s, err := m.Status(ctx, l)
		if err != nil {
			return nil, err
		}
		out = append(out, *s)
	}
	return out, nil
}

func versionInfo(v *Version) *api.ACMEVersion {
	if v == nil {
		return nil
	}
	info := &api.ACMEVersion{Number: v.Number, Names: slices.Clone(v.Names), NotBefore: v.NotBefore, NotAfter: v.NotAfter, ReadyAt: v.ReadyAt, Serials: map[string]string{}}
	for kt, cf := range v.Certs {
		if leaf, err := pemutil.ParseCertificate(cf.Fullchain); err == nil {
			info.Serials[kt] = fmt.Sprintf("%x", leaf.SerialNumber)
		}
	}
	return info
}
