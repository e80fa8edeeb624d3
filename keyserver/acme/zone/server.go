package zone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// maxUDP is the largest UDP reply: the EDNS buffer size DNS Flag Day
	// 2020 settled on, which avoids IP fragmentation on common paths.
	maxUDP = 1232
	// queryTimeout bounds one query's store read, below the time a
	// resolver waits before it asks another server.
	queryTimeout = 2 * time.Second
	// Transport limits: a resolver that sees TC asks once over TCP, so a
	// connection needs neither long idle times nor many queries.
	ioTimeout     = 2 * time.Second
	tcpIdle       = 10 * time.Second
	maxTCPQueries = 100
)

// Config is a Server's configuration.
type Config struct {
	Zone string // the delegated zone, e.g. acme.example.org
	// Nameservers are the host names of the apex's NS records, as the
	// parent delegates to them; the first is the SOA's primary. They lie
	// outside the zone, which serves no addresses.
	Nameservers []string
	Hostmaster  string        // the SOA's RNAME, as a name; default hostmaster.<zone>
	Store       Store         // read only
	TTL         time.Duration // of every record, and the SOA minimum (negative caching); default 60s
	Now         func() time.Time
	Log         *slog.Logger
}

// Server answers queries for one zone from the store; see the package
// comment for what it answers.
type Server struct {
	st    Store
	zone  string   // lowercase and fully qualified, as every name below
	ns    []string // the Nameservers
	rname string
	ttl   uint32
	now   func() time.Time
	log   *slog.Logger
}

// NewServer checks cfg and fills in its defaults.
func NewServer(cfg Config) (*Server, error) {
	zone := canonical(cfg.Zone)
	if err := checkName(zone); err != nil {
		return nil, fmt.Errorf("zone: zone %q: %w", cfg.Zone, err)
	}
	if !strings.Contains(zone, ".") {
		// A top-level domain is not delegated to a keyserver.
		return nil, fmt.Errorf("zone: zone %q: want at least two labels", cfg.Zone)
	}
	if len(cfg.Nameservers) == 0 {
		return nil, errors.New("zone: no name servers for the zone's NS records")
	}
	s := &Server{st: cfg.Store, zone: zone + ".", now: cfg.Now, log: cfg.Log}
	for _, ns := range cfg.Nameservers {
		ns = canonical(ns)
		if err := checkName(ns); err != nil {
			return nil, fmt.Errorf("zone: name server %q: %w", ns, err)
		}
		if dns.IsSubDomain(s.zone, ns+".") {
			return nil, fmt.Errorf("zone: name server %s is inside %s, which serves no addresses", ns, zone)
		}
		s.ns = append(s.ns, ns+".")
	}
	s.rname = canonical(cfg.Hostmaster)
	if s.rname == "" {
		s.rname = "hostmaster." + zone
	}
	if err := checkName(s.rname); err != nil {
		return nil, fmt.Errorf("zone: hostmaster %q (a name, as hostmaster.example.org): %w", cfg.Hostmaster, err)
	}
	s.rname += "."
	if cfg.Store == nil {
		return nil, errors.New("zone: no store")
	}
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = time.Minute
	}
	// A long TTL would keep a resolver's NXDOMAIN from before Present
	// cached while the CA validates.
	if ttl < time.Second || ttl > time.Hour {
		return nil, fmt.Errorf("zone: TTL %v: want 1s to 1h", cfg.TTL)
	}
	s.ttl = uint32(ttl / time.Second)
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Serve answers queries over UDP on pc and over TCP on l until ctx is
// cancelled, and returns once both have stopped and the queries in
// flight are answered. Either may be nil to serve one transport only;
// Serve closes both. If one fails, Serve stops the other and returns
// the error.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, l net.Listener) error {
	if pc == nil && l == nil {
		return errors.New("zone: nothing to serve on")
	}
	if pc != nil {
		defer pc.Close()
	}
	if l != nil {
		defer l.Close()
	}
	// Queries in flight at cancellation are still answered: their store
	// reads are bounded by queryTimeout instead.
	qctx := context.WithoutCancel(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var runs []*run
	if pc != nil {
		runs = append(runs, start("udp", cancel, &dns.Server{
			PacketConn:   pc,
			Handler:      s.handler(qctx, true),
			UDPSize:      maxUDP, // the read buffer: room for any query with EDNS options
			ReadTimeout:  ioTimeout,
			WriteTimeout: ioTimeout,
		}))
	}
	if l != nil {
		runs = append(runs, start("tcp", cancel, &dns.Server{
			Listener:      l,
			Handler:       s.handler(qctx, false),
			ReadTimeout:   ioTimeout,
			WriteTimeout:  ioTimeout,
			IdleTimeout:   func() time.Duration { return tcpIdle },
			MaxTCPQueries: maxTCPQueries,
		}))
	}
	<-ctx.Done()
	var errs []error
	for _, r := range runs {
		if err := r.stop(); err != nil {
			errs = append(errs, fmt.Errorf("zone: serve %s: %w", r.net, err))
		}
	}
	return errors.Join(errs...)
}

// run is one dns.Server serving in its own goroutine.
type run struct {
	net     string
	srv     *dns.Server
	started chan struct{} // closed once srv can be shut down
	done    chan error    // what ActivateAndServe returned
}

// start serves srv until it is stopped, and calls failed if it returns
// before that.
func start(network string, failed func(), srv *dns.Server) *run {
	r := &run{net: network, srv: srv, started: make(chan struct{}), done: make(chan error, 1)}
	srv.NotifyStartedFunc = func() { close(r.started) }
	go func() {
		err := srv.ActivateAndServe()
		failed()
		r.done <- err // last: once stop has it, the goroutine is done
	}()
	return r
}

// stop shuts the server down and returns its error. Shutdown refuses a
// server that has not started, and leaves it to start and serve on, so
// stop first waits for it to start, or to fail to.
func (r *run) stop() error {
	select {
	case <-r.started:
		r.srv.Shutdown() // its error is for a server not started
		return <-r.done
	case err := <-r.done:
		return err
	}
}

// handler answers one query. Replies over UDP are cut to the size the
// resolver said it takes, with TC set, so that it asks again over TCP.
func (s *Server) handler(ctx context.Context, udp bool) dns.HandlerFunc {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		ctx, cancel := context.WithTimeout(ctx, queryTimeout)
		defer cancel()
		resp := s.answer(ctx, req)
		size := dns.MaxMsgSize
		if udp {
			size = dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDP)
			}
		}
		resp.Truncate(size)
		if err := w.WriteMsg(resp); err != nil {
			s.log.Debug("zone: reply", "remote", w.RemoteAddr(), "err", err)
		}
	}
}

// answer is the reply to req. It echoes the question as asked, in its
// case, which resolvers that randomise the case of names check.
func (s *Server) answer(ctx context.Context, req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	if req.Opcode != dns.OpcodeQuery {
		resp.Rcode = dns.RcodeNotImplemented
		return resp
	}
	// RFC 6891 §7: a query with an OPT record gets one back, and BADVERS
	// for an EDNS version other than 0.
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(maxUDP, false)
		if opt.Version() != 0 {
			resp.Rcode = dns.RcodeBadVers
			return resp
		}
	}
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	// Names outside the zone get no answer and no referral, and cost no
	// store read; nor is the zone transferred, as there is no secondary.
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(s.zone, name) ||
		q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		resp.Rcode = dns.RcodeRefused
		return resp
	}
	resp.Authoritative = true
	if name == s.zone {
		switch q.Qtype {
		case dns.TypeSOA, dns.TypeANY:
			resp.Answer = []dns.RR{s.soa(q.Name)}
		case dns.TypeNS:
			for _, ns := range s.ns {
				resp.Answer = append(resp.Answer, &dns.NS{Hdr: s.header(q.Name, dns.TypeNS), Ns: ns})
			}
		default:
			resp.Ns = []dns.RR{s.soa(s.zone)}
		}
		return resp
	}
	values, err := Values(ctx, s.st, name)
	if err != nil {
		s.log.Error("zone: store", "name", name, "err", err)
		resp.Authoritative = false
		resp.Rcode = dns.RcodeServerFailure
		return resp
	}
	switch {
	case len(values) == 0:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{s.soa(s.zone)}
	case q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY:
		for _, v := range values {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: s.header(q.Name, dns.TypeTXT), Txt: []string{v}})
		}
		s.log.Debug("zone: TXT", "name", name, "values", values)
	default:
		resp.Ns = []dns.RR{s.soa(s.zone)}
	}
	return resp
}

func (s *Server) header(owner string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: rrtype, Class: dns.ClassINET, Ttl: s.ttl}
}

// soa is the zone's SOA record. Refresh, retry and expire are nominal, as
// no secondary transfers the zone.
func (s *Server) soa(owner string) *dns.SOA {
	return &dns.SOA{
		Hdr:     s.header(owner, dns.TypeSOA),
		Ns:      s.ns[0],
		Mbox:    s.rname,
		Serial:  uint32(s.now().Unix()),
		Refresh: 3600,
		Retry:   600,
		Expire:  14 * 86400,
		Minttl:  s.ttl,
	}
}

// checkName refuses what is not a host name (lowercase, without the
// trailing dot): labels of 1 to 63 letters, digits, hyphens or
// underscores, and 253 characters in all, the most a name has room for
// on the wire.
func checkName(name string) error {
	if len(name) > 253 {
		return fmt.Errorf("%d characters, over 253", len(name))
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("label %q is not 1 to 63 characters", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("label %q has %q", label, r)
			}
		}
	}
	return nil
}
