package acme

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"

	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

const (
	accountPrefix = "acme/accounts/"
	labelPrefix   = "acme/certs/"
)

// ErrUnknownLabel is returned for a label the policy does not name.
var ErrUnknownLabel = errors.New("acme: no such certificate label")

// ErrNotReady is returned for a label that has no certificate to serve yet.
var ErrNotReady = errors.New("acme: no certificate for the label yet")

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
	Now     func() time.Time
	Log     *slog.Logger
}

// Manager obtains and keeps the policy's ACME certificates.
type Manager struct {
	cfg Config
	mu  sync.Mutex // one order at a time per keyserver: the CA's limits are per account
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
	return &Manager{cfg: cfg}, nil
}

// Version is one issue of a label's certificates, one per key type, all
// for the same names.
type Version struct {
	Number    int                  `json:"number"`
	Names     []string             `json:"names"`
	NotBefore time.Time            `json:"not_before"` // the latest of its certificates'
	NotAfter  time.Time            `json:"not_after"`  // the earliest of its certificates'
	ReadyAt   time.Time            `json:"ready_at"`   // NotBefore + staging: served from then on
	Certs     map[string]*CertFile `json:"certs"`      // by key type (policy.ACMEKeyTypes)
}

// CertFile is one certificate of a version and its key, sealed.
type CertFile struct {
	Fullchain []byte `json:"fullchain"` // PEM: the certificate, then its chain
	Key       []byte `json:"key"`       // the private key's PEM, sealed (Sealer) at the record's key
	ARICertID string `json:"ari_cert_id"`
}

// labelState is a label's record in the store.
type labelState struct {
	Current *Version `json:"current,omitempty"` // served
	Next    *Version `json:"next,omitempty"`    // obtained, held back until ReadyAt
	// Placeholder is served while there is no Current: self-signed,
	// short-lived, version 0, so front ends can start their TLS listener
	// at boot before the first real certificate exists.
	Placeholder *Version `json:"placeholder,omitempty"`
}

type accountRecord struct {
	Directory    string                 `json:"directory"`
	Key          []byte                 `json:"key"` // the account key's PEM, sealed
	Registration *registration.Resource `json:"registration"`
}

// legoUser is an account as lego sees it.
type legoUser struct {
	email string
	key   crypto.PrivateKey
	reg   *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return u.email }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// client returns a lego client for the account, registering it at the CA
// the first time (or when its directory changed), keeping its key sealed
// in the store so every keyserver uses the one account.
func (m *Manager) client(ctx context.Context, acct *policy.ACMEAccount) (*lego.Client, error) {
	key := accountPrefix + acct.Name
	var rec accountRecord
	raw, err := m.cfg.Store.Get(ctx, key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	u := &legoUser{email: acct.Email}
	if err == nil {
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil, fmt.Errorf("acme: account %s: %w", acct.Name, err)
		}
		pemKey, err := m.cfg.Sealer.Open(rec.Key, key)
		if err != nil {
			return nil, fmt.Errorf("acme: account %s: %w", acct.Name, err)
		}
		if u.key, err = certcrypto.ParsePEMPrivateKey(pemKey); err != nil {
			return nil, fmt.Errorf("acme: account %s: %w", acct.Name, err)
		}
		if rec.Directory == acct.Directory {
			u.reg = rec.Registration
		}
	} else if u.key, err = certcrypto.GeneratePrivateKey(certcrypto.EC256); err != nil {
		return nil, err
	}

	cfg := lego.NewConfig(u)
	cfg.CADirURL = acct.Directory
	cfg.UserAgent = "keysystem"
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(acct.Roots) > 0 {
		tlsCfg.RootCAs = x509.NewCertPool()
		for _, c := range acct.Roots {
			tlsCfg.RootCAs.AddCert(c)
		}
	}
	cfg.HTTPClient = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}
	c, err := lego.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("acme: account %s: directory %s: %w", acct.Name, acct.Directory, err)
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
		return nil, fmt.Errorf("acme: account %s: register at %s: %w", acct.Name, acct.Directory, err)
	}
	sealed, err := m.cfg.Sealer.Seal(certcrypto.PEMEncode(u.key), key)
	if err != nil {
		return nil, err
	}
	next, err := json.Marshal(accountRecord{Directory: acct.Directory, Key: sealed, Registration: u.reg})
	if err != nil {
		return nil, err
	}
	cond := store.Cond{Key: key, Absent: true}
	if raw != nil {
		cond = store.Cond{Key: key, Value: raw}
	}
	if err := m.cfg.Store.Txn(ctx, []store.Cond{cond}, []store.Op{{Key: key, Value: next}}); err != nil {
		return nil, fmt.Errorf("acme: account %s: keep it: %w", acct.Name, err)
	}
	m.cfg.Log.Info("acme account registered", "account", acct.Name, "directory", acct.Directory, "uri", u.reg.URI)
	return c, nil
}

// legoKeyTypes maps the policy's key types to lego's.
var legoKeyTypes = map[string]certcrypto.KeyType{
	"ecdsa-p256": certcrypto.EC256,
	"ecdsa-p384": certcrypto.EC384,
	"rsa-2048":   certcrypto.RSA2048,
	"rsa-3072":   certcrypto.RSA3072,
	"rsa-4096":   certcrypto.RSA4096,
}

// Obtain gets a new version of the label's certificates, every key type,
// and keeps it as the next version: it is served once all of it is ready
// and its staging time has passed. Nothing is kept unless every key type
// was obtained, so front ends never hold a mixed set.
func (m *Manager) Obtain(ctx context.Context, label string) (*Version, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.cfg.Policy()
	lc := p.ACMECert(label)
	if lc == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	acct := p.ACMEAccount(lc.Account)
	client, err := m.client(ctx, acct)
	if err != nil {
		return nil, err
	}
	st, raw, err := m.state(ctx, label)
	if err != nil {
		return nil, err
	}
	v := &Version{Number: 1, Names: slices.Clone(lc.Names), Certs: map[string]*CertFile{}}
	for _, prev := range []*Version{st.Current, st.Next} {
		if prev != nil && prev.Number >= v.Number {
			v.Number = prev.Number + 1
		}
	}
	where := labelPrefix + label
	for _, kt := range lc.KeyTypes {
		key, err := certcrypto.GeneratePrivateKey(legoKeyTypes[kt])
		if err != nil {
			return nil, err
		}
		names := slices.Clone(lc.Names)
		// lego takes the first name as the common name.
		if i := slices.Index(names, lc.CommonName); i > 0 {
			names[0], names[i] = names[i], names[0]
		}
		res, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: names, PrivateKey: key, Bundle: true})
		if err != nil {
			return nil, fmt.Errorf("acme: %s (%s): %w", label, kt, err)
		}
		chain, err := certcrypto.ParsePEMBundle(res.Certificate)
		if err != nil || len(chain) == 0 {
			return nil, fmt.Errorf("acme: %s (%s): the CA's certificate: %v", label, kt, err)
		}
		leaf := chain[0]
		ari, err := certificate.MakeARICertID(leaf)
		if err != nil {
			return nil, err
		}
		sealed, err := m.cfg.Sealer.Seal(certcrypto.PEMEncode(key), fmt.Sprintf("%s/%d/%s", where, v.Number, kt))
		if err != nil {
			return nil, err
		}
		v.Certs[kt] = &CertFile{Fullchain: res.Certificate, Key: sealed, ARICertID: ari}
		if leaf.NotBefore.After(v.NotBefore) {
			v.NotBefore = leaf.NotBefore
		}
		if v.NotAfter.IsZero() || leaf.NotAfter.Before(v.NotAfter) {
			v.NotAfter = leaf.NotAfter
		}
	}
	v.ReadyAt = v.NotBefore.Add(m.cfg.Staging)
	st.Next = v
	if err := m.put(ctx, label, raw, st); err != nil {
		return nil, err
	}
	m.cfg.Log.Info("acme certificate obtained", "label", label, "version", v.Number, "names", strings.Join(v.Names, ","), "not_after", v.NotAfter, "ready_at", v.ReadyAt)
	return v, nil
}

func (m *Manager) state(ctx context.Context, label string) (labelState, []byte, error) {
	var st labelState
	raw, err := m.cfg.Store.Get(ctx, labelPrefix+label)
	if errors.Is(err, store.ErrNotFound) {
		return st, nil, nil
	} else if err != nil {
		return st, nil, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, nil, fmt.Errorf("acme: %s: %w", label, err)
	}
	return st, raw, nil
}

func (m *Manager) put(ctx context.Context, label string, old []byte, st labelState) error {
	next, err := json.Marshal(st)
	if err != nil {
		return err
	}
	cond := store.Cond{Key: labelPrefix + label, Absent: true}
	if old != nil {
		cond = store.Cond{Key: labelPrefix + label, Value: old}
	}
	if err := m.cfg.Store.Txn(ctx, []store.Cond{cond}, []store.Op{{Key: labelPrefix + label, Value: next}}); err != nil {
		return fmt.Errorf("acme: %s: keep it: %w", label, err)
	}
	return nil
}

// Served is what a label serves for one key type.
type Served struct {
	Version     int    // 0 for the placeholder
	Placeholder bool   // self-signed, until the CA's certificate is ready
	Fullchain   []byte // PEM
	Key         []byte // PEM
}

// Get returns what the label serves for a key type: the current version,
// after promoting the next one if its time has come.
func (m *Manager) Get(ctx context.Context, label, keyType string) (*Served, error) {
	if m.cfg.Policy().ACMECert(label) == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownLabel, label)
	}
	st, raw, err := m.state(ctx, label)
	if err != nil {
		return nil, err
	}
	if st.Next != nil && !m.cfg.Now().Before(st.Next.ReadyAt) {
		st.Current, st.Next, st.Placeholder = st.Next, nil, nil
		if err := m.put(ctx, label, raw, st); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
	}
	v := st.Current
	if v == nil {
		if v, err = m.placeholder(ctx, label); err != nil {
			return nil, err
		}
	}
	cf := v.Certs[keyType]
	if cf == nil {
		return nil, fmt.Errorf("%w: %q has no %s certificate", ErrNotReady, label, keyType)
	}
	key, err := m.cfg.Sealer.Open(cf.Key, fmt.Sprintf("%s%s/%d/%s", labelPrefix, label, v.Number, keyType))
	if err != nil {
		return nil, err
	}
	return &Served{Version: v.Number, Placeholder: v.Number == 0, Fullchain: cf.Fullchain, Key: key}, nil
}
