package store

import (
	"bytes"
	"errors"
)

// errEmptyKey is returned for an empty key, which the contract forbids.
var errEmptyKey = errors.New("store: empty key")

// checkKeys returns errEmptyKey if a condition or an operation has an
// empty key.
func checkKeys(conds []Cond, ops []Op) error {
	for _, c := range conds {
		if c.Key == "" {
			return errEmptyKey
		}
	}
	for _, op := range ops {
		if op.Key == "" {
			return errEmptyKey
		}
	}
	return nil
}

// holds reports whether c holds for a key whose current value is v,
// where ok reports whether the key is present.
func holds(c Cond, v []byte, ok bool) bool {
	if c.Absent {
		return !ok
	}
	return ok && bytes.Equal(v, c.Value)
}

// clone returns a copy of b that shares no memory with it. The copy is
// never nil, so that a present empty value reads as non-nil.
func clone(b []byte) []byte {
	return append([]byte{}, b...)
}
