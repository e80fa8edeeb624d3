package zone_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/store"
)

const testZone = "acme.example.org"

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// value is a TXT value as a dns-01 challenge has, a different one for
// each i.
func value(i int) string {
	sum := sha256.Sum256([]byte(strconv.Itoa(i)))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func values(t *testing.T, st zone.Store, name string) []string {
	t.Helper()
	vs, err := zone.Values(t.Context(), st, name)
	if err != nil {
		t.Fatalf("Values(%s): %v", name, err)
	}
	return vs
}

func TestName(t *testing.T) {
	for _, tc := range []struct{ zone, domain, want string }{
		{testZone, "www.example.com", "www.example.com.acme.example.org"},
		{"ACME.Example.org.", "WWW.Example.COM.", "www.example.com.acme.example.org"},
		{testZone, "example.com", "example.com.acme.example.org"},
		{testZone, "*.example.com", "example.com.acme.example.org"}, // its base name's
		{testZone, "*.www.example.com", "www.example.com.acme.example.org"},
	} {
		if got := zone.Name(tc.zone, tc.domain); got != tc.want {
			t.Errorf("Name(%q, %q) = %q, want %q", tc.zone, tc.domain, got, tc.want)
		}
	}
}

func TestAddRemoveValues(t *testing.T) {
	ctx := t.Context()
	st := store.NewMemory()
	name := zone.Name(testZone, "www.example.com")
	a, b := value(1), value(2)
	for _, v := range []string{a, b} {
		if err := zone.Add(ctx, st, name, v, t0); err != nil {
			t.Fatal(err)
		}
	}
	before, err := st.Get(ctx, "acme/dns01/www.example.com.acme.example.org")
	if err != nil {
		t.Fatalf("the values are not at their key: %v", err)
	}
	if err := zone.Add(ctx, st, name, a, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if after, _ := st.Get(ctx, "acme/dns01/"+name); string(after) != string(before) {
		t.Errorf("adding a value already there rewrote the record:\n%s\nto\n%s", before, after)
	}
	if got := values(t, st, "WWW.Example.com.acme.example.org."); !slices.Equal(got, []string{a, b}) {
		t.Errorf("Values = %q, want %q", got, []string{a, b})
	}

	for range 2 { // the second time, a is no longer there
		if err := zone.Remove(ctx, st, name, a); err != nil {
			t.Fatal(err)
		}
		if got := values(t, st, name); !slices.Equal(got, []string{b}) {
			t.Errorf("after Remove(a), Values = %q, want %q", got, []string{b})
		}
	}
	if err := zone.Remove(ctx, st, name, b); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "acme/dns01/"+name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after the last Remove, the key: %v, want ErrNotFound", err)
	}
	if got := values(t, st, name); len(got) != 0 {
		t.Errorf("after the last Remove, Values = %q", got)
	}
	if err := zone.Remove(ctx, st, name, b); err != nil {
		t.Errorf("Remove at a name without values: %v", err)
	}
}

func TestAddDropsStale(t *testing.T) {
	ctx := t.Context()
	st := store.NewMemory()
	name := zone.Name(testZone, "example.com")
	for _, add := range []struct {
		v  string
		at time.Time
	}{
		{value(1), t0},
		{value(2), t0.Add(23 * time.Hour)},
		{value(3), t0.Add(24*time.Hour + time.Second)}, // value(1) is now stale
	} {
		if err := zone.Add(ctx, st, name, add.v, add.at); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := values(t, st, name), []string{value(2), value(3)}; !slices.Equal(got, want) {
		t.Errorf("Values = %q, want %q", got, want)
	}
}

func TestAddRefusesBadValues(t *testing.T) {
	st := store.NewMemory()
	for _, v := range []string{"", strings.Repeat("a", 256), `a"b`, `a\b`, "a b", "a;b"} {
		if err := zone.Add(t.Context(), st, "x."+testZone, v, t0); err == nil {
			t.Errorf("Add(%q) succeeded", v)
		}
	}
	if kvs, _ := st.List(t.Context(), ""); len(kvs) != 0 {
		t.Errorf("the store has %v", kvs)
	}
}

func TestConcurrentAddRemove(t *testing.T) {
	ctx := t.Context()
	st := store.NewMemory()
	name := zone.Name(testZone, "example.com")
	const n = 16
	var want []string
	var wg sync.WaitGroup
	for i := range n {
		want = append(want, value(i))
		wg.Go(func() {
			if err := zone.Add(ctx, st, name, value(i), t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := values(t, st, name)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after %d concurrent Adds, Values = %q, want %q", n, got, want)
	}

	for i := range n {
		wg.Go(func() {
			if err := zone.Remove(ctx, st, name, value(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, err := st.Get(ctx, "acme/dns01/"+name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after %d concurrent Removes, the key: %v, want ErrNotFound", n, err)
	}
}
