// Package storetest is a conformance suite for implementations of
// store.Store: it checks, one subtest at a time, each promise of the
// contract described in the store package.
//
// An implementation's tests call Run, and RunDurable if it keeps its data
// on disk:
//
//	func TestMine(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return newMine(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/keysystem/keysystem/keyserver/store"
)

// Run runs the conformance suite. Each subtest calls open for a new, empty
// store, and closes it when the subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// RunDurable checks that a store keeps its data once closed and reopened.
// It calls open twice with the same empty directory, closing the first
// store before opening the second, and closes the second when it is done.
func RunDurable(t *testing.T, open func(t *testing.T, dir string) store.Store) {
	t.Run("Durable", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		put(t, s, "a/1", "one")
		put(t, s, "a/2", "two")
		put(t, s, "a/empty", "")
		put(t, s, "gone", "x")
		txn(t, s, []store.Cond{{Key: "a/1", Value: []byte("one")}}, []store.Op{
			{Key: "a/1", Value: []byte("uno")},
			{Key: "gone", Delete: true},
		})
		want := dump(t, s)
		// A failed Txn must leave nothing behind either.
		err := s.Txn(ctx, []store.Cond{{Key: "a/2", Absent: true}}, []store.Op{{Key: "a/3", Value: []byte("three")}})
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Txn with failing cond: got %v, want ErrConflict", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}

		s = open(t, dir)
		defer func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		if got := dump(t, s); !maps.Equal(got, want) {
			t.Errorf("after reopen: got %q, want %q", got, want)
		}
		// The reopened store is writable.
		put(t, s, "a/4", "four")
		checkGet(t, s, "a/4", "four")
	})
}

var ctx = context.Background()

var tests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"GetNotFound", testGetNotFound},
	{"EmptyKey", testEmptyKey},
	{"PutGet", testPutGet},
	{"EmptyValue", testEmptyValue},
	{"List", testList},
	{"CondAbsent", testCondAbsent},
	{"CondValue", testCondValue},
	{"Atomic", testAtomic},
	{"Delete", testDelete},
	{"NoAliasing", testNoAliasing},
	{"Canceled", testCanceled},
	{"RaceAbsent", testRaceAbsent},
	{"Counter", testCounter},
}

func testGetNotFound(t *testing.T, s store.Store) {
	v, err := s.Get(ctx, "nope")
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of absent key: got %q, %v; want ErrNotFound", v, err)
	}
	put(t, s, "nope/child", "x")
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of absent key with a child: got %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "nop"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of absent prefix of a key: got %v, want ErrNotFound", err)
	}
}

func testEmptyKey(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	want := dump(t, s)
	if _, err := s.Get(ctx, ""); err == nil {
		t.Error("Get of empty key: got nil error")
	}
	for _, tc := range []struct {
		name  string
		conds []store.Cond
		ops   []store.Op
	}{
		{"put", nil, []store.Op{{Key: "a", Value: []byte("1")}, {Key: "", Value: []byte("2")}}},
		{"delete", nil, []store.Op{{Key: "k", Delete: true}, {Key: "", Delete: true}}},
		{"cond", []store.Cond{{Key: "", Absent: true}}, []store.Op{{Key: "a", Value: []byte("1")}}},
	} {
		if err := s.Txn(ctx, tc.conds, tc.ops); err == nil {
			t.Errorf("Txn with empty key in %s: got nil error", tc.name)
		}
	}
	checkAll(t, s, want)
}

func testPutGet(t *testing.T, s store.Store) {
	put(t, s, "tokens/a", "first")
	checkGet(t, s, "tokens/a", "first")
	put(t, s, "tokens/a", "second")
	checkGet(t, s, "tokens/a", "second")
	bin := string([]byte{0, 1, 2, 0xff, 0xfe, 0})
	put(t, s, "tokens/bin", bin)
	checkGet(t, s, "tokens/bin", bin)
	if err := s.Txn(ctx, nil, nil); err != nil {
		t.Errorf("empty Txn: %v", err)
	}
	checkGet(t, s, "tokens/a", "second")
}

func testEmptyValue(t *testing.T, s store.Store) {
	for key, v := range map[string][]byte{"empty/nil": nil, "empty/zero": {}} {
		if err := store.Put(ctx, s, key, v); err != nil {
			t.Fatalf("Put(%q, %#v): %v", key, v, err)
		}
		checkGet(t, s, key, "")
		err := s.Txn(ctx, []store.Cond{{Key: key, Absent: true}}, nil)
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("Absent cond on key %q with empty value: got %v, want ErrConflict", key, err)
		}
		for _, cv := range [][]byte{nil, {}} {
			if err := s.Txn(ctx, []store.Cond{{Key: key, Value: cv}}, nil); err != nil {
				t.Errorf("cond %#v on key %q with empty value: %v", cv, key, err)
			}
		}
	}
	if got := dump(t, s); len(got) != 2 {
		t.Errorf("List: got %q, want both empty values", got)
	}
	// An empty value is not an absent key, nor the other way round.
	err := s.Txn(ctx, []store.Cond{{Key: "empty/none", Value: nil}}, nil)
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("empty-value cond on absent key: got %v, want ErrConflict", err)
	}
}

func testList(t *testing.T, s store.Store) {
	for _, k := range []string{"nodes/b", "a", "nodes/a/x", "nodes", "nodes/", "nodesx", "nodes/a", "tokens/1", "nodes/c"} {
		put(t, s, k, "v:"+k)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"nodes/", []string{"nodes/", "nodes/a", "nodes/a/x", "nodes/b", "nodes/c"}},
		{"nodes/a", []string{"nodes/a", "nodes/a/x"}},
		{"nodes", []string{"nodes", "nodes/", "nodes/a", "nodes/a/x", "nodes/b", "nodes/c", "nodesx"}},
		{"tokens/", []string{"tokens/1"}},
		{"", []string{"a", "nodes", "nodes/", "nodes/a", "nodes/a/x", "nodes/b", "nodes/c", "nodesx", "tokens/1"}},
		{"missing/", nil},
		{"z", nil},
	} {
		kvs, err := s.List(ctx, tc.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", tc.prefix, err)
		}
		var got []string
		for _, kv := range kvs {
			got = append(got, kv.Key)
			if want := "v:" + kv.Key; string(kv.Value) != want {
				t.Errorf("List(%q): key %q has value %q, want %q", tc.prefix, kv.Key, kv.Value, want)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) keys = %q, want %q", tc.prefix, got, tc.want)
		}
		// Paged, the same pairs in the same order, whatever the page size.
		for _, limit := range []int{1, 2, 3, 100} {
			var paged []string
			for after := ""; ; {
				kvs, err := s.ListPage(ctx, tc.prefix, after, limit)
				if err != nil {
					t.Fatalf("ListPage(%q, %q, %d): %v", tc.prefix, after, limit, err)
				}
				if len(kvs) > limit {
					t.Fatalf("ListPage(%q, %q, %d) gave %d pairs", tc.prefix, after, limit, len(kvs))
				}
				for _, kv := range kvs {
					paged = append(paged, kv.Key)
				}
				if len(kvs) < limit {
					break
				}
				after = kvs[len(kvs)-1].Key
			}
			if !slices.Equal(paged, tc.want) {
				t.Errorf("ListPage(%q) by %d = %q, want %q", tc.prefix, limit, paged, tc.want)
			}
			var each []string
			if err := store.Each(ctx, s, tc.prefix, limit, func(kv store.KV) error {
				each = append(each, kv.Key)
				return nil
			}); err != nil || !slices.Equal(each, tc.want) {
				t.Errorf("Each(%q) by %d = %q, %v; want %q", tc.prefix, limit, each, err, tc.want)
			}
		}
	}
	// An error from fn stops Each and comes back as it is.
	stop, calls := errors.New("stop"), 0
	if err := store.Each(ctx, s, "nodes/", 2, func(store.KV) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("Each with a failing fn: %v after %d calls, want stop after 1", err, calls)
	}
	// A page may start after a key that is not there.
	if kvs, err := s.ListPage(ctx, "nodes/", "nodes/aa", 2); err != nil || len(kvs) != 2 || kvs[0].Key != "nodes/b" || kvs[1].Key != "nodes/c" {
		t.Errorf("ListPage(nodes/, after nodes/aa, 2) = %v, %v; want nodes/b, nodes/c", kvs, err)
	}
}

func testCondAbsent(t *testing.T, s store.Store) {
	txn(t, s, []store.Cond{{Key: "k", Absent: true}}, []store.Op{{Key: "k", Value: []byte("1")}})
	checkGet(t, s, "k", "1")
	want := dump(t, s)
	err := s.Txn(ctx, []store.Cond{{Key: "k", Absent: true}}, []store.Op{{Key: "k", Value: []byte("2")}, {Key: "other", Value: []byte("x")}})
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("Absent cond on present key: got %v, want ErrConflict", err)
	}
	checkAll(t, s, want)
}

func testCondValue(t *testing.T, s store.Store) {
	put(t, s, "a", "1")
	put(t, s, "b", "2")
	txn(t, s, []store.Cond{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}},
		[]store.Op{{Key: "a", Value: []byte("10")}})
	checkGet(t, s, "a", "10")
	want := dump(t, s)
	for _, tc := range []struct {
		name  string
		conds []store.Cond
	}{
		{"wrong value", []store.Cond{{Key: "a", Value: []byte("20")}}},
		{"prefix of value", []store.Cond{{Key: "a", Value: []byte("1")}}},
		{"longer value", []store.Cond{{Key: "a", Value: []byte("100")}}},
		{"absent key", []store.Cond{{Key: "c", Value: []byte("2")}}},
		{"one of two", []store.Cond{{Key: "a", Value: []byte("10")}, {Key: "b", Value: []byte("3")}}},
		{"other of two", []store.Cond{{Key: "a", Value: []byte("11")}, {Key: "b", Value: []byte("2")}}},
		{"value and absent", []store.Cond{{Key: "a", Value: []byte("10")}, {Key: "b", Absent: true}}},
	} {
		err := s.Txn(ctx, tc.conds, []store.Op{
			{Key: "a", Value: []byte("changed")},
			{Key: "b", Delete: true},
			{Key: "c", Value: []byte("new")},
		})
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: got %v, want ErrConflict", tc.name, err)
		}
		checkAll(t, s, want)
	}
}

func testAtomic(t *testing.T, s store.Store) {
	put(t, s, "old", "x")
	txn(t, s, []store.Cond{{Key: "old", Value: []byte("x")}, {Key: "n/1", Absent: true}}, []store.Op{
		{Key: "n/1", Value: []byte("1")},
		{Key: "n/2", Value: []byte("2")},
		{Key: "old", Delete: true},
		{Key: "n/3", Value: []byte("first")},
		{Key: "n/3", Value: []byte("last")}, // later ops win
	})
	want := map[string]string{"n/1": "1", "n/2": "2", "n/3": "last"}
	checkAll(t, s, want)

	err := s.Txn(ctx, []store.Cond{{Key: "n/1", Value: []byte("1")}, {Key: "n/2", Absent: true}}, []store.Op{
		{Key: "n/1", Delete: true},
		{Key: "n/2", Value: []byte("two")},
		{Key: "n/4", Value: []byte("4")},
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("Txn with one failing cond: got %v, want ErrConflict", err)
	}
	checkAll(t, s, want)
}

func testDelete(t *testing.T, s store.Store) {
	put(t, s, "a", "1")
	put(t, s, "b", "2")
	txn(t, s, nil, []store.Op{{Key: "a", Delete: true}})
	if _, err := s.Get(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after delete: got %v, want ErrNotFound", err)
	}
	txn(t, s, nil, []store.Op{{Key: "a", Delete: true}, {Key: "never", Delete: true}})
	checkAll(t, s, map[string]string{"b": "2"})
	txn(t, s, []store.Cond{{Key: "a", Absent: true}}, []store.Op{{Key: "a", Value: []byte("again")}, {Key: "b", Delete: true}})
	checkAll(t, s, map[string]string{"a": "again"})
	// A delete followed by a put of the same key leaves the put.
	txn(t, s, nil, []store.Op{{Key: "a", Delete: true}, {Key: "a", Value: []byte("back")}})
	checkGet(t, s, "a", "back")
}

func testNoAliasing(t *testing.T, s store.Store) {
	// Enough data that a store cannot keep it all in a small inline
	// structure, which might hide sharing.
	for i := range 8 {
		put(t, s, "filler/"+strconv.Itoa(i), strings.Repeat("f", 1000))
	}
	in := []byte("value")
	if err := store.Put(ctx, s, "k", in); err != nil {
		t.Fatal(err)
	}
	in[0] = 'X'
	checkGet(t, s, "k", "value")

	cv, ov := []byte("value"), []byte("new")
	txn(t, s, []store.Cond{{Key: "k", Value: cv}}, []store.Op{{Key: "k", Value: ov}})
	cv[0], ov[0] = 'X', 'X'
	checkGet(t, s, "k", "new")

	v, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	scribble(v)
	checkGet(t, s, "k", "new")

	kvs, err := s.List(ctx, "k")
	if err != nil || len(kvs) != 1 {
		t.Fatalf("List: got %q, %v; want one pair", kvs, err)
	}
	scribble(kvs[0].Value)
	checkGet(t, s, "k", "new")
}

// scribble overwrites b up to its capacity.
func scribble(b []byte) {
	b = b[:cap(b)]
	for i := range b {
		b[i] = 'X'
	}
}

func testCanceled(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	want := dump(t, s)
	c, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(c, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get: got %v, want context.Canceled", err)
	}
	if _, err := s.List(c, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("List: got %v, want context.Canceled", err)
	}
	err := s.Txn(c, nil, []store.Op{{Key: "k", Value: []byte("changed")}, {Key: "new", Value: []byte("x")}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Txn: got %v, want context.Canceled", err)
	}
	if err := store.Put(c, s, "k2", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put: got %v, want context.Canceled", err)
	}
	checkAll(t, s, want)

	// A committed write stays when its context is cancelled afterwards.
	c, cancel = context.WithCancel(ctx)
	if err := store.Put(c, s, "k", []byte("committed")); err != nil {
		t.Fatal(err)
	}
	cancel()
	checkGet(t, s, "k", "committed")
}

// testRaceAbsent races Txns whose conditions exclude one another: exactly
// one must win.
func testRaceAbsent(t *testing.T, s store.Store) {
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.Txn(ctx, []store.Cond{{Key: "lock", Absent: true}},
				[]store.Op{{Key: "lock", Value: []byte(strconv.Itoa(i))}})
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("both %d and %d won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("Txn %d: got %v, want nil or ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no Txn won")
	}
	checkGet(t, s, "lock", strconv.Itoa(winner))
}

// testCounter increments a counter with compare-and-swap from several
// goroutines: no increment may be lost.
func testCounter(t *testing.T, s store.Store) {
	const workers, incs = 8, 25
	put(t, s, "counter", "0")
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range incs {
				if err := increment(s, "counter"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	checkGet(t, s, "counter", strconv.Itoa(workers*incs))
}

// increment adds one to the decimal number at key, retrying on conflict.
func increment(s store.Store, key string) error {
	for {
		v, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(string(v))
		if err != nil {
			return err
		}
		err = s.Txn(ctx, []store.Cond{{Key: key, Value: v}},
			[]store.Op{{Key: key, Value: []byte(strconv.Itoa(n + 1))}})
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
}

func put(t *testing.T, s store.Store, key, value string) {
	t.Helper()
	if err := store.Put(ctx, s, key, []byte(value)); err != nil {
		t.Fatalf("Put(%q, %q): %v", key, value, err)
	}
}

func txn(t *testing.T, s store.Store, conds []store.Cond, ops []store.Op) {
	t.Helper()
	if err := s.Txn(ctx, conds, ops); err != nil {
		t.Fatalf("Txn: %v", err)
	}
}

func checkGet(t *testing.T, s store.Store, key, want string) {
	t.Helper()
	v, err := s.Get(ctx, key)
	if err != nil {
		t.Errorf("Get(%q): %v; want %q", key, err, want)
	} else if !bytes.Equal(v, []byte(want)) {
		t.Errorf("Get(%q) = %q, want %q", key, v, want)
	}
}

// dump returns every pair in s, checking that List sorts them.
func dump(t *testing.T, s store.Store) map[string]string {
	t.Helper()
	kvs, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	m := make(map[string]string)
	for i, kv := range kvs {
		if i > 0 && kvs[i-1].Key >= kv.Key {
			t.Errorf("List: %q before %q", kvs[i-1].Key, kv.Key)
		}
		m[kv.Key] = string(kv.Value)
	}
	return m
}

// checkAll checks that s holds exactly want, through both List and Get.
func checkAll(t *testing.T, s store.Store, want map[string]string) {
	t.Helper()
	if got := dump(t, s); !maps.Equal(got, want) {
		t.Errorf("store holds %q, want %q", got, want)
	}
	for k, v := range want {
		checkGet(t, s, k, v)
	}
}
