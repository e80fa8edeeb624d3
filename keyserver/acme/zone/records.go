package zone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keysystem/keysystem/keyserver/store"
)

// Store is what the zone needs of the keyserver's storage.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error
}

// keyPrefix is followed by the in-zone name, lowercase and without the
// trailing dot.
const keyPrefix = "acme/dns01/"

// staleAfter is the age at which an entry is dropped on the next write:
// an entry that old was left by a keyserver that stopped between Present
// and CleanUp, since an ACME challenge is answered within minutes.
const staleAfter = 24 * time.Hour

// entry is one TXT value at a name. A name holds a list of them because
// two challenges may be pending there at once: a wildcard and its base
// name share the name, and two keyservers may order the same name.
type entry struct {
	Value string    `json:"value"`
	Added time.Time `json:"added"`
}

// Name is the in-zone name whose TXT record answers the dns-01 challenge
// for domain: the name that _acme-challenge.<domain> is a CNAME to. A
// wildcard shares its base name's (RFC 8555 §8.4 validates *.example.com
// at _acme-challenge.example.com), which is why a name can hold several
// values.
func Name(zone, domain string) string {
	return canonical(strings.TrimPrefix(domain, "*.")) + "." + canonical(zone)
}

// canonical is a name as the store keys it: lowercase (DNS names compare
// without case), without the trailing dot.
func canonical(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

func key(name string) string {
	return keyPrefix + canonical(name)
}

// Add adds value to the TXT values at name, unless it is there already,
// and drops the entries older than a day, as of now.
func Add(ctx context.Context, st Store, name, value string, now time.Time) error {
	if !validValue(value) {
		return fmt.Errorf("zone: TXT value %q for %s: want 1 to 255 base64url characters", value, name)
	}
	err := store.Update(ctx, st, key(name), func(old []byte) ([]byte, error) {
		entries, err := decode(old)
		if err != nil {
			return nil, err
		}
		n := len(entries)
		entries = slices.DeleteFunc(entries, func(e entry) bool { return now.Sub(e.Added) > staleAfter })
		present := slices.ContainsFunc(entries, func(e entry) bool { return e.Value == value })
		if present && len(entries) == n {
			return nil, nil
		}
		if !present {
			entries = append(entries, entry{Value: value, Added: now.UTC()})
		}
		return json.Marshal(entries)
	})
	if err != nil {
		return fmt.Errorf("zone: add a TXT value at %s: %w", name, err)
	}
	return nil
}

// Remove removes value from the TXT values at name, and the store key
// with the last one. Removing a value that is not there is not an error.
func Remove(ctx context.Context, st Store, name, value string) error {
	err := store.Update(ctx, st, key(name), func(raw []byte) ([]byte, error) {
		if raw == nil {
			return nil, nil
		}
		entries, err := decode(raw)
		if err != nil {
			return nil, err
		}
		n := len(entries)
		entries = slices.DeleteFunc(entries, func(e entry) bool { return e.Value == value })
		switch {
		case len(entries) == n:
			return nil, nil
		case len(entries) == 0:
			return nil, store.ErrDelete
		}
		return json.Marshal(entries)
	})
	if err != nil {
		return fmt.Errorf("zone: remove a TXT value at %s: %w", name, err)
	}
	return nil
}

// Values returns the TXT values at name, oldest first; none when there
// are none.
func Values(ctx context.Context, st Store, name string) ([]string, error) {
	raw, err := st.Get(ctx, key(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("zone: read the TXT values at %s: %w", name, err)
	}
	entries, err := decode(raw)
	if err != nil {
		return nil, fmt.Errorf("zone: read the TXT values at %s: %w", name, err)
	}
	values := make([]string, len(entries))
	for i, e := range entries {
		values[i] = e.Value
	}
	return values, nil
}

// decode reads a name's entries; nil is none.
func decode(raw []byte) ([]entry, error) {
	if raw == nil {
		return nil, nil
	}
	var entries []entry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("stored entries: %w", err)
	}
	return entries, nil
}

// validValue: dns-01 values are base64url, 43 characters. Only such
// values reach the store, where one the server could not pack as a single
// TXT string (over 255 bytes, or with the quotes and backslashes that
// miekg/dns reads as escapes) would break every answer at its name.
func validValue(v string) bool {
	if len(v) == 0 || len(v) > 255 {
		return false
	}
	for _, r := range v {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
