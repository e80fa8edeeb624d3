package dnstest

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// Unbound is a running unbound: a recursive resolver that knows only the
// zones it was given.
type Unbound struct {
	Addr string // "127.0.0.1:port", UDP and TCP
}

// UnboundOptions for StartUnbound.
type UnboundOptions struct {
	// Stubs maps a zone ("example.test") to the loopback address
	// ("127.0.0.1:port") of a server authoritative for it, such as a
	// Knot's Addr.
	Stubs map[string]string
	// LocalData are records unbound answers itself, one per line in
	// zone-file syntax with absolute names and a TTL of one second unless
	// given: "pebble.test. A 127.0.0.1". A CNAME is followed, into a stub
	// zone if its target lies in one:
	// "_acme-challenge.www.example.test. CNAME www.example.test.acme.test.".
	LocalData []string
}

// StartUnbound runs unbound until the test ends and returns once it
// answers over TCP.
func StartUnbound(t testing.TB, opt UnboundOptions) *Unbound {
	t.Helper()
	unbound := daemon(t, "unbound")
	dir := t.TempDir()
	u := &Unbound{Addr: "127.0.0.1:" + strconv.Itoa(freePort(t))}

	// Client queries for names outside the stub zones and local data are
	// refused outright (local-zone "." refuse), and the root is a stub to
	// a loopback port nothing listens on, so that not even the resolver's
	// own lookups (a CNAME's target outside the stubs) leave the machine:
	// there are no root hints to fall back on. Each stub zone is made a
	// transparent local zone to pierce the refusal, and unbound's built-in
	// static zone for the special-use name test. as well.
	//
	// A CNAME in local-data is followed only in a "redirect" local zone
	// (unbound 1.17 answers it bare in transparent, typetransparent and
	// static ones), so each CNAME's owner gets its own redirect zone; it
	// has no names below it to redirect.
	//
	// Without so-reuseport, a port another server took since freePort
	// found it free makes unbound fail to start rather than share it
	// (knotd shares its UDP socket but not its TCP one).
	//
	// Answers, positive and negative, are not cached (cache-max-ttl and
	// cache-max-negative-ttl 0), so a record a test has just added or
	// removed is seen as such; module-config "iterator" leaves DNSSEC out.
	var c strings.Builder
	fmt.Fprintf(&c, `server:
    interface: %s
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    directory: %q
    chroot: ""
    username: ""
    pidfile: ""
    do-daemonize: no
    use-syslog: no
    logfile: ""
    log-time-ascii: yes
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    module-config: "iterator"
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    local-zone: "." refuse
`, loopbackAddr(t, u.Addr), dir)
	zones := slices.Sorted(maps.Keys(opt.Stubs))
	for _, z := range zones {
		fmt.Fprintf(&c, "    local-zone: %q transparent\n", dns.CanonicalName(z))
	}
	for _, rr := range parseRRs(t, ".", opt.LocalData) {
		if rr.Header().Rrtype == dns.TypeCNAME {
			fmt.Fprintf(&c, "    local-zone: %q redirect\n", dns.CanonicalName(rr.Header().Name))
		}
		line := strings.ReplaceAll(rr.String(), "\t", " ")
		if strings.Contains(line, "'") {
			t.Fatalf("dnstest: local data %q: unbound's quoting cannot carry a '", line)
		}
		fmt.Fprintf(&c, "    local-data: '%s'\n", line)
	}
	fmt.Fprintf(&c, "remote-control:\n    control-enable: no\n")
	for _, z := range zones {
		fmt.Fprintf(&c, "stub-zone:\n    name: %q\n    stub-addr: %s\n    stub-prime: no\n",
			dns.CanonicalName(z), loopbackAddr(t, opt.Stubs[z]))
	}
	// A port that was free a moment ago stands for "nowhere": should a
	// server take it since, it is on loopback all the same.
	fmt.Fprintf(&c, "stub-zone:\n    name: \".\"\n    stub-addr: 127.0.0.1@%d\n    stub-prime: no\n", freePort(t))
	confPath := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(confPath, []byte(c.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	exited := run(t, "unbound", unbound, "-d", "-c", confPath)
	// localhost is one of unbound's built-in local zones: its answer
	// depends on nothing but unbound itself being up.
	q := new(dns.Msg).SetQuestion("localhost.", dns.TypeA)
	waitReady(t, "unbound", u.Addr, exited, q, func(r *dns.Msg) bool {
		return r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1
	})
	return u
}

// TXT returns the TXT values unbound resolves at name, following CNAMEs.
func (u *Unbound) TXT(t testing.TB, name string) []string {
	t.Helper()
	return lookupTXT(t, u.Addr, name)
}
