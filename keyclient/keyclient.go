// Package keyclient is the node's side of the keysystem: it admits the node
// with its one-time token, keeps its certificate-granting certificate (CGC)
// fresh, and with the CGC keeps every item of its configuration fresh:
// certificates for the policy's x509 grants, the policy's static files, and
// the public certificates the keyserver obtains over ACME for the policy's
// labels. It writes what it gets atomically, with the configured owner and
// mode, and runs each item's reload command after a change.
//
// Keys of x509 items are generated here and never leave the node; every new
// certificate gets a new key. An ACME certificate's key is the keyserver's,
// shared by the nodes its label names, and fetched with it. The keyserver is
// trusted only through the trust anchor pinned in the configuration; the
// token is sent only to a keyserver that proved it holds that anchor's
// certificate chain, and is forgotten once spent. What a keyserver sends is
// checked before it is written: a certificate must be for the node's own
// key, chain to the root the grant names, and say what the grant says; a
// static file must match its digest; an ACME key must be its certificate's,
// of the same version, and the full chain the certificate's issuers.
package keyclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
	"github.com/keysystem/keysystem/keyserver/api"
)

// Files in the state directory.
const (
	CGCFile          = "cgc.pem"       // key, certificate and chain in one file, so they change together
	AnchorFile       = "anchor.crt"    // the keyserver root found by the pin
	AdmissionKeyFile = "admission.key" // the key being admitted, kept until admission succeeds
	RenewalKeyFile   = "renewal.key"   // the key being renewed to, kept until the renewal succeeds
	LockFile         = "lock"          // locked (flock) by the one Client using the directory
	StaticDir        = "static"        // the content last fetched of each static item, by name
)

// ErrStateDirInUse means another keyclient (a daemon, or a `keyclient
// once`) holds the state directory's lock. Two clients on one directory
// would each admit, renew and write the same files.
var ErrStateDirInUse = errors.New("keyclient: state_dir is in use by another keyclient")

type stateDirInUseError struct{ dir string }

func (e *stateDirInUseError) Error() string {
	return "keyclient: another keyclient (run or once) is using state_dir " + e.dir
}

func (e *stateDirInUseError) Unwrap() error { return ErrStateDirInUse }

// ErrNoToken means the node holds no valid CGC and has no token to get one.
var ErrNoToken = errors.New("keyclient: no valid CGC and no admission token: issue one with `keyctl token issue` and put it in the config")

// Clock is the time source; tests drive it by hand.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options are the run-time settings of a Client.
type Options struct {
	Clock  Clock        // default: real time
	Rand   io.Reader    // jitter; default crypto/rand
	Logger *slog.Logger // default slog.Default()

	RequestTimeout time.Duration // per request; default 30s
	MinBackoff     time.Duration // first retry after a failure; default 5s
	MaxBackoff     time.Duration // retries never wait longer; default 10m
}

// Client keeps one node's CGC and items fresh. Once and Run are not to be
// used at the same time. A Client holds its state directory's lock from
// New to Close, so that no other keyclient process uses the directory
// meanwhile.
type Client struct {
	cfg  *Config
	set  *settings
	opts Options
	log  *slog.Logger
	rnd  *mrand.Rand // the CGC's jitter; each item has its own
	lock *os.File    // the state directory's lock, held while open

	mu       sync.Mutex // one CGC pass at a time
	failures int        // consecutive failed CGC passes in Run

	// rotating is held for reading by every request made with the CGC and
	// for writing by a renewal or an admission: the keyserver supersedes
	// the old CGC the moment it issues the new one, so a request with the
	// old one still under way would be refused, and audited as key theft.
	rotating sync.RWMutex

	// The CGC and the anchor are changed only under both mu and stateMu;
	// items read them under stateMu alone, so that they need not wait for
	// a CGC pass, which may spend a while on the network.
	stateMu    sync.Mutex
	anchor     *x509.Certificate
	key        crypto.Signer       // the CGC's key; nil before admission
	certs      []*x509.Certificate // the CGC, then its issuer chain
	renewAt    time.Time           // when the CGC is due, drawn once per certificate
	cgcChanged chan struct{}       // closed (and replaced) when the CGC changes, to wake waiting items

	items  []*item
	remote remote // the keyservers, as the items see them
	status *statusBook
}

// New returns a Client for cfg. It takes the state directory's lock, and
// fails with ErrStateDirInUse when another keyclient holds it; Close
// releases it.
func New(cfg *Config, opts Options) (_ *Client, err error) {
	set, err := cfg.settings()
	if err != nil {
		return nil, &ConfigError{fmt.Errorf("keyclient: %w", err)}
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 30 * time.Second
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Second
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Minute
	}
	var seed [32]byte
	if _, err := io.ReadFull(opts.Rand, seed[:]); err != nil {
		return nil, fmt.Errorf("keyclient: seed jitter: %w", err)
	}
	c := &Client{
		cfg: cfg, set: set, opts: opts, log: opts.Logger,
		rnd:        mrand.New(mrand.NewChaCha8(seed)),
		cgcChanged: make(chan struct{}),
	}
	c.remote = httpRemote{c}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, &ConfigError{fmt.Errorf("keyclient: state_dir: %w", err)}
	}
	if c.lock, err = lockStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := c.loadState(); err != nil {
		return nil, err
	}
	c.initItems()
	return c, nil
}

// lockStateDir takes the state directory's lock, without waiting. The
// lock is the kernel's (flock), so it goes with the process, however it
// ends; the file is opened close-on-exec, so reload commands, and what
// they start, do not inherit it.
func lockStateDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyclient: state_dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &stateDirInUseError{dir}
		}
		return nil, fmt.Errorf("keyclient: state_dir lock: %w", err)
	}
	return f, nil
}

// Close releases the state directory's lock. The Client is not to be
// used afterwards; closing it again does nothing.
func (c *Client) Close() error {
	if c.lock == nil {
		return nil
	}
	err := c.lock.Close()
	c.lock = nil
	return err
}

// Action says what a pass did.
type Action string

// Actions of a pass. The CGC is admitted or renewed; an item is issued
// (first time), renewed (due, or forced), updated (the grant or the
// static file changed at the keyserver), or recreated (its files on disk
// were missing, unreadable or did not match).
const (
	ActionNone      Action = "none"     // valid and not yet due: nothing written
	ActionAdmitted  Action = "admitted" // the token was traded for a first CGC
	ActionRenewed   Action = "renewed"  // replaced by a new certificate, for a new key
	ActionIssued    Action = "issued"
	ActionUpdated   Action = "updated"
	ActionRecreated Action = "recreated"
	ActionFailed    Action = "failed"
)

// ErrItemsFailed is returned by Once when one or more items could not be
// made valid, or their reload command failed; Report.Items says which and
// why.
var ErrItemsFailed = errors.New("keyclient: items failed")

// Report is the outcome of one pass.
type Report struct {
	Action   Action              // the CGC's
	Cert     *x509.Certificate   // the CGC now held; nil when there is none
	Chain    []*x509.Certificate // its issuer chain
	Previous *x509.Certificate   // the CGC it replaced, for ActionRenewed
	RenewAt  time.Time           // when the next renewal is due
	Items    []ItemResult        // one per item, in the order of the config
}

// Once does one pass: it makes sure the node holds a valid CGC (admitting
// the node when it has none or only an expired one, renewing it when due),
// then does the same for every item in turn. force renews the CGC and
// every certificate, and fetches every static file, even if not due. An
// item's failure does not stop the others; the error joins the CGC's
// failure, if any, and ErrItemsFailed when an item failed or its reload
// command did (the reload then stays owed, to the next run or once). The
// report is never nil.
func (c *Client) Once(ctx context.Context, force bool) (*Report, error) {
	rep, err := c.cgcPass(ctx, force)
	c.recordCGC(err, time.Time{})
	if rep == nil {
		rep = c.report(ActionFailed, nil)
	}
	var failed []string
	for _, it := range c.items {
		res := c.itemPass(ctx, it, force, true)
		rep.Items = append(rep.Items, res)
		switch {
		case res.Err != nil:
			failed = append(failed, it.spec.id)
		case res.ReloadErr != nil:
			// With once alone nothing retries it: the files are in place,
			// the reload stays owed to the next run, but this one failed.
			failed = append(failed, it.spec.id+" (reload)")
		}
	}
	if len(failed) > 0 {
		err = errors.Join(err, fmt.Errorf("%w: %s", ErrItemsFailed, strings.Join(failed, ", ")))
	}
	return rep, err
}

// cgcPass makes sure the node holds a valid CGC.
func (c *Client) cgcPass(ctx context.Context, force bool) (*Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Clock.Now()
	switch {
	case c.certs == nil:
		return c.admit(ctx)
	case !now.Before(c.certs[0].NotAfter):
		return c.renewExpired(ctx)
	case c.freshTokenFile():
		// An operator who writes a new token file while the node holds a
		// valid CGC means it (a revoked node coming back, a new identity):
		// a spent one is removed, so one that exists is new.
		rep, err := c.admit(ctx)
		if err == nil {
			return rep, nil
		}
		c.log.Warn("admission with the new token file failed; keeping the CGC held", "err", err)
	}
	if !force && now.Before(c.renewAt) {
		return c.report(ActionNone, nil), nil
	}
	return c.renew(ctx)
}

// Run keeps the CGC and every item fresh until ctx is cancelled. Each item
// runs in its own goroutine, so that one item's failures, backoff or slow
// reload command never delay another; Run returns once all have stopped.
func (c *Client) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, it := range c.items {
		wg.Go(func() { c.runItem(ctx, it) })
	}
	c.runCGC(ctx)
	wg.Wait()
	return nil
}

// runCGC keeps the CGC fresh: a pass now, then one at each renewal time;
// a failed pass is retried with exponential backoff and jitter, up to
// MaxBackoff.
func (c *Client) runCGC(ctx context.Context) {
	for {
		var wait time.Duration
		rep, err := c.cgcPass(ctx, false)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failures++
			wait = honourRetryAfter(err, c.backoff(c.failures), c.rnd)
			c.log.Error("keeping the CGC fresh failed", "err", err, "retry_in", wait.Round(time.Second))
		} else {
			c.failures = 0
			wait = rep.RenewAt.Sub(c.opts.Clock.Now())
			if rep.Action != ActionNone {
				c.log.Info("CGC "+string(rep.Action), "serial", authority.SerialText(rep.Cert), "not_after", rep.Cert.NotAfter, "renew_at", rep.RenewAt)
				// A new CGC already due (its issuer about to expire, or the
				// clock far ahead) must not make the loop spin.
				wait = max(wait, c.opts.MinBackoff)
			}
		}
		wait = max(wait, 0)
		var next time.Time
		if err != nil {
			next = c.opts.Clock.Now().Add(wait)
		}
		c.recordCGC(err, next)
		select {
		case <-ctx.Done():
			return
		case <-c.opts.Clock.After(wait):
		}
	}
}

// backoff is the wait after the n-th consecutive failure of the CGC.
func (c *Client) backoff(n int) time.Duration {
	return backoff(c.opts.MinBackoff, c.opts.MaxBackoff, n, c.rnd)
}

// backoff is the wait after the n-th consecutive failure: lo doubled each
// time up to hi, then "equal jitter" (half fixed, half random), so a fleet
// that failed together does not retry together.
func backoff(lo, hi time.Duration, n int, rnd *mrand.Rand) time.Duration {
	d := doubled(lo, hi, n)
	return d/2 + time.Duration(rnd.Int64N(int64(d/2)+1))
}

// honourRetryAfter makes a backoff no shorter than the Retry-After of a
// keyserver that shed the request, spread over as long again at random,
// so that a fleet it turned away does not come back all at once.
func honourRetryAfter(err error, wait time.Duration, rnd *mrand.Rand) time.Duration {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.RetryAfter <= 0 {
		return wait
	}
	return max(wait, ae.RetryAfter+time.Duration(rnd.Int64N(int64(ae.RetryAfter)+1)))
}

// doubled is lo doubled n-1 times, at most hi.
func doubled(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// RenewTime is when a certificate valid from notBefore to notAfter is due:
// two thirds of the way through its lifetime, moved by up to a twentieth of
// the lifetime either way (u in [0,1) picks where), so that nodes admitted
// together spread their renewals.
func RenewTime(notBefore, notAfter time.Time, u float64) time.Time {
	life := notAfter.Sub(notBefore)
	jitter := time.Duration((u*2 - 1) * float64(life) / 20)
	return notBefore.Add(life*2/3 + jitter)
}

// report describes the CGC held (if any) after a pass that did a; prev is
// the CGC a renewal replaced.
func (c *Client) report(a Action, prev *x509.Certificate) *Report {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.certs == nil {
		return &Report{Action: a}
	}
	return &Report{Action: a, Cert: c.certs[0], Chain: c.certs[1:], Previous: prev, RenewAt: c.renewAt}
}

// renewExpired deals with a CGC that has expired: it asks for a renewal
// first, which the keyserver allows for as long after expiry as its
// policy's cgc.renew_after_expiry says (by default not at all), and when
// that is refused, admits the node with its token if it has one. The
// renewal goes first because a token still in the config is most likely
// the spent one from the installer.
func (c *Client) renewExpired(ctx context.Context) (*Report, error) {
	rep, err := c.renew(ctx)
	var ae *api.Error
	if err == nil || !errors.As(err, &ae) {
		return rep, err // renewed, or the keyserver could not be asked
	}
	rep, aerr := c.admit(ctx)
	if aerr != nil {
		return nil, fmt.Errorf("%w (the keyserver would not renew the expired CGC either: %v)", aerr, err)
	}
	return rep, nil
}

// freshTokenFile reports whether a token file is waiting to be used.
func (c *Client) freshTokenFile() bool {
	if c.cfg.TokenFile == "" {
		return false
	}
	tok, err := c.cfg.token()
	return err == nil && tok != ""
}

func (c *Client) admit(ctx context.Context) (*Report, error) {
	tok, err := c.cfg.token()
	if err != nil {
		return nil, err
	}
	if tok == "" {
		return nil, ErrNoToken
	}
	// A CGC still held (a new token file, or an expired one) is
	// superseded the moment the keyserver admits the node again, as by a
	// renewal: no request may go out with it meanwhile.
	c.rotating.Lock()
	defer c.rotating.Unlock()
	key, err := c.pendingKey(AdmissionKeyFile)
	if err != nil {
		return nil, err
	}
	csr, err := csrPEM(key, nil)
	if err != nil {
		return nil, err
	}
	var resp api.CertificateResponse
	req := api.AdmitRequest{Token: tok, Node: c.cfg.Node, CSR: csr}
	if err := c.call(ctx, http.MethodPost, api.PathAdmit, req, &resp, noCGC); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeTokenInvalid {
			return nil, fmt.Errorf("keyclient: admission refused: the token is unknown, expired, already used, revoked or for another node; issue a new one with `keyctl token issue --node %s`: %w", c.cfg.Node, err)
		}
		return nil, fmt.Errorf("keyclient: admission: %w", err)
	}
	if err := c.install(key, &resp); err != nil {
		return nil, err
	}
	if c.cfg.TokenFile != "" {
		if err := os.Remove(c.cfg.TokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("could not remove the spent token file", "path", c.cfg.TokenFile, "err", err)
		}
	}
	c.cfg.Token = "" // spent: never sent again
	return c.report(ActionAdmitted, nil), nil
}

// renew trades the CGC for a new one, for a new key. The keyserver
// supersedes the old CGC as it issues the new one, so the key asked for
// is written to the state directory first: should the answer be lost, the
// retry asks for the same key, which is the only thing the old CGC may
// still do.
func (c *Client) renew(ctx context.Context) (*Report, error) {
	c.rotating.Lock()
	defer c.rotating.Unlock()
	prev := c.certs[0]
	key, err := c.pendingKey(RenewalKeyFile)
	if err != nil {
		return nil, err
	}
	csr, err := csrPEM(key, nil)
	if err != nil {
		return nil, err
	}
	var resp api.CertificateResponse
	if err := c.call(ctx, http.MethodPost, api.PathRenew, api.RenewRequest{CSR: csr}, &resp, cgcHeld); err != nil {
		return nil, fmt.Errorf("keyclient: renewal: %w", err)
	}
	if err := c.install(key, &resp); err != nil {
		return nil, err
	}
	return c.report(ActionRenewed, prev), nil
}

// pendingKey returns the key to admit or renew with: the one a previous
// attempt left in the state directory under name, or a new one written
// there first. Should the keyserver's answer be lost after it acted, the
// retry then comes with the same key and gets a certificate for it,
// instead of a refusal. install removes both files.
func (c *Client) pendingKey(name string) (crypto.Signer, error) {
	path := filepath.Join(c.cfg.StateDir, name)
	if data, err := os.ReadFile(path); err == nil {
		if s, err := parseSigner(data); err == nil {
			return s, nil
		}
		c.log.Warn("replacing an unreadable key", "file", path)
	}
	key, err := c.newKey()
	if err != nil {
		return nil, err
	}
	pemKey, err := authority.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := keyfile.Write(path, pemKey, 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

func (c *Client) newKey() (crypto.Signer, error) {
	kt, _ := authority.ParseKeyType(c.cfg.KeyType)
	return authority.GenerateKey(kt)
}

// csrPEM is a certificate request that carries key's public half and the
// extra names of tmpl (nil: none), nothing else: the keyserver takes the
// identity and the rest from elsewhere (the CGC, the grant).
func csrPEM(key crypto.Signer, tmpl *x509.CertificateRequest) (string, error) {
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return "", fmt.Errorf("keyclient: certificate request: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// parseSigner reads a PEM private key (the first block, with
// pemutil.WithFirstBlock) that can sign.
func parseSigner(data []byte, opts ...pemutil.Options) (crypto.Signer, error) {
	k, err := pemutil.ParseKey(data, opts...)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

// install checks a CGC the keyserver sent and writes it with its key.
func (c *Client) install(key crypto.Signer, resp *api.CertificateResponse) error {
	certs, err := pemutil.ParseCertificateBundle([]byte(resp.Certificate + resp.Chain))
	if err != nil {
		return fmt.Errorf("keyclient: keyserver sent an unreadable certificate: %w", err)
	}
	leaf := certs[0]
	if keyutil.VerifyPair(leaf.PublicKey, key) != nil {
		return errors.New("keyclient: keyserver sent a certificate for another key")
	}
	if leaf.Subject.CommonName != c.cfg.Node {
		return fmt.Errorf("keyclient: keyserver sent a certificate for %q, not %q", leaf.Subject.CommonName, c.cfg.Node)
	}
	keyPEM, err := authority.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	data := append(keyPEM, authority.EncodePEM(certs...)...)
	if err := keyfile.Write(filepath.Join(c.cfg.StateDir, CGCFile), data, 0o600); err != nil {
		return err
	}
	c.setCGC(key, certs)
	// The keys asked for are spent: a later admission or renewal must
	// not ask for a key that already has a certificate.
	for _, f := range []string{AdmissionKeyFile, RenewalKeyFile} {
		if err := os.Remove(filepath.Join(c.cfg.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("could not remove a spent key", "file", f, "err", err)
		}
	}
	return nil
}

func (c *Client) setCGC(key crypto.Signer, certs []*x509.Certificate) {
	renewAt := RenewTime(certs[0].NotBefore, certs[0].NotAfter, c.rnd.Float64())
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.key, c.certs, c.renewAt = key, certs, renewAt
	close(c.cgcChanged)
	c.cgcChanged = make(chan struct{})
}

// credential is the CGC as a TLS client certificate. Whether it is still
// valid is the keyserver's to judge (a policy may let an expired CGC
// renew itself for a while); items check first, with requireCGC.
func (c *Client) credential() (tls.Certificate, error) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.certs == nil {
		return tls.Certificate{}, ErrNoCGC
	}
	tc := tls.Certificate{PrivateKey: c.key, Leaf: c.certs[0]}
	for _, cert := range c.certs {
		tc.Certificate = append(tc.Certificate, cert.Raw)
	}
	return tc, nil
}

// requireCGC fails with ErrNoCGC unless a CGC valid at now is held: items
// wait for one rather than be refused.
func (c *Client) requireCGC(now time.Time) error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.certs == nil || !now.Before(c.certs[0].NotAfter) {
		return ErrNoCGC
	}
	return nil
}

// cgcSignal is closed when the CGC next changes.
func (c *Client) cgcSignal() <-chan struct{} {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.cgcChanged
}

// loadState reads the anchor and the CGC from the state directory. A CGC
// file that does not parse or whose key does not match is ignored (the node
// re-admits), since no partial write can have produced it.
func (c *Client) loadState() error {
	if data, err := os.ReadFile(filepath.Join(c.cfg.StateDir, AnchorFile)); err == nil {
		cert, err := pemutil.ParseCertificate(data)
		if err != nil || authority.SPKIPin(cert) != c.cfg.TrustAnchor {
			c.log.Warn("ignoring a stored anchor that does not match the pin", "file", AnchorFile)
		} else {
			c.setAnchor(cert)
		}
	}
	data, err := os.ReadFile(filepath.Join(c.cfg.StateDir, CGCFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keyclient: %w", err)
	}
	key, certs, err := parseCGCFile(data)
	if err != nil {
		c.log.Warn("ignoring an unusable CGC file", "err", err)
		return nil
	}
	if certs[0].Subject.CommonName != c.cfg.Node {
		return &ConfigError{fmt.Errorf("keyclient: %s holds a CGC for %q, but this config is for %q", CGCFile, certs[0].Subject.CommonName, c.cfg.Node)}
	}
	c.setCGC(key, certs)
	return nil
}

// parseCGCFile reads the key (the file's first block) and the certificate
// chain of a CGC file, and checks that they belong together.
func parseCGCFile(data []byte) (crypto.Signer, []*x509.Certificate, error) {
	key, err := parseSigner(data, pemutil.WithFirstBlock())
	if err != nil {
		return nil, nil, err
	}
	certs, err := pemutil.ParseCertificateBundle(data)
	if err != nil {
		return nil, nil, err
	}
	if err := keyutil.VerifyPair(certs[0].PublicKey, key); err != nil {
		return nil, nil, fmt.Errorf("key does not match certificate: %w", err)
	}
	return key, certs, nil
}

// State is the CGC the node holds now, for status displays.
func (c *Client) State() (cert *x509.Certificate, renewAt time.Time) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.certs == nil {
		return nil, time.Time{}
	}
	return c.certs[0], c.renewAt
}

func (c *Client) setAnchor(a *x509.Certificate) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	c.anchor = a
}

// trust returns the keyserver's root, discovering it by the pin on first
// contact and keeping it in the state directory. Two callers discovering
// it at once both find the same root and write the same file.
func (c *Client) trust(ctx context.Context) (*x509.Certificate, error) {
	c.stateMu.Lock()
	a := c.anchor
	c.stateMu.Unlock()
	if a != nil {
		return a, nil
	}
	var errs []error
	for _, s := range c.cfg.Servers {
		a, err := discoverAnchor(ctx, s, c.cfg.TrustAnchor, c.opts.Clock.Now())
		if err != nil {
			if errors.Is(err, ErrAnchorMismatch) {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		if err := keyfile.Write(filepath.Join(c.cfg.StateDir, AnchorFile), authority.EncodePEM(a), 0o644); err != nil {
			return nil, err
		}
		c.setAnchor(a)
		return a, nil
	}
	return nil, errors.Join(errs...)
}

// How a request authenticates.
type auth int

const (
	noCGC   auth = iota // none: admission, and the trust anchor
	withCGC             // the node's CGC, never while a renewal replaces it
	cgcHeld             // the CGC, by a renewal holding rotating already
)

// call sends one JSON request to the first keyserver that answers and
// decodes its answer into out.
func (c *Client) call(ctx context.Context, method, path string, in, out any, as auth) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	return c.roundTrip(ctx, method, path, body, nil, as, func(resp *http.Response) error {
		return api.ReadResponse(resp, 1<<20, out)
	})
}

// roundTrip sends one request, with the headers hdr (nil: none) besides
// its content type, to the first keyserver that answers and hands its
// answer to read. An answer from the API (even a refusal) ends the search,
// since keyservers share their state; only a failure to reach one, or a
// 5xx answer, moves on to the next.
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte, hdr http.Header, as auth, read func(*http.Response) error) error {
	anchor, err := c.trust(ctx)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	tlsc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Time: c.opts.Clock.Now}
	if as == withCGC {
		c.rotating.RLock()
		defer c.rotating.RUnlock()
	}
	if as != noCGC {
		cred, err := c.credential()
		if err != nil {
			return err
		}
		tlsc.Certificates = []tls.Certificate{cred}
	}
	// One request per connection, so HTTP/1.1: HTTP/2's connection
	// preface, settings and window updates would cost both ends more
	// than they save. The transport is never used again; close it.
	tr := &http.Transport{TLSClientConfig: tlsc, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Timeout: c.opts.RequestTimeout, Transport: tr}
	var errs []error
	for _, s := range c.cfg.Servers {
		req, err := http.NewRequestWithContext(ctx, method, s+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", api.ContentJSON)
		resp, err := hc.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = read(resp)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status >= 500 {
			errs = append(errs, err)
			continue
		}
		return err
	}
	return errors.Join(errs...)
}
