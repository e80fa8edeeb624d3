package tokens

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// golden is the token New makes from the bytes 0, 1, ..., 29. It was
// cross-checked against an independent implementation of CRC-32C and
// Crockford base32.
const (
	golden       = "ks1_000g40r40m30e209_185gr38e1w8124gk2gahc5rr34d1p70xpqda6pg"
	goldenID     = "000g40r40m30e209"
	goldenSecret = "185gr38e1w8124gk2gahc5rr34d1p70x"
	goldenHash   = "6e8151db5418092ca69a9df903617ec2457614782e54ccd178f702b3326ad177"
)

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func seeded(seed byte) io.Reader {
	return rand.NewChaCha8([32]byte{seed})
}

func mustNew(t testing.TB, r io.Reader) Token {
	t.Helper()
	tok, err := New(r)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tok
}

func TestGolden(t *testing.T) {
	tok := mustNew(t, bytes.NewReader(seq(30)))
	if tok.ID != goldenID || tok.Secret != goldenSecret {
		t.Fatalf("New = %+v, want ID %q, Secret %q", tok, goldenID, goldenSecret)
	}
	if got := tok.String(); got != golden {
		t.Errorf("String = %q, want %q", got, golden)
	}
	if got := hex.EncodeToString(tok.Hash()); got != goldenHash {
		t.Errorf("Hash = %s, want %s", got, goldenHash)
	}
	if sum := sha256.Sum256(seq(30)[10:]); !bytes.Equal(tok.Hash(), sum[:]) {
		t.Errorf("Hash is not SHA-256 of the secret bytes")
	}
}

func TestRoundTrip(t *testing.T) {
	r := seeded(1)
	for range 100 {
		tok := mustNew(t, r)
		if !ValidID(tok.ID) {
			t.Errorf("ValidID(%q) = false", tok.ID)
		}
		s := tok.String()
		if len(s) != textLen {
			t.Errorf("len(%q) = %d, want %d", s, len(s), textLen)
		}
		got, err := Parse(s)
		if err != nil || got != tok {
			t.Errorf("Parse(%q) = %+v, %v, want %+v", s, got, err, tok)
		}
	}
}

func TestNewError(t *testing.T) {
	boom := errors.New("boom")
	if _, err := New(iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Errorf("New(failing reader) error = %v, want %v", err, boom)
	}
	if _, err := New(bytes.NewReader(seq(29))); err == nil {
		t.Errorf("New(short reader) succeeded")
	}
}

func TestParseLenient(t *testing.T) {
	want := Token{ID: goldenID, Secret: goldenSecret}
	lookalikes := strings.NewReplacer("1", "l", "0", "O")
	tests := []string{
		golden,
		strings.ToUpper(golden),
		"  \t" + golden + "\r\n",
		lookalikes.Replace(golden),
		strings.ReplaceAll(golden, "1", "I"),
		strings.ReplaceAll(golden, "1", "i"),
		strings.ReplaceAll(golden, "0", "o"),
	}
	for _, s := range tests {
		got, err := Parse(s)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v, want %+v", s, got, err, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	body := golden[len(prefix):]
	tests := []struct {
		in   string
		want error
	}{
		{"", ErrMalformed},
		{"ks1_", ErrMalformed},
		{golden[:len(golden)-1], ErrMalformed},
		{golden + "0", ErrMalformed},
		{golden[1:], ErrMalformed},
		{"ks2_" + body, ErrMalformed},
		{"ks1-" + body, ErrMalformed},
		{"kz1_" + body, ErrMalformed},
		{"_" + golden[1:], ErrMalformed},
		{golden[:20] + "-" + golden[21:], ErrMalformed},                          // separator
		{golden[:30] + "u" + golden[31:], ErrMalformed},                          // u is not Crockford
		{golden[:30] + "é" + golden[32:], ErrMalformed},                          // non-ASCII, same byte length
		{golden[:30] + " " + golden[31:], ErrMalformed},                          // inner space
		{golden[:30] + "\n" + golden[31:], ErrMalformed},                         // inner newline
		{golden[:len(golden)-1] + "h", ErrChecksum},                              // nonzero pad bits
		{golden[:21] + golden[22:23] + golden[21:22] + golden[23:], ErrChecksum}, // transposition
		{strings.ToUpper(golden[:30]) + "x" + golden[31:], ErrChecksum},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("Parse(%q) = %+v, %v, want %v", tt.in, got, err, tt.want)
		}
		if got != (Token{}) {
			t.Errorf("Parse(%q) returned non-zero token %+v on error", tt.in, got)
		}
	}
	if errors.Is(ErrChecksum, ErrMalformed) || errors.Is(ErrMalformed, ErrChecksum) {
		t.Errorf("ErrChecksum and ErrMalformed are not distinct")
	}
}

// TestParseSubstitution checks that every single-character substitution
// in the id, secret and check code is caught, except those that are the
// same character under case folding and look-alike mapping.
func TestParseSubstitution(t *testing.T) {
	want := Token{ID: goldenID, Secret: goldenSecret}
	repl := alphabet + strings.ToUpper(alphabet) + "ilouILOU_-+ \x00\xff"
	for i := len(prefix); i < len(golden); i++ {
		if i == len(prefix)+idLen {
			continue // the '_' separator
		}
		for j := 0; j < len(repl); j++ {
			c := repl[j]
			s := golden[:i] + string(c) + golden[i+1:]
			got, err := Parse(s)
			if normalize(c) == golden[i] {
				if err != nil || got != want {
					t.Errorf("Parse(%q) = %+v, %v, want %+v", s, got, err, want)
				}
				continue
			}
			if !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse(%q) = %+v, %v, want ErrChecksum or ErrMalformed", s, got, err)
			}
		}
	}
}

func TestHash(t *testing.T) {
	r := seeded(2)
	a, b := mustNew(t, r), mustNew(t, r)
	ha, hb := a.Hash(), b.Hash()
	if len(ha) != sha256.Size || len(hb) != sha256.Size {
		t.Fatalf("Hash lengths = %d, %d, want %d", len(ha), len(hb), sha256.Size)
	}
	if bytes.Equal(ha, hb) {
		t.Errorf("different secrets have the same hash")
	}
	if c := (Token{ID: b.ID, Secret: a.Secret}); !bytes.Equal(c.Hash(), ha) {
		t.Errorf("Hash depends on more than the secret")
	}
	for _, s := range []string{"", "short", strings.ToUpper(a.Secret), a.Secret[:31] + "u", a.Secret[:31] + "\n"} {
		if h := (Token{Secret: s}).Hash(); h != nil {
			t.Errorf("Hash of invalid secret %q = %x, want nil", s, h)
		}
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{goldenID, true},
		{"0123456789abcdef", true},
		{"zzzzzzzzzzzzzzzz", true},
		{"", false},
		{goldenID[:15], false},
		{goldenID + "0", false},
		{strings.ToUpper("0123456789abcdef"), false},
		{"0123456789abcdeu", false},
		{"0123456789abcdei", false},
		{"0123456789abcde_", false},
	}
	for _, tt := range tests {
		if got := ValidID(tt.id); got != tt.want {
			t.Errorf("ValidID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

func TestLogValue(t *testing.T) {
	tok := Token{ID: goldenID, Secret: goldenSecret}
	if got := tok.LogValue().String(); got != goldenID {
		t.Errorf("LogValue = %q, want %q", got, goldenID)
	}
}

var (
	t0      = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	expires = t0.Add(24 * time.Hour)
	grace   = 10 * time.Minute
)

func key(b byte) []byte {
	h := sha256.Sum256([]byte{b})
	return h[:]
}

func TestCheck(t *testing.T) {
	tok := mustNew(t, seeded(3))
	other := mustNew(t, seeded(4))
	pending := Record{
		ID:      tok.ID,
		Hash:    tok.Hash(),
		Node:    "web01",
		Creator: "CN=admin",
		Created: t0,
		Expires: expires,
		State:   StatePending,
	}
	redeemedAt := t0.Add(time.Hour)
	redeemed := pending.Redeemed(Attempt{KeyHash: key(1), Now: redeemedAt}, "01ab", []byte("cert"))
	attempt := Attempt{Token: tok, Node: "web01", KeyHash: key(1), Now: t0.Add(time.Minute), Grace: grace}

	type mod func(*Record, *Attempt)
	tests := []struct {
		name string
		rec  *Record // nil: no record
		mod  mod
		want Outcome
		err  error
	}{
		{"nil record", nil, nil, 0, ErrUnknown},
		{"pending", &pending, nil, Redeem, nil},
		{"pending, node not stated", &pending, func(_ *Record, a *Attempt) { a.Node = "" }, Redeem, nil},
		{"other id", &pending, func(_ *Record, a *Attempt) { a.Token.ID = other.ID }, 0, ErrUnknown},
		{"wrong secret", &pending, func(_ *Record, a *Attempt) { a.Token.Secret = other.Secret }, 0, ErrUnknown},
		{"invalid secret", &pending, func(_ *Record, a *Attempt) { a.Token.Secret = "" }, 0, ErrUnknown},
		{"record without hash", &pending, func(r *Record, a *Attempt) { r.Hash = nil; a.Token.Secret = "" }, 0, ErrUnknown},
		{"unknown before revoked", &pending, func(r *Record, a *Attempt) { r.State = StateRevoked; a.Token.Secret = other.Secret }, 0, ErrUnknown},
		{"revoked", &pending, func(r *Record, _ *Attempt) { r.State = StateRevoked }, 0, ErrRevoked},
		{"revoked before wrong node", &pending, func(r *Record, a *Attempt) { r.State = StateRevoked; a.Node = "web02" }, 0, ErrRevoked},
		{"wrong node", &pending, func(_ *Record, a *Attempt) { a.Node = "web02" }, 0, ErrWrongNode},
		{"wrong node before address", &pending, func(r *Record, a *Attempt) { r.IPs = []string{"192.0.2.1"}; a.Node = "web02" }, 0, ErrWrongNode},
		{"address ok", &pending, func(r *Record, a *Attempt) {
			r.IPs = []string{"2001:db8::1", "192.0.2.1"}
			a.Source = netip.MustParseAddr("192.0.2.1")
		}, Redeem, nil},
		{"address ok, v4-mapped", &pending, func(r *Record, a *Attempt) {
			r.IPs = []string{"192.0.2.1"}
			a.Source = netip.MustParseAddr("::ffff:192.0.2.1")
		}, Redeem, nil},
		{"wrong address", &pending, func(r *Record, a *Attempt) {
			r.IPs = []string{"192.0.2.1"}
			a.Source = netip.MustParseAddr("192.0.2.2")
		}, 0, ErrWrongAddress},
		{"unknown address", &pending, func(r *Record, _ *Attempt) { r.IPs = []string{"192.0.2.1"} }, 0, ErrWrongAddress},
		{"wrong address before expired", &pending, func(r *Record, a *Attempt) { r.IPs = []string{"192.0.2.1"}; a.Now = expires }, 0, ErrWrongAddress},
		{"just before expiry", &pending, func(_ *Record, a *Attempt) { a.Now = expires.Add(-time.Nanosecond) }, Redeem, nil},
		{"at expiry", &pending, func(_ *Record, a *Attempt) { a.Now = expires }, 0, ErrExpired},
		{"after expiry", &pending, func(_ *Record, a *Attempt) { a.Now = expires.Add(time.Hour) }, 0, ErrExpired},
		{"zero expiry", &pending, func(r *Record, _ *Attempt) { r.Expires = time.Time{} }, 0, ErrExpired},
		{"replay", &redeemed, func(_ *Record, a *Attempt) { a.Now = redeemedAt.Add(time.Minute) }, Replay, nil},
		{"replay just before end of grace", &redeemed, func(_ *Record, a *Attempt) { a.Now = redeemedAt.Add(grace - time.Nanosecond) }, Replay, nil},
		{"replay after expiry within grace", &redeemed, func(r *Record, a *Attempt) {
			r.Expires = redeemedAt
			a.Now = redeemedAt.Add(time.Minute)
		}, Replay, nil},
		{"used at end of grace", &redeemed, func(_ *Record, a *Attempt) { a.Now = redeemedAt.Add(grace) }, 0, ErrUsed},
		{"used, no grace", &redeemed, func(_ *Record, a *Attempt) { a.Now = redeemedAt; a.Grace = 0 }, 0, ErrUsed},
		{"used, cert dropped", &redeemed, func(r *Record, a *Attempt) { r.Cert = nil; a.Now = redeemedAt }, 0, ErrUsed},
		{"used, other key", &redeemed, func(_ *Record, a *Attempt) { a.KeyHash = key(2); a.Now = redeemedAt }, 0, ErrKeyMismatch},
		{"used, no key", &redeemed, func(r *Record, a *Attempt) { r.KeyHash = nil; a.KeyHash = nil; a.Now = redeemedAt }, 0, ErrKeyMismatch},
		{"used, wrong node", &redeemed, func(_ *Record, a *Attempt) { a.Node = "web02"; a.Now = redeemedAt }, 0, ErrWrongNode},
		{"invalid state", &pending, func(r *Record, _ *Attempt) { r.State = "" }, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r *Record
			if tt.rec != nil {
				c := tt.rec.clone()
				r = &c
			}
			a := attempt
			if tt.mod != nil {
				tt.mod(r, &a)
			}
			got, err := r.Check(a)
			if got != tt.want {
				t.Errorf("Check = %v, %v; want %v", got, err, tt.want)
			}
			switch {
			case tt.want != 0:
				if err != nil {
					t.Errorf("Check error = %v, want nil", err)
				}
			case tt.err == nil:
				if err == nil {
					t.Errorf("Check error = nil, want an error")
				}
			case !errors.Is(err, tt.err):
				t.Errorf("Check error = %v, want %v", err, tt.err)
			case tt.err == ErrUsed && errors.Is(err, ErrKeyMismatch):
				t.Errorf("Check error = %v, want plain %v", err, ErrUsed)
			}
		})
	}
	if !errors.Is(ErrKeyMismatch, ErrUsed) {
		t.Errorf("ErrKeyMismatch is not ErrUsed")
	}
}

func TestRedeemed(t *testing.T) {
	tok := Token{ID: goldenID, Secret: goldenSecret}
	r := Record{ID: tok.ID, Hash: tok.Hash(), Node: "web01", IPs: []string{"192.0.2.1"}, Created: t0, Expires: expires, State: StatePending}
	orig := r.clone()
	keyHash, cert := key(1), []byte("cert")
	now := t0.Add(time.Hour)
	got := r.Redeemed(Attempt{Token: tok, KeyHash: keyHash, Now: now}, "01ab", cert)

	want := orig.clone()
	want.State, want.RedeemedAt, want.KeyHash, want.Serial, want.Cert = StateRedeemed, now, key(1), "01ab", []byte("cert")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redeemed = %+v, want %+v", got, want)
	}
	if !reflect.DeepEqual(r, orig) {
		t.Errorf("Redeemed modified its receiver: %+v", r)
	}
	keyHash[0]++
	cert[0]++
	r.Hash[0]++
	r.IPs[0] = "x"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redeemed result shares memory with its inputs")
	}
}

func TestPrunable(t *testing.T) {
	redeemed := func(at time.Time) Record {
		return Record{State: StateRedeemed, Expires: expires, RedeemedAt: at}
	}
	tests := []struct {
		name string
		r    Record
		now  time.Time
		want bool
	}{
		{"pending, before expiry", Record{State: StatePending, Expires: expires}, expires.Add(-time.Nanosecond), false},
		{"pending, at expiry", Record{State: StatePending, Expires: expires}, expires, true},
		{"revoked, before expiry", Record{State: StateRevoked, Expires: expires}, t0, false},
		{"revoked, at expiry", Record{State: StateRevoked, Expires: expires}, expires, true},
		{"redeemed early, before expiry", redeemed(t0), expires.Add(-time.Nanosecond), false},
		{"redeemed early, at expiry", redeemed(t0), expires, true},
		{"redeemed late, after expiry within grace", redeemed(expires.Add(-time.Minute)), expires, false},
		{"redeemed late, end of grace", redeemed(expires.Add(-time.Minute)), expires.Add(grace - time.Minute), true},
		{"invalid state", Record{State: "bogus", Expires: expires}, expires.Add(time.Hour), false},
	}
	for _, tt := range tests {
		if got := tt.r.Prunable(tt.now, grace); got != tt.want {
			t.Errorf("%s: Prunable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestRedacted(t *testing.T) {
	r := Record{
		ID: goldenID, Hash: key(0), Node: "web01", IPs: []string{"192.0.2.1"}, Creator: "CN=admin",
		Created: t0, Expires: expires, State: StateRedeemed, RedeemedAt: t0,
		KeyHash: key(1), Serial: "01ab", Cert: []byte("cert"),
	}
	orig := r.clone()
	got := r.Redacted()
	want := r.clone()
	want.Hash, want.KeyHash, want.Cert = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redacted = %+v, want %+v", got, want)
	}
	if !reflect.DeepEqual(r, orig) {
		t.Errorf("Redacted modified its receiver")
	}
	got.IPs[0] = "x"
	if r.IPs[0] != "192.0.2.1" {
		t.Errorf("Redacted shares IPs with its receiver")
	}
}

func TestRecordJSON(t *testing.T) {
	r := Record{ID: goldenID, Node: "web01", Created: t0, Expires: expires, State: StatePending}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"id":"000g40r40m30e209","node":"web01","created":"2026-03-01T12:00:00Z","expires":"2026-03-02T12:00:00Z","state":"pending"}`
	if string(b) != want {
		t.Errorf("json.Marshal = %s, want %s", b, want)
	}

	full := Record{
		ID: goldenID, Hash: key(0), Node: "web01", IPs: []string{"192.0.2.1"}, Creator: "CN=admin",
		Created: t0, Expires: expires, State: StateRevoked, RedeemedAt: t0,
		KeyHash: key(1), Serial: "01ab", Cert: []byte("cert"), RevokedAt: expires,
	}
	b, err = json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, full) {
		t.Errorf("JSON round trip = %+v, want %+v", got, full)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "hash", "node", "ips", "creator", "created", "expires", "state", "redeemed_at", "key_hash", "serial", "cert", "revoked_at"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks key %q: %s", k, b)
		}
	}
}

func TestValidNodeName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"web01", true},
		{"web-01.example.com", true},
		{"a-b--c", true},
		{label63, true},
		{name253, true},
		{"", false},
		{name253 + "b", false},
		{label63 + "a", false},
		{"Web01", false},
		{"-web", false},
		{"web-", false},
		{"a.-b", false},
		{"a..b", false},
		{".a", false},
		{"a.", false},
		{"web_01", false},
		{"web 01", false},
		{"wéb", false},
		{"a\n", false},
		{"*.example.com", false},
	}
	for _, tt := range tests {
		err := ValidNodeName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidNodeName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "tokens: ") {
			t.Errorf("ValidNodeName(%q) error %q lacks the package prefix", tt.name, err)
		}
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{Redeem: "redeem", Replay: "replay", 0: "Outcome(0)"} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(golden)
	f.Add(strings.ToUpper(golden))
	f.Add(" " + strings.ReplaceAll(golden, "1", "l") + "\n")
	f.Add(golden[:59] + "h")
	f.Add("ks1_")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrChecksum) {
				t.Fatalf("Parse(%q) error %v is neither ErrMalformed nor ErrChecksum", s, err)
			}
			return
		}
		if !ValidID(tok.ID) || len(tok.Hash()) != sha256.Size {
			t.Fatalf("Parse(%q) = %+v, not a valid token", s, tok)
		}
		text := tok.String()
		again, err := Parse(text)
		if err != nil || again != tok {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", text, again, err, tok)
		}
		if again.String() != text {
			t.Fatalf("String not canonical: %q vs %q", again.String(), text)
		}
	})
}
