package dnstest

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// Knot is a running knotd, authoritative for one zone that accepts
// dynamic updates (RFC 2136) from loopback signed with its TSIG key.
type Knot struct {
	Addr          string // "127.0.0.1:port", UDP and TCP
	Zone          string // the zone's name, fully qualified ("example.test.")
	TSIGKey       string // the key's name ("keysystem-test.")
	TSIGAlgorithm string // dns.HmacSHA256, "hmac-sha256."
	TSIGSecret    string // base64, fresh for every server
}

// KnotOptions for StartKnot.
type KnotOptions struct {
	Zone string // e.g. "example.test"; required
	// Records are added to the zone besides its SOA and NS, one resource
	// record per line in zone-file syntax, relative to Zone, with a TTL of
	// one second unless given: "www A 127.0.0.1",
	// "_acme-challenge.www CNAME www.example.test.acme.test.".
	Records []string
}

// tsigKeyName names the one key each Knot accepts updates signed with.
const tsigKeyName = "keysystem-test."

// StartKnot runs knotd until the test ends and returns once it answers
// for its zone over TCP.
func StartKnot(t testing.TB, opt KnotOptions) *Knot {
	t.Helper()
	if opt.Zone == "" {
		t.Fatal("dnstest: KnotOptions.Zone is required")
	}
	knotd := daemon(t, "knotd")
	zone := dns.CanonicalName(opt.Zone)
	secret := make([]byte, 32)
	rand.Read(secret)
	k := &Knot{
		Addr:          "127.0.0.1:" + strconv.Itoa(freePort(t)),
		Zone:          zone,
		TSIGKey:       tsigKeyName,
		TSIGAlgorithm: dns.HmacSHA256,
		TSIGSecret:    base64.StdEncoding.EncodeToString(secret),
	}

	dir := t.TempDir()
	// knotd always binds a control socket (it cannot be turned off) in its
	// rundir, and a Unix socket path is limited to 108 bytes, which a long
	// test name under a long TMPDIR exceeds.
	rundir := dir
	if len(filepath.Join(dir, "knot.sock")) > 100 {
		var err error
		if rundir, err = os.MkdirTemp("/tmp", "knotd"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(rundir) })
	}

	// The SOA's negative TTL and every default TTL are one second, so a
	// resolver in front of this server never remembers an answer a test
	// has since changed.
	var zf strings.Builder
	fmt.Fprintf(&zf, "$ORIGIN %s\n$TTL 1\n", zone)
	fmt.Fprintf(&zf, "@ SOA ns hostmaster 1 60 60 3600 1\n@ NS ns\nns A 127.0.0.1\n")
	for _, rr := range parseRRs(t, zone, opt.Records) {
		fmt.Fprintln(&zf, rr.String())
	}
	if err := os.WriteFile(filepath.Join(dir, strings.TrimSuffix(zone, ".")+".zone"), []byte(zf.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	// No "user": knotd switches user only when told to, so it runs as
	// whoever runs the test, root in a container included. Few workers,
	// as tests start many servers. Updated zones are written back to the
	// zone file at once (zonefile-sync 0); the journal lives in storage.
	conf := fmt.Sprintf(`server:
    rundir: %q
    listen: %s
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: %q
key:
  - id: %s
    algorithm: hmac-sha256
    secret: %s
acl:
  - id: update
    address: 127.0.0.1
    key: %s
    action: update
template:
  - id: default
    storage: %q
    file: "%%s.zone"
    zonefile-sync: 0
zone:
  - domain: %s
    acl: update
`, rundir, loopbackAddr(t, k.Addr), dir, k.TSIGKey, k.TSIGSecret, k.TSIGKey, dir, zone)
	confPath := filepath.Join(dir, "knot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	exited := run(t, "knotd", knotd, "-c", confPath)
	soa := new(dns.Msg).SetQuestion(zone, dns.TypeSOA)
	waitReady(t, "knotd", k.Addr, exited, soa, func(r *dns.Msg) bool {
		return r.Rcode == dns.RcodeSuccess && r.Authoritative && len(r.Answer) == 1
	})
	return k
}

// TXT returns the TXT values the server holds at name.
func (k *Knot) TXT(t testing.TB, name string) []string {
	t.Helper()
	return lookupTXT(t, k.Addr, name)
}
