// Package loadgen is a load generator for a keyserver: it plays a fleet of
// distinct nodes that are admitted, renew their CGCs and ask for grants'
// certificates, each request on its own new TLS 1.3 connection with no
// keep-alive and no session resumption, as a real fleet does; it verifies
// every answer and measures throughput and latency.
//
// It is a client and imports nothing of the server (only keyserver/api,
// and authority for key generation):
// it trusts the keyserver only through the TLS root it is given, the
// key-granting root only as that keyserver serves it, and a grant's root
// only as the first answer for that grant names it, pinned for the rest of
// the run. It needs an administrator's credential to mint admission tokens.
// The nodes it admits (bench-<tag>-<i>) stay in the keyserver's inventory:
// it must never be pointed at a keyserver whose inventory matters.
package loadgen

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
)

// Scenario names what the nodes do in the measured phase.
type Scenario string

// The scenarios.
const (
	// Admit: N tokens are minted first, untimed; the measured operation
	// redeems one with a fresh key and CSR.
	Admit Scenario = "admit"
	// Renew: N nodes are admitted first, untimed; the measured operation
	// is a node's renewal with a fresh key (POST /v1/renew), after which
	// the node uses the new CGC, as the keyclient does.
	Renew Scenario = "renew"
	// Sign: N nodes are admitted first, untimed; the measured operation
	// asks for a grant's certificate with a fresh key.
	Sign Scenario = "sign"
	// Storm: N nodes are admitted first, untimed; then all renew at once,
	// each exactly once (a renewal as in Renew).
	Storm Scenario = "storm"
)

// Scenarios are all the scenarios.
var Scenarios = []Scenario{Admit, Renew, Sign, Storm}

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("loadgen: invalid configuration")

// Clock is the time source.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config says what load to generate, against which keyserver.
type Config struct {
	Server     string            // https:// URL of the keyserver
	ServerRoot *x509.Certificate // the keyserver's TLS root (keyctl.yaml's server_ca), the only one trusted
	AdminTLS   *tls.Config       // the administrator's credential, to mint tokens

	Scenario    Scenario
	Nodes       int           // distinct nodes
	Concurrency int           // operations in flight; default 8, storm: Nodes; renew at most Nodes
	Count       int           // measured operations; default (admit, storm) Nodes
	Duration    time.Duration // or measure for this long; Count and Duration exclude each other
	Warmup      time.Duration // operations started before are not measured
	Grant       string        // sign: the grant whose certificate the nodes ask for
	PID         int           // the keyserver's process, for its CPU time and memory; 0: not measured
	Timeout     time.Duration // per HTTP request; default 30s
	MaxRetries  int           // retries of a request answered 503 with Retry-After, or whose connection failed; default 10; <0: none

	Clock Clock     // default real time
	Rand  io.Reader // draws the run's tag; default crypto/rand
	Log   io.Writer // progress of the set-up; default none
}

func (c *Config) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if !slices.Contains(Scenarios, c.Scenario) {
		return bad("scenario %q: want one of admit, renew, sign, storm", c.Scenario)
	}
	if !strings.HasPrefix(c.Server, "https://") || c.ServerRoot == nil || c.AdminTLS == nil {
		return bad("a keyserver https:// URL, its root and an admin credential are required")
	}
	if c.Nodes < 1 {
		return bad("nodes: want at least 1")
	}
	if c.Concurrency < 0 || c.Count < 0 || c.Duration < 0 || c.Warmup < 0 {
		return bad("negative concurrency, count, duration or warm-up")
	}
	if c.Count > 0 && c.Duration > 0 {
		return bad("give a count or a duration, not both")
	}
	if (c.Scenario == Sign) != (c.Grant != "") {
		return bad("a grant is for the sign scenario, which needs one")
	}
	switch c.Scenario {
	case Admit:
		if c.Count > c.Nodes {
			return bad("admit: count %d exceeds nodes %d (each node is admitted once)", c.Count, c.Nodes)
		}
		if c.Count == 0 && c.Duration == 0 {
			c.Count = c.Nodes
		}
	case Storm:
		if c.Duration > 0 || c.Warmup > 0 || (c.Count != 0 && c.Count != c.Nodes) {
			return bad("storm: every node renews exactly once: no count, duration or warm-up")
		}
		c.Count = c.Nodes
		if c.Concurrency == 0 {
			c.Concurrency = c.Nodes
		}
	default:
		if c.Count == 0 && c.Duration == 0 {
			return bad("%s: give a count or a duration", c.Scenario)
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Scenario == Renew || c.Scenario == Sign {
		// A node does one thing at a time: two renewals of one node at
		// once would supersede each other.
		c.Concurrency = min(c.Concurrency, c.Nodes)
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 10
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// node is one member of the fleet.
type node struct {
	name  string
	token string           // before admission
	cred  *tls.Certificate // its CGC, with key and chain
}

type gen struct {
	cfg                     Config
	roots                   *x509.CertPool // the keyserver's TLS root
	admin                   *http.Client
	kgRoot                  *x509.Certificate // the key-granting root, as the keyserver serves it
	grantRoot               *x509.Certificate // sign: the grant's root, pinned by the first answer
	kgIssuers, grantIssuers Issuers           // intermediates verified under each root

	mu      sync.Mutex
	retries map[string]int
}

// Run generates the load cfg describes and reports what it measured. An
// error means the run could not be set up (or cfg is wrong: ErrConfig);
// failures of measured operations are counted in the report. When ctx is
// cancelled, Run stops and reports what it measured so far.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	g := &gen{cfg: cfg, roots: x509.NewCertPool(), retries: map[string]int{}}
	g.roots.AddCert(cfg.ServerRoot)
	atr := &http.Transport{TLSClientConfig: cfg.AdminTLS.Clone(), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: setupConcurrency}
	defer atr.CloseIdleConnections()
	g.admin = &http.Client{Transport: atr, Timeout: cfg.Timeout}

	var tag [3]byte
	if _, err := io.ReadFull(cfg.Rand, tag[:]); err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	rep := newReport(&cfg, "bench-"+hex.EncodeToString(tag[:]))
	setup := cfg.Clock.Now()
	if err := g.fetchKeyGrantingRoot(ctx); err != nil {
		return nil, err
	}
	nodes := make([]*node, cfg.Nodes)
	for i := range nodes {
		nodes[i] = &node{name: fmt.Sprintf("%s-%d", rep.Tag, i)}
	}
	fmt.Fprintf(cfg.Log, "minting %d tokens for %s-*\n", len(nodes), rep.Tag)
	if err := g.setupEach(ctx, "token", nodes, g.mint); err != nil {
		return nil, err
	}
	op := g.admit
	switch cfg.Scenario {
	case Renew, Storm:
		op = g.renew
	case Sign:
		op = g.sign
	}
	if cfg.Scenario != Admit {
		fmt.Fprintf(cfg.Log, "admitting %d nodes\n", len(nodes))
		err := g.setupEach(ctx, "admission", nodes, func(ctx context.Context, n *node) error { return g.admit(ctx, n).err })
		if err != nil {
			return nil, err
		}
	}
	if cfg.Scenario == Sign {
		if err := g.pinGrantRoot(ctx, nodes[0]); err != nil {
			return nil, err
		}
	}
	rep.SetupSeconds = cfg.Clock.Now().Sub(setup).Seconds()
	fmt.Fprintf(cfg.Log, "set up in %.1fs; running %s\n", rep.SetupSeconds, cfg.Scenario)
	g.measure(ctx, nodes, op, rep)
	return rep, nil
}

// outcome is what one operation did.
type outcome struct {
	latency  time.Duration // of its requests, retries and their waits included
	requests int
	err      error // a *Failure
}

// measure runs op over the nodes with cfg.Concurrency workers until the
// count or the duration is reached, or the nodes are used up (admit,
// storm: each node once), and fills rep.
func (g *gen) measure(ctx context.Context, nodes []*node, op func(context.Context, *node) outcome, rep *Report) {
	cfg := &g.cfg
	reuse := cfg.Scenario == Renew || cfg.Scenario == Sign
	queue := make(chan *node, len(nodes))
	for _, n := range nodes {
		queue <- n
	}
	if !reuse {
		close(queue)
	}
	var (
		start    = cfg.Clock.Now()
		warmEnd  = start.Add(cfg.Warmup)
		deadline = warmEnd.Add(cfg.Duration)
		tickets  atomic.Int64
		first    sync.Once
		before   *ProcSample
		mu       sync.Mutex
		samples  []time.Duration
		lastEnd  = warmEnd
	)
	worker := func() {
		for ctx.Err() == nil {
			var n *node
			if reuse {
				select {
				case n = <-queue:
				case <-ctx.Done():
					return
				}
			} else if n = <-queue; n == nil {
				return
			}
			measured := !cfg.Clock.Now().Before(warmEnd)
			if measured {
				if (cfg.Count > 0 && tickets.Add(1) > int64(cfg.Count)) || (cfg.Duration > 0 && !cfg.Clock.Now().Before(deadline)) {
					if reuse {
						queue <- n
					}
					return
				}
				first.Do(func() { before = g.sample(rep) })
			}
			out := op(ctx, n)
			if reuse {
				queue <- n
			}
			if out.err != nil && ctx.Err() != nil {
				return // interrupted, not failed
			}
			end := cfg.Clock.Now()
			mu.Lock()
			if !measured {
				rep.WarmupOps++
			} else {
				rep.Ops++
				rep.Requests += out.requests
				if out.err == nil {
					rep.OK++
					samples = append(samples, out.latency)
				} else {
					rep.Failed++
					rep.Failures[kindOf(out.err)]++
					if rep.FirstError == "" {
						rep.FirstError = out.err.Error()
					}
				}
				if end.After(lastEnd) {
					lastEnd = end
				}
			}
			mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(worker)
	}
	wg.Wait()
	rep.Interrupted = ctx.Err() != nil
	rep.Seconds = lastEnd.Sub(warmEnd).Seconds()
	if rep.Seconds > 0 {
		rep.OKPerSecond = float64(rep.OK) / rep.Seconds
	}
	rep.Latency = Summarise(samples)
	maps.Copy(rep.Retries, g.retries)
	if before != nil {
		if after := g.sample(rep); after != nil {
			rep.Keyserver.observe(*before, *after, rep.Ops)
		}
	}
	if cfg.Count > 0 && rep.Ops < cfg.Count && !rep.Interrupted {
		rep.Note = fmt.Sprintf("only %d of %d operations measured: the nodes ran out (admit redeems each token once)", rep.Ops, cfg.Count)
	}
}

// sample reads the keyserver's process, when there is one; a failure is
// noted in the report.
func (g *gen) sample(rep *Report) *ProcSample {
	if g.cfg.PID == 0 {
		return nil
	}
	s, err := ReadProc(g.cfg.PID)
	if err != nil {
		rep.Note = err.Error()
		return nil
	}
	return &s
}

// setupConcurrency bounds the set-up's workers, so that a storm's set-up
// is not a storm itself.
const setupConcurrency = 64

// setupEach does f for every node, untimed, with cfg.Concurrency workers
// (at most setupConcurrency); any failure fails the run.
func (g *gen) setupEach(ctx context.Context, what string, nodes []*node, f func(context.Context, *node) error) error {
	var (
		next  atomic.Int64
		mu    sync.Mutex
		kinds = map[string]int{}
		first error
		wg    sync.WaitGroup
	)
	for range min(g.cfg.Concurrency, setupConcurrency, len(nodes)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(nodes)) {
					return
				}
				if err := f(ctx, nodes[i]); err != nil {
					mu.Lock()
					kinds[kindOf(err)]++
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("loadgen: set-up interrupted: %w", err)
	}
	if first != nil {
		return fmt.Errorf("loadgen: set-up: %s failed (%s) of %d nodes; first: %w", what, counts(kinds), len(nodes), first)
	}
	return nil
}

// mint gets n a token through the admin API.
func (g *gen) mint(ctx context.Context, n *node) error {
	body, err := json.Marshal(api.TokenRequest{Node: n.name})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.Server+api.PathTokens, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", api.ContentJSON)
	resp, err := g.admin.Do(req)
	if err != nil {
		return &Failure{Kind: KindTransport, Err: err}
	}
	var tr api.TokenResponse
	if err := api.ReadResponse(resp, 1<<20, &tr); err != nil {
		return classify(err)
	}
	n.token = tr.Token
	return nil
}

// fetchKeyGrantingRoot gets the key-granting authority's root: the last
// certificate of GET /v1/ca/keygranting, which must be self-signed.
func (g *gen) fetchKeyGrantingRoot(ctx context.Context) error {
	tr := g.transport(nil)
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.cfg.Server+api.PathCA+"keygranting", nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: g.cfg.Timeout}).Do(req)
	if err != nil {
		return fmt.Errorf("loadgen: key-granting root: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("loadgen: key-granting root: %s %v", resp.Status, err)
	}
	root, err := selfSigned(string(data))
	if err != nil {
		return fmt.Errorf("loadgen: key-granting root: %w", err)
	}
	g.kgRoot = root
	return nil
}

// selfSigned is the last certificate of a PEM bundle, which must sign
// itself.
func selfSigned(data string) (*x509.Certificate, error) {
	certs, err := parsePEM(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	root := certs[len(certs)-1]
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("not a self-signed root: %w", err)
	}
	return root, nil
}

// pinGrantRoot asks for the grant's certificate once, untimed, and pins
// the root that answer names for the rest of the run.
func (g *gen) pinGrantRoot(ctx context.Context, n *node) error {
	out := g.exchange(ctx, n, api.PathSign+g.cfg.Grant, n.cred, signRequest, func(n *node, key crypto.Signer, resp *api.CertificateResponse) error {
		root, err := selfSigned(resp.Root)
		if err != nil {
			return fmt.Errorf("its root: %w", err)
		}
		g.grantRoot = root
		return g.checkGrant(n, key, resp)
	})
	if out.err != nil {
		return fmt.Errorf("loadgen: set-up: grant %s: %w", g.cfg.Grant, out.err)
	}
	return nil
}

// admit redeems n's token.
func (g *gen) admit(ctx context.Context, n *node) outcome {
	return g.exchange(ctx, n, api.PathAdmit, nil, func(csr string) any {
		return api.AdmitRequest{Token: n.token, Node: n.name, CSR: csr}
	}, g.takeCGC)
}

// renew renews n's CGC with a new key. A retry after a lost answer sends
// the same request, so the same key, as the keyclient does.
func (g *gen) renew(ctx context.Context, n *node) outcome {
	return g.exchange(ctx, n, api.PathRenew, n.cred, func(csr string) any { return api.RenewRequest{CSR: csr} }, g.takeCGC)
}

// sign asks for the grant's certificate for a new key.
func (g *gen) sign(ctx context.Context, n *node) outcome {
	return g.exchange(ctx, n, api.PathSign+g.cfg.Grant, n.cred, signRequest, g.checkGrant)
}

func signRequest(csr string) any { return api.SignRequest{CSR: csr} }

// exchange makes a fresh key, sends the request that body makes of its CSR,
// presenting cred when not nil, and has check verify the answer.
func (g *gen) exchange(ctx context.Context, n *node, path string, cred *tls.Certificate, body func(csr string) any,
	check func(*node, crypto.Signer, *api.CertificateResponse) error) outcome {
	key, csr, err := newKey()
	if err != nil {
		return outcome{err: &Failure{Kind: KindClient, Err: err}}
	}
	var resp api.CertificateResponse
	var out outcome
	out.requests, out.latency, out.err = g.request(ctx, http.MethodPost, path, cred, body(csr), &resp)
	if out.err == nil {
		out.err = check(n, key, &resp)
	}
	return out
}

// takeCGC verifies a CGC sent for n's key and makes it n's client
// credential.
func (g *gen) takeCGC(n *node, key crypto.Signer, resp *api.CertificateResponse) error {
	if resp.Node != n.name {
		return fail(KindName, "answer for node %q, want %q", resp.Node, n.name)
	}
	leaf, chain, err := Verify(resp.Certificate, resp.Chain, Expect{Root: g.kgRoot, Node: n.name, CGC: true, Key: key.Public(), Now: g.cfg.Clock.Now(), Issuers: &g.kgIssuers})
	if err != nil {
		return err
	}
	cred := &tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, c := range chain {
		cred.Certificate = append(cred.Certificate, c.Raw)
	}
	n.cred, n.token = cred, ""
	return nil
}

// checkGrant verifies a grant's certificate sent for n's key.
func (g *gen) checkGrant(n *node, key crypto.Signer, resp *api.CertificateResponse) error {
	if resp.Node != n.name || resp.Grant != g.cfg.Grant {
		return fail(KindName, "answer for node %q grant %q, want %q %q", resp.Node, resp.Grant, n.name, g.cfg.Grant)
	}
	if root, err := parsePEM(resp.Root); err != nil || len(root) != 1 || !root[0].Equal(g.grantRoot) {
		return fail(KindChain, "the answer names another root than the grant's first answer did")
	}
	_, _, err := Verify(resp.Certificate, resp.Chain, Expect{Root: g.grantRoot, Node: n.name, Key: key.Public(), Now: g.cfg.Clock.Now(), Issuers: &g.grantIssuers})
	return err
}

// newKey makes a fresh P-256 key and a CSR that carries it and nothing
// else, as the keyclient sends.
func newKey() (crypto.Signer, string, error) {
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, "", err
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// transport is a new transport for one request: a new TLS 1.3 connection
// trusting only the keyserver's root, no keep-alive, and no session cache
// (a new tls.Config each time, ClientSessionCache nil), so no resumption.
// HTTP/1.1, as the keyclient speaks it.
func (g *gen) transport(cred *tls.Certificate) *http.Transport {
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: g.roots}
	if cred != nil {
		tc.Certificates = []tls.Certificate{*cred}
	}
	return &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}
}

// request sends one API request on a new connection, presenting cred when
// not nil, and decodes the answer into out. A failed attempt that
// retryWait allows is tried again after its wait, on a new connection,
// each retry counted. It returns the requests made and their time, waits
// included; an error is a *Failure.
func (g *gen) request(ctx context.Context, method, path string, cred *tls.Certificate, in, out any) (n int, lat time.Duration, err error) {
	var body []byte
	if in != nil {
		if body, err = json.Marshal(in); err != nil {
			return 0, 0, &Failure{Kind: KindClient, Err: err}
		}
	}
	start := g.cfg.Clock.Now()
	for attempt := 0; ; attempt++ {
		err = g.once(ctx, method, path, cred, body, out)
		n++
		wait, kind, retry := g.retryWait(err, attempt)
		if !retry || ctx.Err() != nil {
			return n, g.cfg.Clock.Now().Sub(start), err
		}
		g.mu.Lock()
		g.retries[kind]++
		g.mu.Unlock()
		select {
		case <-g.cfg.Clock.After(wait):
		case <-ctx.Done():
			return n, g.cfg.Clock.Now().Sub(start), err
		}
	}
}

// maxRetryAfter bounds how long one Retry-After makes a request wait.
const maxRetryAfter = 5 * time.Minute

// retryWait says whether the attempt-th try (from 0), which failed with
// err, is to be tried again, after how long, and the kind of failure
// retried. Up to cfg.MaxRetries retries: a 503 with Retry-After after that
// delay; a connection refused or reset (a full accept queue under a storm)
// after a backoff with jitter, as a keyclient does, with the same request,
// so that a lost answer is replayed, not repeated.
func (g *gen) retryWait(err error, attempt int) (wait time.Duration, kind string, retry bool) {
	var f *Failure
	if err == nil || attempt >= g.cfg.MaxRetries || !errors.As(err, &f) {
		return 0, "", false
	}
	var ae *api.Error
	switch {
	case f.Kind == KindTransport:
		d := 30 * time.Second
		if attempt < 5 {
			d = time.Second << attempt
		}
		return d/2 + mrand.N(d/2+1), f.Kind, true
	case errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable && ae.Code == api.CodeUnavailable && ae.RetryAfter > 0:
		return min(ae.RetryAfter, maxRetryAfter), f.Kind, true
	}
	return 0, "", false
}

// once sends one request on a new connection.
func (g *gen) once(ctx context.Context, method, path string, cred *tls.Certificate, body []byte, out any) error {
	tr := g.transport(cred)
	// This transport is never used again: close its connection.
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, g.cfg.Server+path, bytes.NewReader(body))
	if err != nil {
		return &Failure{Kind: KindClient, Err: err}
	}
	req.Header.Set("Content-Type", api.ContentJSON)
	resp, err := (&http.Client{Transport: tr, Timeout: g.cfg.Timeout}).Do(req)
	if err != nil {
		return &Failure{Kind: KindTransport, Err: err}
	}
	return classify(api.ReadResponse(resp, 1<<20, out))
}

// classify turns an error of api.ReadResponse into a *Failure: an API
// refusal is http_<status>_<code>.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return &Failure{Kind: fmt.Sprintf("http_%d_%s", ae.Status, ae.Code), Err: err}
	}
	return &Failure{Kind: KindBadAnswer, Err: err}
}
