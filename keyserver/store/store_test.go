package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/keyserver/store/storetest"
)

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return store.NewMemory() })
}

func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openBolt(t, t.TempDir())
	})
	storetest.RunDurable(t, openBolt)
}

func openBolt(t *testing.T, dir string) store.Store {
	t.Helper()
	s, err := store.OpenBolt(filepath.Join(dir, "keyserver.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBoltInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyserver.db")
	opts := store.BoltOptions{Timeout: 100 * time.Millisecond}
	s, err := store.OpenBolt(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	start := time.Now()
	s2, err := store.OpenBolt(path, opts)
	if err == nil {
		s2.Close()
		t.Fatal("second OpenBolt of an open file succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second OpenBolt took %v to fail", d)
	}
	if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("second OpenBolt: error %q does not say the store is in use", err)
	}

	// Once the first is closed, the file opens again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err = store.OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt after Close: %v", err)
	}
	s2.Close()
}

// The two benchmarks compare Txn from one goroutine, where each commit
// waits alone for its fsync, with Txn from many, whose commits bbolt's
// Batch coalesces.

func BenchmarkBoltTxnSerial(b *testing.B) {
	s := benchBolt(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if err := store.Put(ctx, s, fmt.Sprintf("k/%d", i), []byte("value")); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkBoltTxnParallel(b *testing.B) {
	s := benchBolt(b)
	ctx := context.Background()
	var n atomic.Int64
	// Writers wait on the disk, not the CPU: run many per CPU, as a
	// server does for concurrent requests.
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := fmt.Sprintf("k/%d", n.Add(1))
			if err := store.Put(ctx, s, key, []byte("value")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchBolt(b *testing.B) *store.Bolt {
	s, err := store.OpenBolt(filepath.Join(b.TempDir(), "bench.db"), store.BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// Update runs fn again on the value a concurrent writer left, and leaves
// the key alone when fn returns nil.
func TestUpdate(t *testing.T) {
	ctx := t.Context()
	s := store.NewMemory()
	var seen []string
	err := store.Update(ctx, s, "k", func(old []byte) ([]byte, error) {
		seen = append(seen, string(old))
		if len(seen) == 1 { // someone else writes between our read and our write
			if err := store.Put(ctx, s, "k", []byte("theirs")); err != nil {
				t.Fatal(err)
			}
		}
		return append(old, "+mine"...), nil
	})
	if err != nil || len(seen) != 2 || seen[0] != "" || seen[1] != "theirs" {
		t.Fatalf("Update = %v, fn saw %q; want it run on nothing, then on theirs", err, seen)
	}
	if v, _ := s.Get(ctx, "k"); string(v) != "theirs+mine" {
		t.Errorf("value %q, want theirs+mine", v)
	}
	if err := store.Update(ctx, s, "k", func([]byte) ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get(ctx, "k"); string(v) != "theirs+mine" {
		t.Errorf("a nil from fn changed the value to %q", v)
	}
	boom := errors.New("boom")
	if err := store.Update(ctx, s, "k", func([]byte) ([]byte, error) { return nil, boom }); err != boom {
		t.Errorf("fn's error came back as %v", err)
	}
	// ErrDelete removes the key, on the value as it is when written.
	seen = nil
	err = store.Update(ctx, s, "k", func(old []byte) ([]byte, error) {
		seen = append(seen, string(old))
		if len(seen) == 1 {
			if err := store.Put(ctx, s, "k", []byte("changed")); err != nil {
				t.Fatal(err)
			}
		}
		return nil, store.ErrDelete
	})
	if _, gerr := s.Get(ctx, "k"); err != nil || !errors.Is(gerr, store.ErrNotFound) || len(seen) != 2 || seen[1] != "changed" {
		t.Errorf("Update with ErrDelete = %v, fn saw %q, then Get = %v; want it deleted after a second look", err, seen, gerr)
	}
	if err := store.Update(ctx, s, "k", func([]byte) ([]byte, error) { return nil, store.ErrDelete }); err != nil {
		t.Errorf("ErrDelete of an absent key = %v, want nil", err)
	}
}
