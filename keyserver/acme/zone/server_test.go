package zone_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/keyserver/store"
)

const apex = testZone + "."

// spyStore counts the server's store reads, and fails them when fail is
// set.
type spyStore struct {
	zone.Store
	gets atomic.Int64
	fail atomic.Bool
}

func (s *spyStore) Get(ctx context.Context, key string) ([]byte, error) {
	s.gets.Add(1)
	if s.fail.Load() {
		return nil, errors.New("etcd is down")
	}
	return s.Store.Get(ctx, key)
}

// lockedBuffer is a log destination the test reads while the server
// writes to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type testServer struct {
	udp, tcp string     // addresses
	mem      zone.Store // the store, unobserved
	spy      *spyStore  // the store the server reads
	log      *lockedBuffer
	stop     func() error // cancels Serve's context and returns what it returned
}

// serve runs a Server for testZone on loopback until the test ends.
func serve(t *testing.T) *testServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mem := store.NewMemory()
	ts := &testServer{udp: pc.LocalAddr().String(), tcp: l.Addr().String(), mem: mem, spy: &spyStore{Store: mem}, log: &lockedBuffer{}}
	srv, err := zone.NewServer(zone.Config{
		Zone:        testZone,
		Nameservers: []string{"ns1.example.net", "ns2.example.net."},
		Store:       ts.spy,
		Now:         func() time.Time { return t0 },
		Log:         slog.New(slog.NewTextHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc, l) }()
	ts.stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second): // a guard, not a wait: Serve returns at once
			return errors.New("Serve has not returned 10s after its context was cancelled")
		}
	})
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Error(err)
		}
	})
	return ts
}

func (ts *testServer) addr(network string) string {
	if network == "tcp" {
		return ts.tcp
	}
	return ts.udp
}

func (ts *testServer) add(t *testing.T, name string, vs ...string) {
	t.Helper()
	for _, v := range vs {
		if err := zone.Add(t.Context(), ts.mem, name, v, t0); err != nil {
			t.Fatal(err)
		}
	}
}

func exchange(t *testing.T, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query to %s: %v", network, addr, err)
	}
	return resp
}

func question(name string, qtype uint16) *dns.Msg {
	return new(dns.Msg).SetQuestion(name, qtype)
}

func rrStrings(rrs []dns.RR) []string {
	var ss []string
	for _, rr := range rrs {
		ss = append(ss, rr.String())
	}
	return ss
}

func TestServer(t *testing.T) {
	ts := serve(t)
	www := "www.example.com." + apex
	ts.add(t, www, value(1), value(2))

	soa := fmt.Sprintf("%s\t60\tIN\tSOA\tns1.example.net. hostmaster.acme.example.org. %d 3600 600 1209600 60", apex, t0.Unix())
	txt := func(owner string) []string {
		return []string{owner + "\t60\tIN\tTXT\t\"" + value(1) + "\"", owner + "\t60\tIN\tTXT\t\"" + value(2) + "\""}
	}
	mixed := "WwW.ExAmPlE.CoM.AcMe.ExAmPlE.OrG."
	for _, tc := range []struct {
		name   string
		q      dns.Question
		rcode  int
		answer []string
		ns     []string
		read   bool // the store is asked
	}{
		{"SOA", dns.Question{Name: apex, Qtype: dns.TypeSOA}, dns.RcodeSuccess, []string{soa}, nil, false},
		{"NS", dns.Question{Name: apex, Qtype: dns.TypeNS}, dns.RcodeSuccess,
			[]string{apex + "\t60\tIN\tNS\tns1.example.net.", apex + "\t60\tIN\tNS\tns2.example.net."}, nil, false},
		{"ANY at the apex is the SOA", dns.Question{Name: apex, Qtype: dns.TypeANY}, dns.RcodeSuccess, []string{soa}, nil, false},
		{"TXT at the apex is NODATA", dns.Question{Name: apex, Qtype: dns.TypeTXT}, dns.RcodeSuccess, nil, []string{soa}, false},
		{"two TXT values", dns.Question{Name: www, Qtype: dns.TypeTXT}, dns.RcodeSuccess, txt(www), nil, true},
		{"any case, echoed", dns.Question{Name: mixed, Qtype: dns.TypeTXT}, dns.RcodeSuccess, txt(mixed), nil, true},
		{"ANY is the TXT set", dns.Question{Name: www, Qtype: dns.TypeANY}, dns.RcodeSuccess, txt(www), nil, true},
		{"A at a TXT name is NODATA", dns.Question{Name: www, Qtype: dns.TypeA}, dns.RcodeSuccess, nil, []string{soa}, true},
		{"NXDOMAIN", dns.Question{Name: "mail.example.com." + apex, Qtype: dns.TypeTXT}, dns.RcodeNameError, nil, []string{soa}, true},
		{"NXDOMAIN for A", dns.Question{Name: "mail.example.com." + apex, Qtype: dns.TypeA}, dns.RcodeNameError, nil, []string{soa}, true},
		{"outside the zone", dns.Question{Name: "www.example.com.", Qtype: dns.TypeTXT}, dns.RcodeRefused, nil, nil, false},
		{"the zone's parent", dns.Question{Name: "example.org.", Qtype: dns.TypeSOA}, dns.RcodeRefused, nil, nil, false},
		{"a suffix, not a subdomain", dns.Question{Name: "www.example.com.xacme.example.org.", Qtype: dns.TypeTXT}, dns.RcodeRefused, nil, nil, false},
		{"the root", dns.Question{Name: ".", Qtype: dns.TypeNS}, dns.RcodeRefused, nil, nil, false},
		{"class CH", dns.Question{Name: www, Qtype: dns.TypeTXT, Qclass: dns.ClassCHAOS}, dns.RcodeRefused, nil, nil, false},
		{"zone transfer", dns.Question{Name: apex, Qtype: dns.TypeAXFR}, dns.RcodeRefused, nil, nil, false},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				q := tc.q
				if q.Qclass == 0 {
					q.Qclass = dns.ClassINET
				}
				m := question(q.Name, q.Qtype)
				m.Question[0] = q
				gets := ts.spy.gets.Load()
				resp := exchange(t, network, ts.addr(network), m)
				if resp.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
				}
				if aa := tc.rcode != dns.RcodeRefused; resp.Authoritative != aa {
					t.Errorf("AA %v, want %v", resp.Authoritative, aa)
				}
				if len(resp.Question) != 1 || resp.Question[0] != q {
					t.Errorf("question %v, want %v as asked", resp.Question, q)
				}
				if got := rrStrings(resp.Answer); !equal(got, tc.answer) {
					t.Errorf("answer:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.answer, "\n"))
				}
				if got := rrStrings(resp.Ns); !equal(got, tc.ns) {
					t.Errorf("authority:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.ns, "\n"))
				}
				want := int64(0)
				if tc.read {
					want = 1 // once per query, never more
				}
				if reads := ts.spy.gets.Load() - gets; reads != want {
					t.Errorf("%d store reads, want %d", reads, want)
				}
			})
		}
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

func TestServerRefusesMalformedQueries(t *testing.T) {
	ts := serve(t)
	www := "www.example.com." + apex
	two := question(www, dns.TypeTXT)
	two.Question = append(two.Question, dns.Question{Name: apex, Qtype: dns.TypeSOA, Qclass: dns.ClassINET})
	none := question(www, dns.TypeTXT)
	none.Question = nil
	status := question(apex, dns.TypeSOA)
	status.Opcode = dns.OpcodeStatus
	badVers := question(apex, dns.TypeSOA).SetEdns0(1232, false)
	badVers.IsEdns0().SetVersion(1)
	for _, tc := range []struct {
		name  string
		m     *dns.Msg
		rcode int
	}{
		{"no question", none, dns.RcodeFormatError},
		{"two questions", two, dns.RcodeFormatError},
		{"update", new(dns.Msg).SetUpdate(apex), dns.RcodeNotImplemented},
		{"notify", new(dns.Msg).SetNotify(apex), dns.RcodeNotImplemented},
		{"status", status, dns.RcodeNotImplemented},
		{"EDNS version 1", badVers, dns.RcodeBadVers},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				gets := ts.spy.gets.Load()
				resp := exchange(t, network, ts.addr(network), tc.m)
				if resp.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
				}
				if len(resp.Answer) != 0 || resp.Authoritative {
					t.Errorf("an answer: AA %v, %v", resp.Authoritative, resp.Answer)
				}
				if ts.spy.gets.Load() != gets {
					t.Error("the store was read")
				}
			})
		}
	}
}

func TestServerEDNS(t *testing.T) {
	ts := serve(t)
	resp := exchange(t, "udp", ts.udp, question(apex, dns.TypeSOA).SetEdns0(4096, false))
	if opt := resp.IsEdns0(); opt == nil || opt.UDPSize() != 1232 || opt.Version() != 0 {
		t.Errorf("OPT in the reply: %v, want one with 1232 bytes", opt)
	}
	if resp := exchange(t, "udp", ts.udp, question(apex, dns.TypeSOA)); resp.IsEdns0() != nil {
		t.Errorf("an OPT in the reply to a query without: %v", resp.IsEdns0())
	}
}

func TestServerStoreError(t *testing.T) {
	ts := serve(t)
	ts.spy.fail.Store(true)
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, ts.addr(network), question("www.example.com."+apex, dns.TypeTXT))
		if resp.Rcode != dns.RcodeServerFailure || resp.Authoritative || len(resp.Answer) != 0 {
			t.Errorf("%s: rcode %s, AA %v, answer %v; want SERVFAIL and nothing else", network, dns.RcodeToString[resp.Rcode], resp.Authoritative, resp.Answer)
		}
	}
	if log := ts.log.String(); !strings.Contains(log, "etcd is down") {
		t.Errorf("the store error is not logged:\n%s", log)
	}
}

// TestServerTruncates: the answers that do not fit a UDP reply are cut,
// with TC set, and the full set comes over TCP.
func TestServerTruncates(t *testing.T) {
	ts := serve(t)
	name := "many.example.com." + apex
	const n = 30 // more than fit in 1232 bytes
	for i := range n {
		ts.add(t, name, value(i))
	}
	check := func(network string, m *dns.Msg, limit int, truncated bool) int {
		t.Helper()
		resp := exchange(t, network, ts.addr(network), m)
		resp.Compress = true // as the server sent it, compressed
		packed, err := resp.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rcode != dns.RcodeSuccess || resp.Truncated != truncated || len(packed) > limit {
			t.Errorf("%s: rcode %s, TC %v, %d bytes, %d answers; want TC %v and at most %d bytes",
				network, dns.RcodeToString[resp.Rcode], resp.Truncated, len(packed), len(resp.Answer), truncated, limit)
		}
		return len(resp.Answer)
	}
	plain := check("udp", question(name, dns.TypeTXT), 512, true)
	edns := check("udp", question(name, dns.TypeTXT).SetEdns0(4096, false), 1232, true)
	if plain == 0 || edns <= plain || edns >= n {
		t.Errorf("%d answers in 512 bytes and %d in 1232, of %d", plain, edns, n)
	}
	if got := check("tcp", question(name, dns.TypeTXT), dns.MaxMsgSize, false); got != n {
		t.Errorf("%d answers over TCP, want all %d", got, n)
	}
}

// TestServerSurvivesGarbage sends what is not a query, then a query.
func TestServerSurvivesGarbage(t *testing.T) {
	ts := serve(t)
	header := func(qdcount uint16) []byte {
		h := make([]byte, 12)
		binary.BigEndian.PutUint16(h[0:], 0x4242) // id
		binary.BigEndian.PutUint16(h[4:], qdcount)
		return h
	}
	// A name of 5 labels of 63 octets: over the 255 octets a name may have.
	long := header(1)
	for range 5 {
		long = append(long, 63)
		long = append(long, strings.Repeat("a", 63)...)
	}
	long = append(long, 0, 0, 16, 0, 1)
	random := make([]byte, 512)
	rand.NewChaCha8([32]byte{1}).Read(random)
	garbage := [][]byte{
		{1, 2, 3}, // shorter than a header
		random,
		header(1),                                // a question promised, none there
		append(header(1), 0xc0, 12, 0, 16, 0, 1), // a name that points at itself
		append(header(1), 60, 'a', 0, 0, 16, 0, 1), // a label longer than the packet
		long,
	}

	u, err := net.Dial("udp", ts.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, g := range garbage {
		if _, err := u.Write(g); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.Dial("tcp", ts.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, g := range garbage {
		if err := binary.Write(c, binary.BigEndian, uint16(len(g))); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(g); err != nil {
			t.Fatal(err)
		}
	}
	c.Write([]byte{0xff, 0xff, 1}) // a length, and far fewer bytes

	// The over-long name is refused, not dropped: the packet is a query,
	// and FORMERR tells the resolver so.
	u2, err := net.Dial("udp", ts.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer u2.Close()
	if _, err := u2.Write(long); err != nil {
		t.Fatal(err)
	}
	u2.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := u2.Read(buf)
	if err != nil {
		t.Fatalf("no reply to a name over 255 octets: %v", err)
	}
	var resp dns.Msg
	if err := resp.Unpack(buf[:n]); err != nil || resp.Id != 0x4242 || resp.Rcode != dns.RcodeFormatError {
		t.Errorf("reply to a name over 255 octets: %v, %v; want FORMERR", err, &resp)
	}

	for _, network := range []string{"udp", "tcp"} {
		if resp := exchange(t, network, ts.addr(network), question(apex, dns.TypeSOA)); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Errorf("%s after garbage: %v", network, resp)
		}
	}
}

// TestServeStops: Serve returns once its context is cancelled, with a
// TCP connection open, and leaves nothing listening.
func TestServeStops(t *testing.T) {
	ts := serve(t)
	idle, err := net.Dial("tcp", ts.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// A connection the server has certainly accepted: it answered on it.
	conn, err := dns.Dial("tcp", ts.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if resp, _, err := new(dns.Client).ExchangeWithConn(question(apex, dns.TypeSOA), conn); err != nil || resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("before the stop: %v, %v", resp, err)
	}

	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]net.Conn{"idle": idle, "used": conn} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the %s connection after the stop: %v, want it closed", name, err)
		}
	}
	if c, err := net.Dial("tcp", ts.tcp); err == nil {
		c.Close()
		t.Error("the TCP listener still accepts")
	}
	c := &dns.Client{Net: "udp", Timeout: 500 * time.Millisecond}
	if _, _, err := c.Exchange(question(apex, dns.TypeSOA), ts.udp); err == nil {
		t.Error("UDP still answers")
	}
}

// TestServeEnds: Serve returns, and closes what it was given, when its
// context is cancelled before the servers start, and when one of them
// fails.
func TestServeEnds(t *testing.T) {
	srv, err := zone.NewServer(zone.Config{Zone: testZone, Nameservers: []string{"ns1.example.net"}, Store: store.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	listen := func() (net.PacketConn, net.Listener) {
		t.Helper()
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return pc, l
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	pc, l := listen()
	if err := srv.Serve(ctx, pc, l); err != nil {
		t.Errorf("Serve with its context cancelled: %v", err)
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the packet conn after Serve: %v, want closed", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the listener after Serve: %v, want closed", err)
	}

	pc, l = listen()
	l.Close() // TCP fails at once; UDP must stop too
	if err := srv.Serve(t.Context(), pc, l); err == nil || !strings.Contains(err.Error(), "tcp") {
		t.Errorf("Serve with a closed listener: %v, want TCP's error", err)
	}
	if err := srv.Serve(t.Context(), nil, nil); err == nil {
		t.Error("Serve with nothing to serve on succeeded")
	}
}

func TestNewServer(t *testing.T) {
	ok := func() zone.Config {
		return zone.Config{Zone: testZone, Nameservers: []string{"ns1.example.net"}, Store: store.NewMemory()}
	}
	if _, err := zone.NewServer(ok()); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*zone.Config)
	}{
		{"no zone", func(c *zone.Config) { c.Zone = "" }},
		{"a top-level zone", func(c *zone.Config) { c.Zone = "org" }},
		{"a zone not a name", func(c *zone.Config) { c.Zone = "acme example.org" }},
		{"an empty label", func(c *zone.Config) { c.Zone = "acme..example.org" }},
		{"a label of 64", func(c *zone.Config) { c.Zone = strings.Repeat("a", 64) + ".example.org" }},
		{"no name server", func(c *zone.Config) { c.Nameservers = nil }},
		{"a name server not a name", func(c *zone.Config) { c.Nameservers = []string{"ns1.example.net", "10.0.0.1:53"} }},
		{"a name server in the zone", func(c *zone.Config) { c.Nameservers = []string{"ns1.acme.example.org"} }},
		{"a hostmaster address", func(c *zone.Config) { c.Hostmaster = "hostmaster@example.org" }},
		{"no store", func(c *zone.Config) { c.Store = nil }},
		{"a TTL under a second", func(c *zone.Config) { c.TTL = time.Millisecond }},
		{"a TTL over an hour", func(c *zone.Config) { c.TTL = 2 * time.Hour }},
	} {
		cfg := ok()
		tc.edit(&cfg)
		if _, err := zone.NewServer(cfg); err == nil {
			t.Errorf("%s: NewServer succeeded", tc.name)
		}
	}
}
