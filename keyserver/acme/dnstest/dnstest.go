// Package dnstest runs real servers for the ACME tests: knotd as the
// authoritative server that ACME dns-01 answers are written to over
// RFC 2136 (signed with TSIG), unbound as the recursive resolver an ACME
// server asks, following CNAMEs into delegated challenge zones, and nginx
// and haproxy as the front ends that pass http-01 challenges on to the
// keyservers (frontend.go, in the configurations docs/acme.md ships).
//
// All listen on loopback only, keep their files in the test's temporary
// directory and stop when the test ends. None may ever reach the
// internet: unbound knows only the stub zones it is given and refuses
// every other name. The daemons come from the system (Debian packages
// knot, unbound, nginx-light and haproxy, installed by scripts/deps.sh);
// a test that needs one that is missing is skipped, or fails when
// CI=true.
package dnstest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/keysystem/keysystem/keyserver/acme/internal/testlog"
)

// startTimeout bounds how long a daemon may take to answer its first query.
const startTimeout = 30 * time.Second

// daemon finds a system daemon. Debian installs knotd and unbound in
// /usr/sbin, which is not on an unprivileged user's PATH, so look there too.
func daemon(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	msg := "dnstest: " + name + " not found (install it with scripts/deps.sh)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// freePort returns a loopback port that was free for both TCP and UDP a
// moment ago: DNS servers listen on both.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		l.Close()
		if err == nil {
			c.Close()
			return port
		}
	}
	t.Fatal("dnstest: no loopback port free for both TCP and UDP")
	return 0
}

// loopbackAddr checks that addr is an IPv4 loopback host:port and returns
// it in the host@port form knot and unbound configurations use.
func loopbackAddr(t testing.TB, addr string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || ip.To4() == nil || !ip.IsLoopback() {
		t.Fatalf("dnstest: %q is not an IPv4 loopback host:port", addr)
	}
	return host + "@" + port
}

// run starts a daemon in the foreground with its output in the test log,
// and stops it with SIGTERM (SIGKILL if it lingers) when the test ends.
// The returned channel is closed when the daemon exits, so that a caller
// waiting for it to answer can give up as soon as it has died.
func run(t testing.TB, name, path string, args ...string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	lw := testlog.New(t, name)
	cmd.Stdout, cmd.Stderr = lw, lw
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("dnstest: start %s: %v", name, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// A daemon that died under a running test took the test's
		// premise with it, whatever the test itself checked.
		select {
		case <-exited:
			t.Errorf("dnstest: %s exited during the test: %v", name, waitErr)
		default:
		}
		cancel()
		<-exited
		lw.Stop()
	})
	return exited
}

// waitReady asks addr the question q over TCP until ok accepts the answer,
// the daemon exits or the deadline passes. TCP is what dns-01 validation
// and RFC 2136 updates rely on, and a TCP answer proves the listener is up
// without guessing at UDP retransmission timing.
func waitReady(t testing.TB, name, addr string, exited <-chan struct{}, q *dns.Msg, ok func(*dns.Msg) bool) {
	t.Helper()
	c := &dns.Client{Net: "tcp", Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		r, _, err := c.Exchange(q, addr)
		if err == nil && ok(r) {
			return
		}
		select {
		case <-exited:
			t.Fatalf("dnstest: %s exited before answering (see its log above)", name)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnstest: %s did not answer at %s: %v %v", name, addr, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lookupTXT asks addr over TCP for the TXT records of name and returns
// their values, one string per record (its character-strings joined).
// With a resolver the answer may start with the CNAMEs it followed.
func lookupTXT(t testing.TB, addr, name string) []string {
	t.Helper()
	q := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, addr)
	if err != nil {
		t.Fatalf("dnstest: TXT %s at %s: %v", name, addr, err)
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		t.Fatalf("dnstest: TXT %s at %s: %s", name, addr, dns.RcodeToString[r.Rcode])
	}
	var values []string
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			var b bytes.Buffer
			for _, s := range txt.Txt {
				b.WriteString(s)
			}
			values = append(values, b.String())
		}
	}
	return values
}

// parseRRs parses zone-file lines, relative to origin, with a default TTL
// of one second so that nothing a test publishes is cached for long.
func parseRRs(t testing.TB, origin string, lines []string) []dns.RR {
	t.Helper()
	var rrs []dns.RR
	for _, line := range lines {
		zp := dns.NewZoneParser(bytes.NewReader([]byte(line)), dns.Fqdn(origin), "")
		zp.SetDefaultTTL(1)
		n := 0
		for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
			rrs = append(rrs, rr)
			n++
		}
		if err := zp.Err(); err != nil || n != 1 {
			t.Fatalf("dnstest: record %q: want one resource record: %v", line, err)
		}
	}
	return rrs
}
