package acme

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

const (
	accountPrefix = "acme/accounts/"
	labelPrefix   = "acme/certs/"
)

// ErrUnknownLabel is returned for a label the policy does not name, or a
// key type it is not issued in.
var ErrUnknownLabel = errors.New("acme: no such certificate label")

// Config configures a Manager.
type Config struct {
	Store  Store
	Sealer *Sealer
	Policy func() *policy.Policy // the policy in force
	HTTP01 *HTTP01Provider       // answers http-01 challenges
	// Staging is how long after a new certificate's NotBefore it is held
	// back, so that clients whose clocks run behind do not see it as not
	// yet valid.
	Staging time.Duration

	// The renewal schedule; zero means the Default of each (renew.go).
	MaxOrdersPerDay int           // orders per label in any 24 hours, one per key type
	RetryMin        time.Duration // the wait after a first failure, doubling with each one after
	RetryMax        time.Duration // the slow retry the doubling stops at
	ARIInterval     time.Duration // how often the CA's renewal window is asked, unless it says
	LeaseTime       time.Duration // how long a keyserver holds a label's lease while ordering
	CheckInterval   time.Duration // how often Run looks at every label

	// Holder names this keyserver in a label's lease; default random.
	Holder string
	// Transport, if set, wraps the transport to the CA (for tests to
	// watch the requests).
	Transport func(http.RoundTripper) http.RoundTripper

	Now func() time.Time
	Log *slog.Logger

	// dns-01 (dns01.go).
	// DNSZone is the delegated zone the keyserver's own DNS server
	// (zone.Server) answers, for the accounts without a DNS provider;
	// "" when there is none, and their dns-01 labels fail.
	DNSZone string
	// DNSResolvers are the recursive resolvers (host:port) the dns-01
	// pre-check of lego providers asks to follow a challenge name's
	// CNAMEs and to find the authoritative servers of where they lead;
	// default the name servers of /etc/resolv.conf.
	DNSResolvers []string
	// DNSAuthPort is the port the pre-check asks authoritative servers
	// on; default 53 (tests' servers cannot have it).
	DNSAuthPort int
}

// Manager obtains and keeps the policy's ACME certificates.
type Manager struct {
	cfg    Config
	holder string // names this keyserver in a label's lease
	// mu: one order at a time per keyserver, since the CA's limits are
	// per account; keyservers sharing a store take a lease per label.
	mu   sync.Mutex
	wake chan struct{} // a forced renewal: check now
	// placeholderMu: placeholder keys are made by one caller at a time,
	// so a burst of front ends asking at boot makes one set, not many.
	placeholderMu sync.Mutex
}

// NewManager returns a Manager.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.Store == nil || cfg.Sealer == nil || cfg.Policy == nil || cfg.HTTP01 == nil {
		return nil, errors.New("acme: Store, Sealer, Policy and HTTP01 are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	setDefault(&cfg.MaxOrdersPerDay, DefaultMaxOrdersPerDay)
	setDefault(&cfg.RetryMin, DefaultRetryMin)
	setDefault(&cfg.RetryMax, DefaultRetryMax)
	setDefault(&cfg.ARIInterval, DefaultARIInterval)
	setDefault(&cfg.LeaseTime, DefaultLeaseTime)
	setDefault(&cfg.CheckInterval, DefaultCheckInterval)
	if cfg.Holder == "" {
		cfg.Holder = rand.Text()[:12]
	}
	if len(cfg.DNSResolvers) == 0 {
		cfg.DNSResolvers = systemResolvers()
	}
	cfg.DNSResolvers = withDNSPort(cfg.DNSResolvers)
	setDefault(&cfg.DNSAuthPort, 53)
	// Process-wide, and why: see disableLegoCNAMEs.
	disableLegoCNAMEs()
	return &Manager{cfg: cfg, holder: cfg.Holder, wake: make(chan struct{}, 1)}, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Version is one issue of a label's certificates, one per key type, all
// for the same names.
type Version struct {
	Number     int                  `json:"number"`
	CommonName string               `json:"cn"`
	Names      []string             `json:"names"`
	NotBefore  time.Time            `json:"not_before"` // the latest of its certificates'
	NotAfter   time.Time            `json:"not_after"`  // the earliest of its certificates'
	ReadyAt    time.Time            `json:"ready_at"`   // NotBefore + staging: served from then on
	Certs      map[string]*CertFile `json:"certs"`      // by key type (policy.ACMEKeyTypes)
}

// CertFile is one certificate of a version and its key, sealed.
type CertFile struct {
	Fullchain []byte `json:"fullchain"` // PEM: the certificate, then its chain
	Key       []byte `json:"key"`       // the private key's PEM, sealed (Sealer) at keyWhere
	ARICertID string `json:"ari_cert_id,omitempty"`
}

// keyWhere is where a version's key is sealed for: its label, version and
// key type, so a sealed key moved to another place does not open.
func keyWhere(label string, version int, keyType string) string {
	return fmt.Sprintf("%s%s/%d/%s", labelPrefix, label, version, keyType)
}

// labelState is a label's record in the store.
type labelState struct {
	Current *Version `json:"current,omitempty"` // served
	Next    *Version `json:"next,omitempty"`    // obtained, held back until ReadyAt
	// Placeholder is served while Current lacks a key type (before the
	// first issue): self-signed, short-lived, version 0, so front ends
	// can start their TLS listener at boot.
	Placeholder *Version `json:"placeholder,omitempty"`
	Status      status   `json:"status"`
}

func decodeState(label string, raw []byte) (labelState, error) {
	var st labelState
	if raw == nil {
		return st, nil
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("acme: %s: %w", label, err)
	}
	return st, nil
}

// updateState is store.Update on a label's record: fn changes the state
// it is given and says whether to write it.
func (m *Manager) updateState(ctx context.Context, label string, fn func(*labelState) (bool, error)) (labelState, error) {
	var st labelState
	err := store.Update(ctx, m.cfg.Store, labelPrefix+label, func(raw []byte) ([]byte, error) {
		var err error
		if st, err = decodeState(label, raw); err != nil {
			return nil, err
		}
		if write, err := fn(&st); err != nil || !write {
			return nil, err
		}
		return json.Marshal(st)
	})
	return st, err
}

type accountRecord struct {
	Directory    string                 `json:"directory"`
	Key          []byte                 `json:"key"` // the account key's PEM, sealed
	Registration *registration.Resource `json:"registration"`
}

// legoUser is an account as lego sees it.
type legoUser struct {
	email string
	key   crypto.Signer
	reg   *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return u.email }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// client returns a lego client for the account, registering it at the CA
// the first time (or when its directory changed), keeping its key sealed
// in the store so every keyserver uses the one account. Of keyservers
// registering at once, the first to store its account wins and the others
// use that one.
func (m *Manager) client(ctx context.Context, acct *policy.ACMEAccount, staging bool) (*lego.Client, error) {
	key, directory := accountPrefix+acct.Name, acct.Directory
	if staging {
		// An account of its own at the staging CA.
		key, directory = key+"@staging", acct.StagingDirectory
	}
	u := &legoUser{email: acct.Email}
	raw, err := m.cfg.Store.Get(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if u.key, err = authority.GenerateKey(authority.ECDSAP256); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	default:
		var rec accountRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil, fmt.Errorf("acme: account %s: %w", acct.Name, err)
		}
		pemKey, err := m.cfg.Sealer.Open(rec.Key, key)
		if err != nil {
			return nil, fmt.Errorf("acme: account %s: %w", acct.Name, err)
		}
		k, err := pemutil.ParseKey(pemKey)
		signer, ok := k.(crypto.Signer)
		if err != nil || !ok {
			return nil, fmt.Errorf("acme: account %s: its key: %v", acct.Name, err)
		}
		u.key = signer
		if rec.Directory == directory {
			u.reg = rec.Registration
		}
	}

	cfg := lego.NewConfig(u)
	cfg.CADirURL = directory
	cfg.UserAgent = "keysystem"
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(acct.Roots) > 0 {
		tlsCfg.RootCAs = x509.NewCertPool()
		for _, c := range acct.Roots {
			tlsCfg.RootCAs.AddCert(c)
		}
	}
	var rt http.RoundTripper = &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}
	if m.cfg.Transport != nil {
		rt = m.cfg.Transport(rt)
	}
	// lego takes no context: its requests get ours through the transport,
	// so a keyserver shutting down ends an order in progress.
	cfg.HTTPClient = &http.Client{Timeout: time.Minute, Transport: ctxTransport{ctx: ctx, next: rt}}
	c, err := lego.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("acme: account %s: directory %s: %w", acct.Name, directory, err)
	}
	if err := c.Challenge.SetHTTP01Provider(m.cfg.HTTP01); err != nil {
		return nil, err
	}
	if u.reg != nil {
		return c, nil
	}
	if acct.EAB != nil {
		u.reg, err = c.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
			TermsOfServiceAgreed: true, Kid: acct.EAB.KeyID, HmacEncoded: base64.RawURLEncoding.EncodeToString(acct.EAB.HMAC),
		})
	} else {
		u.reg, err = c.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
	}
	if err != nil {
		return nil, fmt.Errorf("acme: account %s: register at %s: %w", acct.Name, directory, err)
	}
	pemKey, err := authority.EncodeKeyPEM(u.key)
	if err != nil {
		return nil, err
	}
	sealed, err := m.cfg.Sealer.Seal(pemKey, key)
	if err != nil {
		return nil, err
	}
	next, err := json.Marshal(accountRecord{Directory: directory, Key: sealed, Registration: u.reg})
	if err != nil {
		return nil, err
	}
	cond := store.Cond{Key: key, Absent: true}
	if raw != nil {
		cond = store.Cond{Key: key, Value: raw}
	}
	err = m.cfg.Store.Txn(ctx, []store.Cond{cond}, []store.Op{{Key: key, Value: next}})
	if errors.Is(err, store.ErrConflict) {
		m.cfg.Log.Warn("acme account registered by another keyserver meanwhile; using that one", "account", acct.Name, "unused", u.reg.URI)
		return m.client(ctx, acct, staging)
	} else if err != nil {
		return nil, fmt.Errorf("acme: account %s: keep it: %w", acct.Name, err)
	}
	m.cfg.Log.Info("acme account registered", "account", acct.Name, "directory", directory, "uri", u.reg.URI)
	return c, nil
}

// issued is one certificate just obtained, its key not yet sealed.
type issued struct {
	fullchain []byte
	key       []byte // PEM
	leaf      *x509.Certificate
}

// order obtains the label's certificates from its account's CA (or
// staging CA), one order per key type, replacing (RFC 9773) the
// certificates named in replaces. It reports how many orders it placed
// (or tried to: the daily cap counts them), which is none when the CA
// could not even be reached. Nothing is kept here: see newVersion.
func (m *Manager) order(ctx context.Context, lc *policy.ACMECert, staging bool, keyTypes []string, replaces map[string]string) (got map[string]issued, placed int, err error) {
	ctx, cancel := context.WithCancel(ctx) // see ctxTransport, and the dns-01 pre-check
	defer cancel()
	acct := m.cfg.Policy().ACMEAccount(lc.Account)
	// The dns-01 provider is made first, so that a label that cannot be
	// answered fails before the CA is asked anything.
	answer := func(*lego.Client) error { return nil } // http-01: client sets it up
	switch lc.Challenge {
	case policy.ChallengeHTTP01:
	case policy.ChallengeDNS01:
		if answer, err = m.dns01(ctx, lc, acct); err != nil {
			return nil, placed, err
		}
	default:
		return nil, placed, fmt.Errorf("acme: %s: %s is not supported", lc.Label, lc.Challenge)
	}
	client, err := m.client(ctx, acct, staging)
	if err != nil {
		return nil, placed, err
	}
	if err := answer(client); err != nil {
		return nil, placed, err
	}
	// lego takes the first name as the common name.
	names := slices.Clone(lc.Names)
	if i := slices.Index(names, lc.CommonName); i > 0 {
		names[0], names[i] = names[i], names[0]
	}
	got = map[string]issued{}
	for _, kt := range keyTypes {
		key, err := authority.GenerateKey(authority.KeyType(kt))
		if err != nil {
			return nil, placed, err
		}
		placed++
		res, err := client.Certificate.Obtain(certificate.ObtainRequest{
			Domains: names, PrivateKey: key, Bundle: true, ReplacesCertID: replaces[kt],
		})
		if err != nil {
			return nil, placed, fmt.Errorf("acme: %s (%s): %w", lc.Label, kt, err)
		}
		chain, err := pemutil.ParseCertificateBundle(res.Certificate)
		if err != nil {
			return nil, placed, fmt.Errorf("acme: %s (%s): the CA's certificate: %w", lc.Label, kt, err)
		}
		pemKey, err := authority.EncodeKeyPEM(key)
		if err != nil {
			return nil, placed, err
		}
		got[kt] = issued{fullchain: res.Certificate, key: pemKey, leaf: chain[0]}
	}
	return got, placed, nil
}

// newVersion seals what was obtained into the next version after st's,
// served once all of it is ready and its staging time has passed.
func (m *Manager) newVersion(lc *policy.ACMECert, st *labelState, got map[string]issued) (*Version, error) {
	v := &Version{Number: 1, CommonName: lc.CommonName, Names: slices.Clone(lc.Names), Certs: map[string]*CertFile{}}
	for _, prev := range []*Version{st.Current, st.Next} {
		if prev != nil && prev.Number >= v.Number {
			v.Number = prev.Number + 1
		}
	}
	for kt, is := range got {
		sealed, err := m.cfg.Sealer.Seal(is.key, keyWhere(lc.Label, v.Number, kt))
		if err != nil {
			return nil, err
		}
		ari, err := certificate.MakeARICertID(is.leaf)
		if err != nil {
			return nil, err
		}
		v.Certs[kt] = &CertFile{Fullchain: is.fullchain, Key: sealed, ARICertID: ari}
		if is.leaf.NotBefore.After(v.NotBefore) {
			v.NotBefore = is.leaf.NotBefore
		}
		if v.NotAfter.IsZero() || is.leaf.NotAfter.Before(v.NotAfter) {
			v.NotAfter = is.leaf.NotAfter
		}
	}
	v.ReadyAt = v.NotBefore.Add(m.cfg.Staging)
	return v, nil
}

// promote makes the next version current once its time has come.
func (m *Manager) promote(st *labelState) bool {
	if st.Next == nil || m.cfg.Now().Before(st.Next.ReadyAt) {
		return false
	}
	st.Current, st.Next, st.Placeholder = st.Next, nil, nil
	return true
}

// Served is what a label serves for one key type.
type Served struct {
	Version     int    // 0 for the placeholder
	Placeholder bool   // self-signed, until the CA's certificate is ready
	Fullchain   []byte // PEM
	Key         []byte // PEM
}

// String leaves the key out, so a Served printed or logged shows none.
func (s *Served) String() string {
	return fmt.Sprintf("acme.Served{Version: %d, Placeholder: %v, Fullchain: %d bytes, Key: [redacted]}", s.Version, s.Placeholder, len(s.Fullchain))
}

// Get returns what the label serves for a key type: the current version,
// after promoting the next one if its time has come, or the placeholder
// while the current version lacks that key type.
func (m *Manager) Get(ctx context.Context, label, keyType string) (*Served, error) {
	lc := m.cfg.Policy().ACMECert(label)
	if lc == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	if !slices.Contains(lc.KeyTypes, keyType) {
		return nil, fmt.Errorf("%w: %q is not issued in %s", ErrUnknownLabel, label, keyType)
	}
	st, err := m.updateState(ctx, label, func(st *labelState) (bool, error) {
		return m.promote(st), nil
	})
	if err != nil {
		return nil, err
	}
	v := st.Current
	if v == nil || v.Certs[keyType] == nil {
		if v, err = m.placeholder(ctx, lc, st); err != nil {
			return nil, err
		}
	}
	cf := v.Certs[keyType]
	key, err := m.cfg.Sealer.Open(cf.Key, keyWhere(label, v.Number, keyType))
	if err != nil {
		return nil, err
	}
	return &Served{Version: v.Number, Placeholder: v.Number == 0, Fullchain: cf.Fullchain, Key: key}, nil
}
