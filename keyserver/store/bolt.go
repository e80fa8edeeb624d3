package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var _ Store = (*Bolt)(nil)

// bucket is the one bbolt bucket that holds every key.
var bucket = []byte("kv")

// BoltOptions configures OpenBolt.
type BoltOptions struct {
	// Timeout is how long OpenBolt waits for the lock on the file, which
	// another process holding the store open keeps. Zero means one second.
	Timeout time.Duration
	// BatchDelay is how long a write waits for others to share its
	// commit and fsync. Zero means DefaultBatchDelay.
	BatchDelay time.Duration
}

// DefaultBatchDelay is about one fsync: long enough for writers arriving
// together to share a commit, short enough that a lone writer barely
// notices (bbolt's own default is 10ms).
const DefaultBatchDelay = 2 * time.Millisecond

// Bolt is a Store in a single bbolt file. Each Txn commits with an fsync;
// concurrent Txn calls are coalesced by bbolt's DB.Batch into one commit,
// at the price of up to BoltOptions.BatchDelay more latency for each.
type Bolt struct {
	db *bolt.DB
}

// OpenBolt opens the store in the file at path, creating it with mode 0600
// if it does not exist. A file is open in one process at a time: if
// another holds it, OpenBolt fails after opts.Timeout.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	o := *bolt.DefaultOptions
	o.Timeout = opts.Timeout
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &o)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: open %s: in use by another process: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	db.MaxBatchDelay = opts.BatchDelay
	if db.MaxBatchDelay <= 0 {
		db.MaxBatchDelay = DefaultBatchDelay
	}
	return &Bolt{db: db}, nil
}

// Get returns the value stored at key, or ErrNotFound.
func (s *Bolt) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if key == "" {
		return nil, errEmptyKey
	}
	var v []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		b, ok := lookup(tx.Bucket(bucket), key)
		if !ok {
			return ErrNotFound
		}
		v = clone(b) // b is valid only inside the transaction
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("store: get %q: %w", key, err)
	}
	return v, err
}

// List returns the pairs whose key starts with prefix, sorted by key.
func (s *Bolt) List(ctx context.Context, prefix string) ([]KV, error) {
	return s.ListPage(ctx, prefix, "", 0)
}

// ListPage returns up to limit (0: no limit) of the pairs whose key
// starts with prefix and comes after after, sorted by key.
func (s *Bolt) ListPage(ctx context.Context, prefix, after string, limit int) ([]KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var kvs []KV
	err := s.db.View(func(tx *bolt.Tx) error {
		p := []byte(prefix)
		c := tx.Bucket(bucket).Cursor()
		start := p
		if after > prefix {
			start = []byte(after)
		}
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, p) && (limit <= 0 || len(kvs) < limit); k, v = c.Next() {
			if string(k) == after {
				continue
			}
			kvs = append(kvs, KV{Key: string(k), Value: clone(v)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list %q: %w", prefix, err)
	}
	return kvs, nil
}

// Txn applies ops if every condition in conds holds, and otherwise
// returns ErrConflict and changes nothing. It returns once the write is
// on disk.
func (s *Bolt) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := checkKeys(conds, ops); err != nil {
		return err
	}
	// Batch may run fn more than once, so fn depends only on the
	// transaction's state; an error rolls back the whole batch, and Batch
	// then reruns fn alone and returns its error.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, c := range conds {
			v, ok := lookup(b, c.Key)
			if !holds(c, v, ok) {
				return ErrConflict
			}
		}
		for _, op := range ops {
			var err error
			if op.Delete {
				err = b.Delete([]byte(op.Key))
			} else {
				err = b.Put([]byte(op.Key), op.Value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrConflict) {
		return fmt.Errorf("store: txn: %w", err)
	}
	return err
}

// Close closes the file. The Bolt must not be used afterwards.
func (s *Bolt) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// lookup returns the value at key in b, valid only for the life of the
// transaction, and whether the key is present: unlike Bucket.Get, it tells
// an absent key from an empty value.
func lookup(b *bolt.Bucket, key string) ([]byte, bool) {
	k, v := b.Cursor().Seek([]byte(key))
	return v, k != nil && string(k) == key
}
