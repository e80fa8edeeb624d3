// Package keyserver is the keysystem's HTTPS API: it terminates TLS 1.3,
// tells nodes from administrators by the authority that issued their client
// certificate, hands admission its evidence, maps what admission decides to
// stable JSON errors, and writes the audit log.
//
// Trust boundary: everything a client sends is untrusted input; identity
// comes only from a verified client certificate (a CGC for nodes, an admin
// certificate for administrators) or, for admission, a one-time token.
// Every request is bounded in size and time.
package keyserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
)

// Config wires a Server. Nil and zero fields get defaults.
type Config struct {
	Names []string // DNS names and IP addresses the keyserver's certificate carries

	KeyGranting *authority.Authority
	Server      *authority.Authority
	Admin       *authority.Authority
	Store       store.Store

	// PolicyFile is the policy; "" serves none (no grants) and leaves the
	// CGC settings to CGCLifetime. Named authorities the policy uses are
	// loaded from AuthorityDir/<name>.
	PolicyFile   string
	AuthorityDir string

	CGCLifetime time.Duration
	Grace       time.Duration
	TokenTTL    time.Duration
	MaxTokenTTL time.Duration

	ServerCertLifetime time.Duration // default 7 days; renewed at two thirds

	// Load shedding: at most MaxConns connections are served at once (more
	// wait to be accepted); of the requests that sign (admit, renew, sign),
	// at most MaxInFlight run at once and MaxQueue more wait up to
	// QueueWait; the rest get 503 with Retry-After: RetryAfter. Zero means
	// the Default of each (limit.go).
	MaxConns    int
	MaxInFlight int
	MaxQueue    int
	QueueWait   time.Duration
	RetryAfter  time.Duration

	Profiling bool // serve Go profiles to administrators at PathProfile

	// ACME, when set, obtains and serves the policy's public certificates.
	ACME *ACMEConfig

	PruneInterval time.Duration // default 10 minutes

	Audit  io.Writer    // audit log; default discards
	Logger *slog.Logger // default slog.Default()
	Now    func() time.Time
	Rand   io.Reader
}

// Server is the keyserver.
type Server struct {
	cfg   Config
	adm   *admission.Service
	audit *auditLog
	log   *slog.Logger
	mux   *http.ServeMux

	certMu sync.Mutex
	cert   *tls.Certificate

	limiter  *limiter
	acme     *acme.Manager // nil without Config.ACME
	policy   atomic.Pointer[policyState]
	reloadMu sync.Mutex
}

// New checks cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.KeyGranting == nil || cfg.Server == nil || cfg.Admin == nil || cfg.Store == nil {
		return nil, errors.New("keyserver: the three authorities and a store are required")
	}
	if len(cfg.Names) == 0 {
		return nil, errors.New("keyserver: at least one server name is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	// One clock for everything the server decides, including what its
	// authorities sign and accept.
	cfg.KeyGranting = cfg.KeyGranting.WithClock(cfg.Now)
	cfg.Server = cfg.Server.WithClock(cfg.Now)
	cfg.Admin = cfg.Admin.WithClock(cfg.Now)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Audit == nil {
		cfg.Audit = io.Discard
	}
	if cfg.ServerCertLifetime == 0 {
		cfg.ServerCertLifetime = 7 * 24 * time.Hour
	}
	if cfg.PruneInterval == 0 {
		cfg.PruneInterval = 10 * time.Minute
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxQueue == 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.QueueWait == 0 {
		cfg.QueueWait = DefaultQueueWait
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	adm, err := admission.New(admission.Config{
		Store:       cfg.Store,
		KeyGranting: cfg.KeyGranting,
		CGCLifetime: cfg.CGCLifetime,
		Grace:       cfg.Grace,
		TokenTTL:    cfg.TokenTTL,
		MaxTokenTTL: cfg.MaxTokenTTL,
		Now:         cfg.Now,
		Rand:        cfg.Rand,
	})
	if err != nil {
		return nil, fmt.Errorf("keyserver: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		adm:     adm,
		audit:   &auditLog{w: cfg.Audit, now: cfg.Now},
		limiter: newLimiter(cfg.MaxInFlight, cfg.MaxQueue, cfg.QueueWait, cfg.RetryAfter),
		log:     cfg.Logger,
	}
	if _, err := s.serverCertificate(); err != nil {
		return nil, err
	}
	if err := s.newACME(); err != nil {
		return nil, fmt.Errorf("keyserver: %w", err)
	}
	st, err := s.loadPolicy()
	if err == nil {
		err = s.install(st)
	}
	if err != nil {
		return nil, fmt.Errorf("keyserver: policy refused:\n%w", err)
	}
	if cfg.PolicyFile != "" {
		s.record(AuditEvent{Event: EventPolicyLoad, Reason: st.pol.Digest()})
	}
	s.routes()
	return s, nil
}

// Admission is the admission service the server wraps.
func (s *Server) Admission() *admission.Service { return s.adm }

// TLSConfig is the keyserver's TLS configuration: TLS 1.3 only, its own
// certificate served with the full chain up to the root (so a node holding
// only the root's pin can find and check its anchor), and client
// certificates requested but verified per endpoint, against the one
// authority that endpoint trusts. No session tickets: a resumed session
// would carry a client certificate that may since have been superseded
// or revoked, and nodes and keyctl never resume anyway, so the ticket
// each handshake would seal and send is wasted work.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.serverCertificate()
		},
		Time: s.cfg.Now,
	}
}

// serverCertificate returns the keyserver's TLS certificate, issuing a new
// one from the server authority when none exists or two thirds of its
// lifetime have passed. Nothing is written to disk: the server authority is
// the keyserver's to use, and a restart simply issues afresh.
func (s *Server) serverCertificate() (*tls.Certificate, error) {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	now := s.cfg.Now()
	if c := s.cert; c != nil {
		life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
		if now.Before(c.Leaf.NotBefore.Add(life * 2 / 3)) {
			return c, nil
		}
	}
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		return nil, err
	}
	req := authority.Request{
		PublicKey:   key.Public(),
		CommonName:  s.cfg.Names[0],
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		Lifetime:    s.cfg.ServerCertLifetime,
	}
	for _, n := range s.cfg.Names {
		if ip := net.ParseIP(n); ip != nil {
			req.IPAddresses = append(req.IPAddresses, ip)
		} else {
			req.DNSNames = append(req.DNSNames, n)
		}
	}
	leaf, err := s.cfg.Server.Sign(req)
	if err != nil {
		return nil, fmt.Errorf("keyserver: server certificate: %w", err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, ic := range s.cfg.Server.Chain() {
		c.Certificate = append(c.Certificate, ic.Raw)
	}
	c.Certificate = append(c.Certificate, s.cfg.Server.Root().Raw)
	s.cert = c
	return c, nil
}

// Serve answers on l until ctx is cancelled, then stops accepting, lets
// requests in flight finish (up to a grace period) and returns. It also
// owns the background pruning of dead tokens.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    32 << 10,
		// Handshake failures (port scans, a node discovering its anchor)
		// are routine: keep them out of the operator's log unless asked.
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	var wg sync.WaitGroup
	pruneCtx, stopPrune := context.WithCancel(ctx)
	wg.Go(func() { s.pruneLoop(pruneCtx) })
	if s.acme != nil {
		wg.Go(func() { s.acme.Run(pruneCtx) })
	}
	defer func() { stopPrune(); wg.Wait() }()

	errc := make(chan error, 1)
	// At most MaxConns connections are served at once; the rest wait in
	// the kernel's accept queue. Under a storm this keeps every accepted
	// connection's TLS handshake inside its deadline, where accepting all
	// would have thousands of handshakes share the CPU and time out.
	go func() { errc <- srv.ServeTLS(netutil.LimitListener(l, s.cfg.MaxConns), "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("keyserver: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: draining requests in flight")
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := srv.Shutdown(shutCtx)
	<-errc // ServeTLS has returned ErrServerClosed
	if err != nil {
		return fmt.Errorf("keyserver: shutdown: %w", err)
	}
	return nil
}

func (s *Server) pruneLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PruneInterval)
	defer t.Stop()
	for {
		n, err := s.adm.Prune(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("pruning tokens", "err", err)
		}
		if n > 0 {
			s.log.Info("pruned dead tokens", "count", n)
			s.record(AuditEvent{Event: EventTokenPrune, Reason: fmt.Sprintf("%d dead token records removed (expired, or redeemed past the retry window)", n)})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) record(e AuditEvent) {
	if err := s.audit.record(e); err != nil {
		s.log.Error("writing audit log", "err", err, "event", e.Event)
	}
}
