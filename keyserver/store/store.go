// Package store is the keyserver's persistent state: a small key/value
// contract with atomic multi-key transactions, and its implementations.
//
// The contract, which every implementation must honour and which the
// conformance suite in storetest checks:
//
//   - Keys are non-empty UTF-8 strings; by convention they are
//     slash-separated paths such as "tokens/<id>" or "nodes/<name>".
//     Values are opaque bytes; an empty value is a present value.
//   - Get returns ErrNotFound (test with errors.Is) when the key is absent.
//   - List returns every pair whose key starts with prefix, sorted by key.
//   - Txn is atomic and linearizable: either every condition holds and every
//     operation is applied, or ErrConflict is returned and nothing changes.
//     Of any number of concurrent Txn calls whose conditions are mutually
//     exclusive, exactly one succeeds. Once Txn returns nil, the write is
//     durable: it survives a crash of the process or the machine.
//   - Values passed in and returned are never retained or shared: callers
//     may modify them freely.
//   - Every call honours ctx: a cancelled context returns ctx.Err() (wrapped)
//     without starting the operation. An operation already committed is not
//     undone by a later cancellation.
//   - All methods are safe for concurrent use.
//
// The store imports nothing else of this module: it sits at the ground of
// the dependency graph, and the packages that need storage declare the few
// methods they use.
package store

import (
	"context"
	"errors"
)

// ErrNotFound is returned by Get when the key is absent.
var ErrNotFound = errors.New("store: not found")

// ErrConflict is returned by Txn when a condition does not hold.
var ErrConflict = errors.New("store: condition failed")

// KV is one key and its value.
type KV struct {
	Key   string
	Value []byte
}

// Cond is a condition of a transaction: the key's current value must equal
// Value byte for byte, or, when Absent is set, the key must not exist.
type Cond struct {
	Key    string
	Value  []byte
	Absent bool
}

// Op is a write of a transaction: Value is stored at Key, or the key is
// removed when Delete is set (removing an absent key is not an error).
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Store is the storage contract described in the package comment.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	List(ctx context.Context, prefix string) ([]KV, error)
	// ListPage is List in pages: at most limit pairs, those whose key
	// comes after after ("" for the first page). A short page is the last.
	ListPage(ctx context.Context, prefix, after string, limit int) ([]KV, error)
	Txn(ctx context.Context, conds []Cond, ops []Op) error
	Close() error
}

// Pager is what Each needs of a store.
type Pager interface {
	ListPage(ctx context.Context, prefix, after string, limit int) ([]KV, error)
}

// Each calls fn for every pair whose key starts with prefix, in key order,
// reading page pairs at a time, so that a large prefix (a fleet's nodes or
// tokens) is never all in memory. An error from fn stops it and is
// returned as it is.
func Each(ctx context.Context, s Pager, prefix string, page int, fn func(KV) error) error {
	for after := ""; ; {
		kvs, err := s.ListPage(ctx, prefix, after, page)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if err := fn(kv); err != nil {
				return err
			}
		}
		if len(kvs) < page {
			return nil
		}
		after = kvs[len(kvs)-1].Key
	}
}

// Updater is what Update needs of a store.
type Updater interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Txn(ctx context.Context, conds []Cond, ops []Op) error
}

// ErrDelete, returned by an Update function, removes the key.
var ErrDelete = errors.New("store: delete the key")

// Update is a read-modify-write of one key with optimistic concurrency:
// fn sees the current value (nil when absent) and returns the new one,
// nil to leave it as it is, or ErrDelete to remove the key; when the key
// changed meanwhile, fn runs again on the new value. Any other error
// from fn is returned as it is.
func Update(ctx context.Context, s Updater, key string, fn func(old []byte) ([]byte, error)) error {
	for {
		raw, err := s.Get(ctx, key)
		cond := Cond{Key: key, Value: raw}
		if errors.Is(err, ErrNotFound) {
			raw, cond = nil, Cond{Key: key, Absent: true}
		} else if err != nil {
			return err
		}
		next, err := fn(raw)
		op := Op{Key: key, Value: next}
		switch {
		case errors.Is(err, ErrDelete) && raw != nil:
			op = Op{Key: key, Delete: true}
		case err != nil && !errors.Is(err, ErrDelete):
			return err
		case next == nil:
			return nil
		}
		if err := s.Txn(ctx, []Cond{cond}, []Op{op}); !errors.Is(err, ErrConflict) {
			return err
		}
	}
}

// Put stores value at key unconditionally.
func Put(ctx context.Context, s Updater, key string, value []byte) error {
	return s.Txn(ctx, nil, []Op{{Key: key, Value: value}})
}
