package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

var _ Store = (*Memory)(nil)

// Memory is a Store held in memory, for keyserver --dev and for tests.
// It keeps every promise of the contract except durability: its data is
// lost with the process. The zero value is not usable; call NewMemory.
type Memory struct {
	mu sync.RWMutex
	m  map[string][]byte // values are never modified in place
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{m: make(map[string][]byte)}
}

// Get returns the value stored at key, or ErrNotFound.
func (s *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if key == "" {
		return nil, errEmptyKey
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m[key]
	if !ok {
		return nil, ErrNotFound
	}
	return clone(v), nil
}

// List returns the pairs whose key starts with prefix, sorted by key.
func (s *Memory) List(ctx context.Context, prefix string) ([]KV, error) {
	return s.ListPage(ctx, prefix, "", 0)
}

// ListPage returns up to limit (0: no limit) of the pairs whose key
// starts with prefix and comes after after, sorted by key.
func (s *Memory) ListPage(ctx context.Context, prefix, after string, limit int) ([]KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var kvs []KV
	for k, v := range s.m {
		if strings.HasPrefix(k, prefix) && k > after {
			kvs = append(kvs, KV{Key: k, Value: clone(v)})
		}
	}
	slices.SortFunc(kvs, func(a, b KV) int { return strings.Compare(a.Key, b.Key) })
	if limit > 0 && len(kvs) > limit {
		kvs = kvs[:limit]
	}
	return kvs, nil
}

// Txn applies ops if every condition in conds holds, and otherwise
// returns ErrConflict and changes nothing.
func (s *Memory) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := checkKeys(conds, ops); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range conds {
		v, ok := s.m[c.Key]
		if !holds(c, v, ok) {
			return ErrConflict
		}
	}
	for _, op := range ops {
		if op.Delete {
			delete(s.m, op.Key)
		} else {
			s.m[op.Key] = clone(op.Value)
		}
	}
	return nil
}

// Close does nothing: the data stays readable, and is lost only with the
// Memory itself.
func (s *Memory) Close() error {
	return nil
}
