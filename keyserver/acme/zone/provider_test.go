package zone_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/store"
)

func TestProvider(t *testing.T) {
	st := store.NewMemory()
	p := &zone.Provider{Store: st, Zone: testZone, Now: func() time.Time { return t0 }}
	// A wildcard and its base name, validated at one name at once.
	const kaWild, kaBase = "tokenWild.thumbprint", "tokenBase.thumbprint"
	if err := p.Present("*.example.com", "tokenWild", kaWild); err != nil {
		t.Fatal(err)
	}
	if err := p.Present("example.com", "tokenBase", kaBase); err != nil {
		t.Fatal(err)
	}
	digest := func(keyAuth string) string {
		sum := sha256.Sum256([]byte(keyAuth))
		return base64.RawURLEncoding.EncodeToString(sum[:])
	}
	name := "example.com.acme.example.org"
	if got, want := values(t, st, name), []string{digest(kaWild), digest(kaBase)}; !slices.Equal(got, want) {
		t.Fatalf("Values = %q, want %q", got, want)
	}
	raw, err := st.Get(t.Context(), "acme/dns01/"+name)
	if err != nil {
		t.Fatal(err)
	}
	var entries []struct {
		Value string    `json:"value"`
		Added time.Time `json:"added"`
	}
	if err := json.Unmarshal(raw, &entries); err != nil || len(entries) != 2 || !entries[0].Added.Equal(t0) {
		t.Errorf("stored %s (%v), want two entries added at %v", raw, err, t0)
	}

	if err := p.CleanUp("*.example.com", "tokenWild", kaWild); err != nil {
		t.Fatal(err)
	}
	if got, want := values(t, st, name), []string{digest(kaBase)}; !slices.Equal(got, want) {
		t.Errorf("after the wildcard's CleanUp, Values = %q, want %q", got, want)
	}
	if err := p.CleanUp("example.com", "tokenBase", kaBase); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(t.Context(), "acme/dns01/"+name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after the last CleanUp, the key: %v, want ErrNotFound", err)
	}

	if timeout, interval := p.Timeout(); interval <= 0 || timeout <= interval {
		t.Errorf("Timeout() = %v, %v", timeout, interval)
	}
}

func TestProviderRefuses(t *testing.T) {
	st := store.NewMemory()
	long := strings.Repeat("a.", 120) + "example.com" // fits alone, not in the zone
	for _, tc := range []struct {
		name   string
		p      *zone.Provider
		domain string
	}{
		{"no zone", &zone.Provider{Store: st}, "example.com"},
		{"a name too long for the zone", &zone.Provider{Store: st, Zone: testZone}, long},
		{"not a host name", &zone.Provider{Store: st, Zone: testZone}, "exa mple.com"},
	} {
		if err := tc.p.Present(tc.domain, "token", "token.thumbprint"); err == nil {
			t.Errorf("%s: Present succeeded", tc.name)
		}
	}
	if kvs, _ := st.List(t.Context(), ""); len(kvs) != 0 {
		t.Errorf("the store has %v", kvs)
	}
}
