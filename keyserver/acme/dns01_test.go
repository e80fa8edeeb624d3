package acme_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/dnstest"
	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

// wildcardLabel is a name and its wildcard, proven together by dns-01 at
// the one name _acme-challenge.example.test.
const wildcardLabel = "    wild:\n      sni: [example.test, \"*.example.test\"]\n      challenge: dns-01\n      key_types: [ecdsa-p256]\n      to: {all: true}\n"

// parsePolicy is a policy with the account pebble at directory, trusting
// roots (if any) for its TLS, and the certificates.
func parsePolicy(t *testing.T, directory string, roots []byte, account, certs string) *policy.Policy {
	t.Helper()
	if roots != nil {
		account = "      ca_file: pebble-tls.pem\n" + account
	}
	src := fmt.Sprintf("groups: {}\nacme:\n  accounts:\n    pebble:\n      directory: %s\n%s  certificates:\n%s", directory, account, certs)
	pol, err := policy.Parse("policy.yaml", []byte(src), func(string) ([]byte, error) { return roots, nil })
	if err != nil {
		t.Fatalf("policy:\n%s\n%v", src, err)
	}
	return pol
}

// serveZone runs the keyserver's own DNS server for zoneName on one
// loopback port, UDP and TCP, as a stub zone's server must.
func serveZone(t *testing.T, st zone.Store, zoneName string) string {
	t.Helper()
	srv, err := zone.NewServer(zone.Config{Zone: zoneName, Nameservers: []string{"ns.keyserver.test"}, Store: st, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	var l net.Listener
	for range 50 {
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", l.Addr().String()); err == nil {
			break
		}
		l.Close()
	}
	if pc == nil {
		t.Fatal("no loopback port free for both TCP and UDP")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("zone server: %v", err)
		}
	})
	return l.Addr().String()
}

// checkServed checks that the label's version serves a certificate for
// exactly names, whose chain verifies against the CA's roots for each.
func checkServed(t *testing.T, e *acmeEnv, label string, names ...string) {
	t.Helper()
	s, err := e.mgr.Get(t.Context(), label, "ecdsa-p256")
	if err != nil || s.Placeholder {
		t.Fatalf("Get = %v, %v; want the CA's certificate", s, err)
	}
	chain, err := pemutil.ParseCertificateBundle(s.Fullchain)
	if err != nil || len(chain) < 2 {
		t.Fatalf("fullchain: %d certificates, %v", len(chain), err)
	}
	if got := slices.Sorted(slices.Values(chain[0].DNSNames)); !slices.Equal(got, slices.Sorted(slices.Values(names))) {
		t.Errorf("certificate for %q, want %q", got, names)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	roots := e.pebble.IssuerRoots(t)
	for _, n := range names {
		n = strings.Replace(n, "*", "www", 1)
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: n, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("chain does not verify for %s: %v", n, err)
		}
	}
}

// TestDNS01OwnZoneWildcard: a name and its wildcard are proven through
// the keyserver's own zone, which serves both answers at the one name
// at once: the CA asks unbound, which follows the operator's CNAME
// _acme-challenge.example.test to example.test.acme.test in the zone
// delegated to the keyserver. The answers leave the store afterwards.
func TestDNS01OwnZoneWildcard(t *testing.T) {
	t.Parallel()
	st := &onAnswer{Memory: store.NewMemory()}
	u := dnstest.StartUnbound(t, dnstest.UnboundOptions{
		Stubs:     map[string]string{"acme.test": serveZone(t, st, "acme.test")},
		LocalData: []string{"_acme-challenge.example.test. CNAME example.test.acme.test."},
	})
	e := newACMEEnvWith(t, envOptions{
		store: st, dnsServer: u.Addr, certs: wildcardLabel,
		config: func(c *acme.Config) { c.DNSZone = "acme.test" },
	})
	e.obtain(t, "wild")
	checkServed(t, e, "wild", "example.test", "*.example.test")
	if kvs, _ := st.List(t.Context(), "acme/dns01/"); len(kvs) != 0 {
		t.Errorf("answers left in the store: %v", kvs)
	}
	if n, _ := e.orders.count(); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

// TestDNS01RFC2136: the account's rfc2136 provider writes the answers to
// a real knot with TSIG; our pre-check finds knot as the zone's
// authoritative server through unbound and asks it directly. lego's
// provider replaces the TXT set at a name with each answer, so it solves
// a name and its wildcard one after the other, here without lego's
// minute between them.
func TestDNS01RFC2136(t *testing.T) {
	t.Parallel()
	k := dnstest.StartKnot(t, dnstest.KnotOptions{Zone: "example.test"})
	u := dnstest.StartUnbound(t, dnstest.UnboundOptions{Stubs: map[string]string{"example.test": k.Addr}})
	_, port, _ := net.SplitHostPort(k.Addr)
	account := fmt.Sprintf(`      dns:
        provider: rfc2136
        env:
          RFC2136_NAMESERVER: %q
          RFC2136_TSIG_KEY: %q
          RFC2136_TSIG_SECRET: %q
          RFC2136_TSIG_ALGORITHM: %q
          RFC2136_TTL: "1"
          RFC2136_PROPAGATION_TIMEOUT: 10s
          RFC2136_POLLING_INTERVAL: 100ms
          RFC2136_SEQUENCE_INTERVAL: 100ms
`, k.Addr, k.TSIGKey, k.TSIGSecret, k.TSIGAlgorithm)
	e := newACMEEnvWith(t, envOptions{
		dnsServer: u.Addr, account: account, certs: wildcardLabel,
		config: func(c *acme.Config) {
			c.DNSResolvers = []string{u.Addr}
			fmt.Sscan(port, &c.DNSAuthPort)
		},
	})
	e.obtain(t, "wild")
	checkServed(t, e, "wild", "example.test", "*.example.test")
	if got := k.TXT(t, "_acme-challenge.example.test."); len(got) != 0 {
		t.Errorf("answers left in knot: %q", got)
	}
}

// nsupdate adds (or removes) a record in knot's zone, as a DNS host's API
// would.
func nsupdate(k *dnstest.Knot, remove bool, record string) error {
	rr, err := dns.NewRR(record)
	if err != nil {
		return err
	}
	m := new(dns.Msg).SetUpdate(k.Zone)
	if remove {
		m.Remove([]dns.RR{rr})
	} else {
		m.Insert([]dns.RR{rr})
	}
	m.SetTsig(k.TSIGKey, k.TSIGAlgorithm, 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, TsigSecret: map[string]string{k.TSIGKey: k.TSIGSecret}}
	r, _, err := c.Exchange(m, k.Addr)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("update %q: %s", record, dns.RcodeToString[r.Rcode])
	}
	return nil
}

// TestDNS01PreCheck, through the httpreq provider and an endpoint that
// writes answers where the operator's CNAME points (as acme-dns does):
// while the answer is not served by the zone's authoritative server, the
// CA is not asked to validate, and the order fails after the provider's
// propagation timeout naming the name the CNAME leads to; once it is
// served, the CA validates it. lego itself follows no CNAME: the
// endpoint is given the challenge name.
func TestDNS01PreCheck(t *testing.T) {
	t.Parallel()
	const (
		challenge = "_acme-challenge.www.example.test."
		target    = "www.challenges.example.test."
	)
	k := dnstest.StartKnot(t, dnstest.KnotOptions{Zone: "example.test", Records: []string{challenge + " CNAME " + target}})
	u := dnstest.StartUnbound(t, dnstest.UnboundOptions{Stubs: map[string]string{"example.test": k.Addr}})
	_, port, _ := net.SplitHostPort(k.Addr)

	var publish atomic.Bool
	var mu sync.Mutex
	var asked []string // the names the endpoint was given
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var msg struct{ FQDN, Value string }
		if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		asked = append(asked, r.URL.Path+" "+msg.FQDN)
		mu.Unlock()
		var err error
		switch {
		case r.URL.Path == "/cleanup":
			err = nsupdate(k, true, fmt.Sprintf("%s 1 TXT %q", target, msg.Value))
		case publish.Load():
			err = nsupdate(k, false, fmt.Sprintf("%s 1 TXT %q", target, msg.Value))
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(endpoint.Close)

	var validations atomic.Int32 // the CA told to validate a challenge
	e := newACMEEnvWith(t, envOptions{
		dnsServer: u.Addr,
		account: fmt.Sprintf("      dns:\n        provider: httpreq\n        env:\n          HTTPREQ_ENDPOINT: %s\n"+
			"          HTTPREQ_PROPAGATION_TIMEOUT: 1s\n          HTTPREQ_POLLING_INTERVAL: 100ms\n", endpoint.URL),
		certs: "    web:\n      sni: [www.example.test]\n      challenge: dns-01\n      key_types: [ecdsa-p256]\n      to: {all: true}\n",
		config: func(c *acme.Config) {
			c.DNSResolvers = []string{u.Addr}
			fmt.Sscan(port, &c.DNSAuthPort)
			counted := c.Transport
			c.Transport = func(next http.RoundTripper) http.RoundTripper {
				next = counted(next)
				return roundTripper(func(r *http.Request) (*http.Response, error) {
					resp, err := next.RoundTrip(r)
					// Not the requests Pebble refused for their nonce.
					if err == nil && resp.StatusCode == http.StatusOK && strings.Contains(r.URL.Path, "/chalZ/") {
						validations.Add(1)
					}
					return resp, err
				})
			}
		},
	})

	ordered, err := e.mgr.Check(t.Context(), "web")
	if !ordered || err == nil {
		t.Fatalf("Check with the answer not served = %v, %v; want a failed order", ordered, err)
	}
	for _, want := range []string{target, "does not serve the value", "ns.example.test."} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := validations.Load(); n != 0 {
		t.Errorf("the CA was told to validate %d times, though the answer was not served", n)
	}
	mu.Lock()
	if want := []string{"/present " + challenge, "/cleanup " + challenge}; !slices.Equal(asked, want) {
		t.Errorf("the endpoint was asked %q, want %q", asked, want)
	}
	mu.Unlock()

	publish.Store(true)
	s, err := e.mgr.Status(t.Context(), "web")
	if err != nil || s.NextAttempt.IsZero() {
		t.Fatalf("Status after the failure = %+v, %v; want a next attempt", s, err)
	}
	e.clock.Set(s.NextAttempt)
	e.obtain(t, "web")
	checkServed(t, e, "web", "www.example.test")
	if n := validations.Load(); n != 1 {
		t.Errorf("the CA was told to validate %d times, want 1", n)
	}
	if got := k.TXT(t, target); len(got) != 0 {
		t.Errorf("answers left in knot: %q", got)
	}
}

// TestDNS01Refused: labels whose dns-01 answers cannot be given fail
// before the CA is asked anything (its directory here does not exist),
// with an error that says what to set, kept in the label's status;
// nothing but that status is stored. CheckPolicy finds the same problems
// in the accounts when the policy is loaded.
func TestDNS01Refused(t *testing.T) {
	t.Parallel()
	const directory = "https://127.0.0.1:1/directory"
	for _, tc := range []struct {
		name, account string
		config        func(*acme.Config)
		want          string // in the order's error
		policy        string // in CheckPolicy's, "" for none
	}{
		{
			name: "own zone not configured",
			want: `set acme.dns.zone in keyserver.yaml (and delegate that zone to the keyservers), or give account "pebble" a dns provider`,
		},
		{
			name:    "provider not linked",
			account: "      dns:\n        provider: nosuch\n",
			config:  func(c *acme.Config) { c.DNSZone = "acme.test" }, // not used by an account with a provider
			want:    `dns provider "nosuch" is not `,                  // ... linked: TestDNSProviders
			policy:  `policy.yaml:4: acme account "pebble": dns provider "nosuch" is not `,
		},
		{
			name:    "bad rfc2136 settings",
			account: "      dns:\n        provider: rfc2136\n        env: {RFC2136_NAMESERVER: 127.0.0.1, RFC2136_TTL: ten}\n",
			want:    `dns provider rfc2136: RFC2136_TTL "ten": want a whole number`,
			policy:  `policy.yaml:4: acme account "pebble": dns provider rfc2136: RFC2136_TTL "ten"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pol := parsePolicy(t, directory, nil, tc.account, wildcardLabel)
			switch err := acme.CheckPolicy(pol); {
			case tc.policy == "" && err != nil:
				t.Errorf("CheckPolicy = %v", err)
			case tc.policy != "" && (err == nil || !strings.Contains(err.Error(), tc.policy)):
				t.Errorf("CheckPolicy = %v, want %q", err, tc.policy)
			}
			st := store.NewMemory()
			sealer, err := acme.NewSealer(bytes.Repeat([]byte{1}, 32), nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := acme.Config{Store: st, Sealer: sealer, Policy: func() *policy.Policy { return pol }, HTTP01: &acme.HTTP01Provider{Store: st}}
			if tc.config != nil {
				tc.config(&cfg)
			}
			mgr, err := acme.NewManager(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ordered, err := mgr.Check(t.Context(), "wild")
			if !ordered || err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "wild") {
				t.Fatalf("Check = %v, %v; want a failed attempt saying %q", ordered, err, tc.want)
			}
			s, err := mgr.Status(t.Context(), "wild")
			if err != nil || !strings.Contains(s.LastError, tc.want) || s.Failures != 1 || s.Next != nil {
				t.Errorf("status = %+v, %v; want the error, one failure, no version", s, err)
			}
			kvs, err := st.List(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range kvs {
				if kv.Key != "acme/certs/wild" {
					t.Errorf("stored %s", kv.Key)
				}
			}
		})
	}
}

// TestDNSProviderSettings: the providers linked by default read their
// settings from the account alone and refuse bad ones when the policy is
// checked, each problem naming its variable, none quoting a secret.
func TestDNSProviderSettings(t *testing.T) {
	t.Parallel()
	const secret = "c2VjcmV0"
	dir := t.TempDir()
	emptyTSIG, goodTSIG := filepath.Join(dir, "empty.key"), filepath.Join(dir, "good.key")
	if err := os.WriteFile(emptyTSIG, []byte("# the key went elsewhere\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goodTSIG, []byte("key \"keysystem.\" {\n  algorithm hmac-sha256;\n  secret \""+secret+"\";\n};\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		provider string
		env      map[string]string
		want     []string // in CheckPolicy's error; none for no error
	}{
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org"}, nil},
		{"rfc2136", map[string]string{
			"RFC2136_NAMESERVER": "127.0.0.1:5353", "RFC2136_TSIG_KEY": "key.", "RFC2136_TSIG_SECRET": secret,
			"RFC2136_TSIG_ALGORITHM": "HMAC-SHA512", "RFC2136_TTL": "60", "RFC2136_ZONES": "example.org,example.net",
			"RFC2136_PROPAGATION_TIMEOUT": "120", "RFC2136_POLLING_INTERVAL": "500ms", "RFC2136_SEQUENCE_INTERVAL": "0",
			"RFC2136_DNS_TIMEOUT": "5",
		}, nil},
		{"dnsupdate", map[string]string{"DNSUPDATE_NAMESERVER": "[::1]:53"}, nil}, // lego's newer names
		{"rfc2136", map[string]string{}, []string{"RFC2136_NAMESERVER is required"}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "a:b:c"}, []string{`RFC2136_NAMESERVER "a:b:c": want host or host:port`}},
		{"rfc2136", map[string]string{
			"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TTL": "-1", "RFC2136_PROPAGATION_TIMEOUT": "soon",
			"RFC2136_POLLING_INTERVAL": "0", "RFC2136_DNS_TIMEOUT": "1y", "RFC2136_SEQUENCE_INTERVAL": "-1s",
		}, []string{`RFC2136_TTL "-1"`, `RFC2136_PROPAGATION_TIMEOUT "soon"`, `RFC2136_POLLING_INTERVAL "0"`, `RFC2136_DNS_TIMEOUT "1y"`, `RFC2136_SEQUENCE_INTERVAL "-1s"`}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TSIG_KEY": "key."},
			[]string{"RFC2136_TSIG_KEY and RFC2136_TSIG_SECRET go together"}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TSIG_KEY": "key.", "RFC2136_TSIG_SECRET": "not base64!"},
			[]string{"RFC2136_TSIG_SECRET is not base64"}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TSIG_KEY": "key.", "RFC2136_TSIG_SECRET": secret, "RFC2136_TSIG_ALGORITHM": "hmac-md5"},
			[]string{`RFC2136_TSIG_ALGORITHM "hmac-md5": want one of hmac-sha1.`}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TSIG_FILE": goodTSIG}, nil},
		// A TSIG file without a key would mean unsigned updates.
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_TSIG_FILE": emptyTSIG},
			[]string{"RFC2136_TSIG_FILE " + emptyTSIG + " holds no usable key name and secret"}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "RFC2136_ZONES": "example.org,,"},
			[]string{`RFC2136_ZONES: "" is not a zone name`}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVER": "ns1.example.org", "DNSUPDATE_NAMESERVER": "ns2.example.org"},
			[]string{"RFC2136_NAMESERVER and DNSUPDATE_NAMESERVER are both set, differently"}},
		{"rfc2136", map[string]string{"RFC2136_NAMESERVERS": "ns1.example.org"},
			[]string{"RFC2136_NAMESERVER is required", "RFC2136_NAMESERVERS is not a setting of rfc2136 (known: "}},
		{"httpreq", map[string]string{"HTTPREQ_ENDPOINT": "https://dns.example.org/acme", "HTTPREQ_USERNAME": "u", "HTTPREQ_PASSWORD": secret, "HTTPREQ_MODE": "RAW"}, nil},
		{"httpreq", map[string]string{"HTTPREQ_ENDPOINT": "ftp://u:" + secret + "@dns.example.org", "HTTPREQ_USERNAME": "u", "HTTPREQ_MODE": "json"},
			[]string{"HTTPREQ_ENDPOINT is not an http:// or https:// URL", "HTTPREQ_USERNAME and HTTPREQ_PASSWORD go together", `HTTPREQ_MODE "json"`}},
		{"exec", map[string]string{"EXEC_PATH": "/usr/local/bin/dns-hook", "EXEC_SEQUENCE_INTERVAL": "1"}, nil},
		{"exec", map[string]string{"EXEC_PATH": "dns-hook"}, []string{`EXEC_PATH "dns-hook": want an absolute path`}},
	} {
		var env strings.Builder
		for _, k := range slices.Sorted(maps.Keys(tc.env)) {
			fmt.Fprintf(&env, "          %s: %q\n", k, tc.env[k])
		}
		account := fmt.Sprintf("      dns:\n        provider: %s\n        env:\n%s", tc.provider, env.String())
		if len(tc.env) == 0 {
			account = fmt.Sprintf("      dns:\n        provider: %s\n", tc.provider)
		}
		pol := parsePolicy(t, "https://127.0.0.1:1/directory", nil, account, "    web:\n      sni: [www.example.test]\n      to: {all: true}\n")
		err := acme.CheckPolicy(pol)
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s %v: %v", tc.provider, tc.env, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s %v: no error, want %q", tc.provider, tc.env, tc.want)
			continue
		}
		msg := err.Error()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s %v: error %q does not say %q", tc.provider, tc.env, msg, w)
			}
		}
		if strings.Contains(msg, secret) || strings.Contains(msg, "not base64!") {
			t.Errorf("%s: error quotes a secret: %q", tc.provider, msg)
		}
		if !strings.HasPrefix(msg, `policy.yaml:4: acme account "pebble": dns provider `+tc.provider+": ") || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q is not one problem at the account's line", tc.provider, msg)
		}
	}
}

// TestDNSProviders: the default build links the small providers, which
// the keyserver can list.
func TestDNSProviders(t *testing.T) {
	t.Parallel()
	got := acme.DNSProviders()
	if !slices.IsSorted(got) {
		t.Errorf("DNSProviders() = %q, not sorted", got)
	}
	for _, want := range []string{"exec", "httpreq", "rfc2136"} {
		if !slices.Contains(got, want) {
			t.Errorf("DNSProviders() = %q, want %s among them", got, want)
		}
	}
	pol := parsePolicy(t, "https://127.0.0.1:1/directory", nil, "      dns:\n        provider: cloudflare\n", "    web:\n      sni: [www.example.test]\n      to: {all: true}\n")
	want := `policy.yaml:4: acme account "pebble": dns provider "cloudflare" is not linked into this keyserver (linked: ` +
		strings.Join(got, ", ") + "; keyserver-alldns links every lego DNS provider)"
	if err := acme.CheckPolicy(pol); err == nil || err.Error() != want {
		t.Errorf("CheckPolicy = %v, want %s", err, want)
	}
}
