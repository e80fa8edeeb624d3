package dnstest

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/providers/dns/rfc2136"
	"github.com/miekg/dns"
)

// update sends knot an RFC 2136 update adding (or, with remove, deleting)
// the records, signed with key and secret unless key is empty.
func update(t *testing.T, k *Knot, key, secret string, remove bool, records ...string) (*dns.Msg, error) {
	t.Helper()
	rrs := parseRRs(t, k.Zone, records)
	m := new(dns.Msg).SetUpdate(k.Zone)
	if remove {
		m.Remove(rrs)
	} else {
		m.Insert(rrs)
	}
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	if key != "" {
		m.SetTsig(key, k.TSIGAlgorithm, 300, time.Now().Unix())
		c.TsigSecret = map[string]string{key: secret}
	}
	r, _, err := c.Exchange(m, k.Addr)
	return r, err
}

// mustUpdate is update with the server's own key, which must succeed.
func mustUpdate(t *testing.T, k *Knot, remove bool, records ...string) {
	t.Helper()
	r, err := update(t, k, k.TSIGKey, k.TSIGSecret, remove, records...)
	if err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("update %q: %v %v", records, r, err)
	}
}

func sameSet(got, want []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)))
}

// TestLegoRFC2136 drives lego's RFC 2136 provider against knot the way an
// order for example.test and *.example.test does: both authorizations are
// for the identifier example.test, so both answers go to
// _acme-challenge.example.test.
func TestLegoRFC2136(t *testing.T) {
	k := StartKnot(t, KnotOptions{Zone: "example.test"})

	// Present and CleanUp call dns01.GetChallengeInfo, which otherwise
	// follows CNAMEs at the challenge name through lego's package-global
	// resolvers, read from /etc/resolv.conf. With Zones given the provider
	// does not look for the zone's SOA either, so the only DNS traffic is
	// the updates to knot.
	t.Setenv("LEGO_DISABLE_CNAME_SUPPORT", "true")
	provider := func(secret string) *rfc2136.DNSProvider {
		cfg := rfc2136.NewDefaultConfig()
		cfg.Nameserver = k.Addr
		cfg.Zones = []string{k.Zone}
		cfg.TSIGKey, cfg.TSIGAlgorithm, cfg.TSIGSecret = k.TSIGKey, k.TSIGAlgorithm, secret
		cfg.TTL = 1
		cfg.DNSTimeout = 5 * time.Second
		cfg.PropagationTimeout, cfg.PollingInterval, cfg.SequenceInterval = time.Second, 100*time.Millisecond, 100*time.Millisecond
		p, err := rfc2136.NewDNSProviderConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := provider(k.TSIGSecret)

	const name = "_acme-challenge.example.test."
	apex, wild := "token-apex.thumbprint", "token-wildcard.thumbprint"
	apexValue, wildValue := dns01.GetChallengeInfo("example.test", apex).Value, dns01.GetChallengeInfo("example.test", wild).Value

	// With another secret under the same key name, knot refuses.
	if err := provider(base64.StdEncoding.EncodeToString(make([]byte, 32))).Present("example.test", "token-apex", apex); err == nil {
		t.Fatal("Present with a wrong TSIG secret succeeded")
	}
	if got := k.TXT(t, name); len(got) != 0 {
		t.Fatalf("after a refused Present: %q", got)
	}

	if err := p.Present("example.test", "token-apex", apex); err != nil {
		t.Fatal(err)
	}
	if got := k.TXT(t, name); !sameSet(got, []string{apexValue}) {
		t.Fatalf("after the first Present: %q, want %q", got, apexValue)
	}
	// Each Present deletes the whole TXT RRset before adding its value, so
	// the second answer replaces the first: the provider can hold one
	// answer per name at a time, which is why it asks lego, through
	// Sequential, to solve its challenges one after the other.
	if err := p.Present("example.test", "token-wildcard", wild); err != nil {
		t.Fatal(err)
	}
	if got := k.TXT(t, name); !sameSet(got, []string{wildValue}) {
		t.Fatalf("after the second Present: %q, want only %q", got, wildValue)
	}
	if err := p.CleanUp("example.test", "token-wildcard", wild); err != nil {
		t.Fatal(err)
	}
	if got := k.TXT(t, name); len(got) != 0 {
		t.Fatalf("after CleanUp: %q, want none", got)
	}
	// Removing an answer that is not there is no error (RFC 2136 3.4.2.4).
	if err := p.CleanUp("example.test", "token-apex", apex); err != nil {
		t.Fatal(err)
	}
}

// TestKnotHoldsTwoAnswers: plain RFC 2136 additions, without lego's
// RRset deletion, leave both answers of an order for a name and its
// wildcard in place together, and each removal takes only its own.
func TestKnotHoldsTwoAnswers(t *testing.T) {
	k := StartKnot(t, KnotOptions{Zone: "example.test"})
	const name = "_acme-challenge.example.test."
	mustUpdate(t, k, false, name+` TXT "apex"`)
	mustUpdate(t, k, false, name+` TXT "wildcard"`)
	if got := k.TXT(t, name); !sameSet(got, []string{"apex", "wildcard"}) {
		t.Fatalf("got %q, want both answers", got)
	}
	mustUpdate(t, k, true, name+` TXT "apex"`)
	if got := k.TXT(t, name); !sameSet(got, []string{"wildcard"}) {
		t.Fatalf("after removing one: %q, want the other", got)
	}
}

// TestKnotRefusesUnsignedUpdates: only the TSIG key knot was given may
// change the zone.
func TestKnotRefusesUnsignedUpdates(t *testing.T) {
	k := StartKnot(t, KnotOptions{Zone: "example.test"})
	other := make([]byte, 32)
	rand.Read(other)
	otherSecret := base64.StdEncoding.EncodeToString(other)
	tests := []struct {
		name, key, secret string
	}{
		{"unsigned", "", ""},
		{"wrong secret", k.TSIGKey, otherSecret},
		{"unknown key", "someone-else.", otherSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const name = "_acme-challenge.example.test."
			r, err := update(t, k, tt.key, tt.secret, false, name+` TXT "forged"`)
			// A refusal of a signed update is itself unsigned or signed
			// with an error, so the client may also fail to verify it; the
			// answer knot gave is what counts.
			if r == nil {
				t.Fatalf("no answer: %v", err)
			}
			if r.Rcode != dns.RcodeNotAuth {
				t.Errorf("rcode %s, want NOTAUTH (%v)", dns.RcodeToString[r.Rcode], err)
			}
			if got := k.TXT(t, name); len(got) != 0 {
				t.Errorf("zone now holds %q", got)
			}
		})
	}
}

// TestUnboundResolvesThroughStub: a TXT record just added to knot is
// resolved through unbound over TCP, a removal is seen as promptly, and
// names outside the stub zones are refused rather than looked up.
func TestUnboundResolvesThroughStub(t *testing.T) {
	k := StartKnot(t, KnotOptions{Zone: "example.test", Records: []string{"www A 127.0.0.1"}})
	u := StartUnbound(t, UnboundOptions{Stubs: map[string]string{"example.test": k.Addr}})
	const name = "_acme-challenge.example.test."

	// Asked before it exists, so that a cached negative answer would show.
	if got := u.TXT(t, name); len(got) != 0 {
		t.Fatalf("before the update: %q", got)
	}
	mustUpdate(t, k, false, name+` TXT "answer"`)
	if got := u.TXT(t, name); !sameSet(got, []string{"answer"}) {
		t.Fatalf("after the update: %q, want the answer", got)
	}
	mustUpdate(t, k, true, name+` TXT "answer"`)
	if got := u.TXT(t, name); len(got) != 0 {
		t.Fatalf("after the removal: %q", got)
	}

	// Both servers answer over UDP too, which resolvers and ACME servers
	// try first.
	tests := []struct {
		server, name string
		rcode        int
	}{
		{k.Addr, "www.example.test.", dns.RcodeSuccess},
		{u.Addr, "www.example.test.", dns.RcodeSuccess},
		{u.Addr, "www.example.com.", dns.RcodeRefused},
		{u.Addr, "com.", dns.RcodeRefused},
		// unbound's built-in local zone for the special-use name test.,
		// which the stub zones' own transparent local zones pierce.
		{u.Addr, "other.test.", dns.RcodeNameError},
	}
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		for _, tt := range tests {
			r, _, err := c.Exchange(new(dns.Msg).SetQuestion(tt.name, dns.TypeA), tt.server)
			if err != nil {
				t.Fatalf("%s %s at %s: %v", network, tt.name, tt.server, err)
			}
			if r.Rcode != tt.rcode {
				t.Errorf("%s %s at %s: %s, want %s", network, tt.name, tt.server, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
			}
		}
	}
}

// TestUnboundFollowsCNAME: a challenge name delegated by CNAME to another
// zone resolves to the TXT record there, whether the CNAME is unbound's
// local data or lives in the name's own zone (as in production).
func TestUnboundFollowsCNAME(t *testing.T) {
	const (
		name   = "_acme-challenge.www.example.test."
		target = "www.example.test.acme.test."
		cname  = name + " CNAME " + target
	)
	tests := []struct {
		name      string
		records   []string // in example.test
		localData []string
	}{
		{"local data", nil, []string{cname}},
		{"knot zone", []string{cname}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			example := StartKnot(t, KnotOptions{Zone: "example.test", Records: tt.records})
			acme := StartKnot(t, KnotOptions{Zone: "acme.test"})
			u := StartUnbound(t, UnboundOptions{
				Stubs:     map[string]string{"example.test": example.Addr, "acme.test": acme.Addr},
				LocalData: tt.localData,
			})
			if got := u.TXT(t, name); len(got) != 0 {
				t.Fatalf("before the update: %q", got)
			}
			mustUpdate(t, acme, false, target+` TXT "answer"`)
			if got := u.TXT(t, name); !sameSet(got, []string{"answer"}) {
				t.Fatalf("got %q, want the answer at the CNAME's target", got)
			}
		})
	}
}

// TestKnotLongTempDir: knotd starts even when the test's directory is too
// long a path for its control socket.
func TestKnotLongTempDir(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Run("knot", func(t *testing.T) {
		t.Setenv("GOTMPDIR", long) // where t.TempDir makes its directories
		k := StartKnot(t, KnotOptions{Zone: "example.test"})
		mustUpdate(t, k, false, `_acme-challenge.example.test. TXT "answer"`)
	})
}

// TestMissingDaemonSkips: without CI=true a missing daemon skips the test
// rather than failing it.
func TestMissingDaemonSkips(t *testing.T) {
	t.Setenv("CI", "")
	skipped := false
	t.Run("missing", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		daemon(t, "dnstest-no-such-daemon")
	})
	if !skipped {
		t.Error("a missing daemon did not skip the test")
	}
}
