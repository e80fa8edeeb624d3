// Package admission turns evidence into node identity: a one-time token
// into a certificate-granting certificate (CGC), and a current CGC into its
// successor. It also keeps the node inventory and the rules that go with it:
// one current CGC serial per node (the one it replaced good only to repeat
// that renewal), revoked nodes refused at once, tokens that die with their
// node.
//
// The identity in a CGC comes only from the token the keyserver issued, never
// from anything the node sends; the node's CSR contributes its public key and
// nothing else. Admission does not speak HTTP and does not audit: it returns
// typed errors, and the keyserver decides what a client is told.
package admission

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/tokens"
)

// Store is what admission needs of the keyserver's storage.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	ListPage(ctx context.Context, prefix, after string, limit int) ([]store.KV, error)
	Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error
}

// Errors a caller must tell apart. Token problems are the tokens package's
// errors (tokens.ErrExpired and so on), wrapped.
var (
	ErrInvalid        = errors.New("admission: invalid request")
	ErrCSRInvalid     = errors.New("admission: invalid certificate request")
	ErrKeyRejected    = errors.New("admission: key rejected")
	ErrCertInvalid    = errors.New("admission: certificate not issued by the key-granting authority")
	ErrCertExpired    = errors.New("admission: certificate expired or not yet valid")
	ErrCertSuperseded = errors.New("admission: certificate superseded by a newer one")
	ErrNodeRevoked    = errors.New("admission: node revoked")
	ErrNotFound       = errors.New("admission: not found")
)

// NodeURIScheme is the scheme of the URI SAN that names a node in its CGC:
// keysystem://node/<name>.
const NodeURIScheme = "keysystem"

// Defaults for Config.
const (
	DefaultCGCLifetime = 30 * 24 * time.Hour
	DefaultGrace       = 10 * time.Minute
	DefaultTokenTTL    = time.Hour
	DefaultMaxTokenTTL = 7 * 24 * time.Hour
	MaxCGCLifetime     = 366 * 24 * time.Hour
)

// Config wires a Service.
type Config struct {
	Store       Store
	KeyGranting *authority.Authority // signs CGCs

	CGCLifetime time.Duration // default DefaultCGCLifetime; SetCGCLimits changes it at run time
	// RenewAfterExpiry is how long after its CGC expired a node may still
	// renew it (only renew: nothing else accepts an expired CGC). 0, the
	// default, means an expired CGC is useless and the node needs a token.
	RenewAfterExpiry time.Duration
	Grace            time.Duration // crash-safe retry window after a token is redeemed; default DefaultGrace
	TokenTTL         time.Duration // default lifetime of a new token; default DefaultTokenTTL
	MaxTokenTTL      time.Duration // longest lifetime a token may be given; default DefaultMaxTokenTTL

	Now  func() time.Time // default time.Now
	Rand io.Reader        // token secrets; default crypto/rand
}

// Service implements admission over a Store.
type Service struct {
	cfg    Config
	limits atomic.Pointer[CGCLimits]
}

// verify checks a CGC against the key-granting authority as of now.
// issued is the SHA-256 (hex) of the CGC the node's record says it was
// last given: when the presented one is exactly that certificate, the
// keyserver wrote those bytes itself, so only their validity period needs
// checking, which spares an ECDSA verification on every request a node
// makes. Anything else is verified in full, and so is everything when the
// key-granting authority is no longer the one that issued the CGC (an
// authority replaced after a compromise must not keep its CGCs alive).
func (s *Service) verify(leaf *x509.Certificate, issued string) error {
	ka := s.cfg.KeyGranting.Issuer()
	if issued == "" || issued != certHash(leaf) || len(ka.SubjectKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, ka.SubjectKeyId) {
		return s.cfg.KeyGranting.Verify(leaf, x509.ExtKeyUsageClientAuth)
	}
	now := s.cfg.Now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired,
			Detail: fmt.Sprintf("current time %s is outside %s to %s", now.Format(time.RFC3339), leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))}
	}
	return nil
}

// certHash names a certificate in a node record.
func certHash(c *x509.Certificate) string {
	h := sha256.Sum256(c.Raw)
	return hex.EncodeToString(h[:])
}

// CGCLimits are the CGC settings a policy reload may change.
type CGCLimits struct {
	Lifetime         time.Duration
	RenewAfterExpiry time.Duration
}

func (l CGCLimits) check() error {
	if l.Lifetime < time.Minute || l.Lifetime > MaxCGCLifetime || l.RenewAfterExpiry < 0 || l.RenewAfterExpiry > l.Lifetime {
		return fmt.Errorf("admission: bad CGC limits (lifetime %v, renewal after expiry %v)", l.Lifetime, l.RenewAfterExpiry)
	}
	return nil
}

// SetCGCLimits changes the lifetime of the CGCs issued from now on and
// how long after expiry one may still be renewed.
func (s *Service) SetCGCLimits(l CGCLimits) error {
	if err := l.check(); err != nil {
		return err
	}
	s.limits.Store(&l)
	return nil
}

// CGCLimits are the CGC settings in force.
func (s *Service) CGCLimits() CGCLimits { return *s.limits.Load() }

// New checks cfg, fills its defaults and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.KeyGranting == nil {
		return nil, errors.New("admission: a store and a key-granting authority are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.CGCLifetime, DefaultCGCLifetime)
	def(&cfg.Grace, DefaultGrace)
	def(&cfg.TokenTTL, DefaultTokenTTL)
	def(&cfg.MaxTokenTTL, DefaultMaxTokenTTL)
	if cfg.Grace < 0 || cfg.TokenTTL < 0 || cfg.TokenTTL > cfg.MaxTokenTTL {
		return nil, fmt.Errorf("admission: bad lifetimes (grace %v, token %v, max token %v)", cfg.Grace, cfg.TokenTTL, cfg.MaxTokenTTL)
	}
	limits := CGCLimits{Lifetime: cfg.CGCLifetime, RenewAfterExpiry: cfg.RenewAfterExpiry}
	if err := limits.check(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	s := &Service{cfg: cfg}
	s.limits.Store(&limits)
	return s, nil
}

// Node is what the keyserver keeps about an admitted node.
type Node struct {
	Name       string    `json:"name"`
	IPs        []string  `json:"ips,omitempty"`
	Groups     []string  `json:"groups,omitempty"` // given by the token that admitted it
	TokenID    string    `json:"token_id"`
	AdmittedAt time.Time `json:"admitted_at"`
	Serial     string    `json:"serial"` // the current CGC
	NotAfter   time.Time `json:"not_after"`
	// Key is the SHA-256 of the current CGC's public key (hex), the key a
	// repeated renewal from Previous must ask for again.
	Key string `json:"key,omitempty"`
	// Cert is the SHA-256 of the current CGC (hex): the very certificate
	// the keyserver issued, which needs no signature check when presented.
	Cert string `json:"cert,omitempty"`
	// Previous is the CGC the current one replaced. It is good for one
	// thing only: repeating that renewal, for the same key, when the
	// answer was lost.
	Previous  string    `json:"previous,omitempty"`
	Renewals  int       `json:"renewals"`
	RenewedAt time.Time `json:"renewed_at,omitzero"`
	Revoked   bool      `json:"revoked,omitempty"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// Issued is a CGC handed to a node.
type Issued struct {
	Node   string
	Cert   *x509.Certificate
	Chain  []*x509.Certificate
	Replay bool // the same certificate again, for a retry after a lost answer
}

const (
	tokenPrefix = "tokens/"
	nodePrefix  = "nodes/"
	// prunePrefix indexes the token records by the moment they become
	// prunable ("prune/<time>/<id>", empty values), so that pruning reads
	// only the dead records, not all of them: with a fleet's worth of
	// tokens in their retry window, reading every record every round
	// would cost CPU and keep the whole token table in memory.
	prunePrefix = "prune/"
	// pruneIndexed marks a store whose every token record has its
	// prune/ entry (stores written before the index get theirs from one
	// full pass).
	pruneIndexed = "meta/prune-indexed"
	pruneTime    = "20060102T150405.000000000Z" // fixed width, so keys sort by time
)

// pruneKey is the prune/ index entry of rec, and false if rec is never
// prunable.
func (s *Service) pruneKey(rec tokens.Record) (string, bool) {
	at, ok := rec.PrunableAt(s.cfg.Grace)
	if !ok {
		return "", false
	}
	return prunePrefix + at.UTC().Format(pruneTime) + "/" + rec.ID, true
}

// TokenSpec says what token to issue.
type TokenSpec struct {
	Node    string
	TTL     time.Duration // 0: the configured default
	IPs     []string      // source addresses the token may be redeemed from
	Groups  []string      // policy groups the node joins; the caller checks they exist
	Creator string
}

// IssueToken mints a token for spec.Node and stores its record. The token's
// secret is in the returned Token only; the store keeps its hash.
func (s *Service) IssueToken(ctx context.Context, spec TokenSpec) (tokens.Token, tokens.Record, error) {
	if err := tokens.ValidNodeName(spec.Node); err != nil {
		return tokens.Token{}, tokens.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	ttl := spec.TTL
	if ttl == 0 {
		ttl = s.cfg.TokenTTL
	}
	if ttl < 0 || ttl > s.cfg.MaxTokenTTL {
		return tokens.Token{}, tokens.Record{}, fmt.Errorf("%w: token lifetime %v is outside (0, %v]", ErrInvalid, ttl, s.cfg.MaxTokenTTL)
	}
	ips := make([]string, 0, len(spec.IPs))
	for _, ip := range spec.IPs {
		a, err := netip.ParseAddr(strings.TrimSpace(ip))
		if err != nil {
			return tokens.Token{}, tokens.Record{}, fmt.Errorf("%w: address %q: %w", ErrInvalid, ip, err)
		}
		ips = append(ips, a.Unmap().String())
	}
	tok, err := tokens.New(s.cfg.Rand)
	if err != nil {
		return tokens.Token{}, tokens.Record{}, fmt.Errorf("admission: %w", err)
	}
	now := s.cfg.Now()
	rec := tokens.Record{
		ID:      tok.ID,
		Hash:    tok.Hash(),
		Node:    spec.Node,
		IPs:     ips,
		Groups:  spec.Groups,
		Creator: spec.Creator,
		Created: now,
		Expires: now.Add(ttl),
		State:   tokens.StatePending,
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return tokens.Token{}, tokens.Record{}, fmt.Errorf("admission: %w", err)
	}
	// The prune entry says when the token expires; if it is redeemed
	// late, Prune finds it still in its retry window and moves the entry.
	entry, _ := s.pruneKey(rec)
	err = s.cfg.Store.Txn(ctx, []store.Cond{{Key: tokenPrefix + tok.ID, Absent: true}},
		[]store.Op{{Key: tokenPrefix + tok.ID, Value: raw}, {Key: entry, Value: []byte{}}})
	if err != nil {
		return tokens.Token{}, tokens.Record{}, fmt.Errorf("admission: store token: %w", err)
	}
	return tok, rec.Redacted(), nil
}

// ListTokens returns every stored token record, without secrets' hashes.
func (s *Service) ListTokens(ctx context.Context) ([]tokens.Record, error) {
	var out []tokens.Record
	err := s.eachToken(ctx, func(r tokens.Record) error {
		out = append(out, r.Redacted())
		return nil
	})
	return out, err
}

// eachToken calls fn for every token record, a page at a time.
func (s *Service) eachToken(ctx context.Context, fn func(tokens.Record) error) error {
	return store.Each(ctx, s.cfg.Store, tokenPrefix, pageSize, func(kv store.KV) error {
		var r tokens.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("admission: token %s: %w", kv.Key, err)
		}
		return fn(r)
	})
}

// pageSize is how many records the listings read from the store at a
// time.
const pageSize = 1000

// RevokeToken revokes a pending token; it returns ErrNotFound for an unknown
// id, and ErrInvalid for a token already redeemed.
func (s *Service) RevokeToken(ctx context.Context, id string) (tokens.Record, error) {
	var out tokens.Record
	err := s.update(ctx, tokenPrefix+id, func(raw []byte) ([]byte, error) {
		if raw == nil {
			return nil, fmt.Errorf("%w: token %s", ErrNotFound, id)
		}
		var r tokens.Record
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, err
		}
		switch r.State {
		case tokens.StateRedeemed:
			return nil, fmt.Errorf("%w: token %s was already redeemed; revoke the node instead", ErrInvalid, id)
		case tokens.StateRevoked:
			out = r.Redacted()
			return nil, nil
		}
		r.State, r.RevokedAt = tokens.StateRevoked, s.cfg.Now()
		out = r.Redacted()
		return json.Marshal(r)
	})
	return out, err
}

// update is store.Update, its store errors wrapped.
func (s *Service) update(ctx context.Context, key string, fn func(raw []byte) ([]byte, error)) error {
	var fnErr error
	err := store.Update(ctx, s.cfg.Store, key, func(raw []byte) ([]byte, error) {
		next, err := fn(raw)
		fnErr = err
		return next, err
	})
	if err != nil && err != fnErr {
		return fmt.Errorf("admission: %w", err)
	}
	return err
}

// AdmitRequest is a node's attempt to redeem a token.
type AdmitRequest struct {
	Token  string     // text form of the token
	Node   string     // the name the node claims; "" to take the token's
	CSR    []byte     // PEM or DER certificate request
	Source netip.Addr // the client's address, checked when the token is bound to addresses
}

// Admit redeems a token for a CGC. Of concurrent redemptions of one token
// exactly one wins; a retry of the winner with the same key within the grace
// window gets the same certificate again (Issued.Replay), so a node whose
// connection dropped after the token was spent is not locked out.
func (s *Service) Admit(ctx context.Context, req AdmitRequest) (*Issued, error) {
	tok, err := tokens.Parse(req.Token)
	if err != nil {
		return nil, fmt.Errorf("admission: %w", err)
	}
	csr, err := ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	spki := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	key := tokenPrefix + tok.ID
	for {
		raw, err := s.cfg.Store.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("admission: token %s: %w", tok.ID, tokens.ErrUnknown)
		} else if err != nil {
			return nil, fmt.Errorf("admission: %w", err)
		}
		var rec tokens.Record
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil, fmt.Errorf("admission: token %s: %w", tok.ID, err)
		}
		attempt := tokens.Attempt{Token: tok, Node: req.Node, Source: req.Source.Unmap(), KeyHash: spki[:], Now: s.cfg.Now(), Grace: s.cfg.Grace}
		outcome, err := rec.Check(attempt)
		if err != nil {
			return nil, fmt.Errorf("admission: token %s for node %s: %w", tok.ID, rec.Node, err)
		}
		if outcome == tokens.Replay {
			cert, err := x509.ParseCertificate(rec.Cert)
			if err != nil {
				return nil, fmt.Errorf("admission: token %s: stored certificate: %w", tok.ID, err)
			}
			return &Issued{Node: rec.Node, Cert: cert, Chain: s.cfg.KeyGranting.Chain(), Replay: true}, nil
		}

		cert, err := s.signCGC(rec.Node, csr)
		if err != nil {
			return nil, err
		}
		redeemed := rec.Redeemed(attempt, SerialHex(cert), cert.Raw)
		node := Node{
			Name:       rec.Node,
			IPs:        rec.IPs,
			Groups:     rec.Groups,
			TokenID:    rec.ID,
			AdmittedAt: attempt.Now,
			Serial:     SerialHex(cert),
			NotAfter:   cert.NotAfter,
			Key:        keyHash(csr),
			Cert:       certHash(cert),
		}
		rawRec, err := json.Marshal(redeemed)
		if err != nil {
			return nil, fmt.Errorf("admission: %w", err)
		}
		rawNode, err := json.Marshal(node)
		if err != nil {
			return nil, fmt.Errorf("admission: %w", err)
		}
		// The node record is replaced whatever it held: a token issued for
		// a name is the administrator's word that this key is now that node.
		err = s.cfg.Store.Txn(ctx,
			[]store.Cond{{Key: key, Value: raw}},
			[]store.Op{{Key: key, Value: rawRec}, {Key: nodePrefix + rec.Node, Value: rawNode}})
		if errors.Is(err, store.ErrConflict) {
			continue // someone else redeemed or revoked it: look again
		}
		if err != nil {
			return nil, fmt.Errorf("admission: %w", err)
		}
		return &Issued{Node: rec.Node, Cert: cert, Chain: s.cfg.KeyGranting.Chain()}, nil
	}
}

// Caller is a node proven by its CGC.
type Caller struct {
	Node   Node
	Serial string // serial of the CGC it presented
	// Retry: the CGC presented is the node's previous one, accepted only
	// by Renew, and only to repeat the renewal that replaced it.
	Retry bool
}

// Authenticate checks a client certificate chain (leaf first, as presented
// in the TLS handshake) as a CGC: issued by the key-granting authority, valid
// now, of a node that is not revoked, and the node's current CGC. Any older
// CGC of the node is refused as superseded. Authentication reads the store
// and never writes it.
func (s *Service) Authenticate(ctx context.Context, chain []*x509.Certificate) (*Caller, error) {
	return s.authenticate(ctx, chain, 0, false)
}

// AuthenticateRenewal is Authenticate for a renewal, which also accepts a
// CGC that expired no longer ago than the RenewAfterExpiry limit (a node
// that was switched off past its CGC's expiry comes back without a new
// token, but only to renew), and the node's previous CGC, for Renew to
// decide whether it is a retry (Caller.Retry).
func (s *Service) AuthenticateRenewal(ctx context.Context, chain []*x509.Certificate) (*Caller, error) {
	return s.authenticate(ctx, chain, s.CGCLimits().RenewAfterExpiry, true)
}

func (s *Service) authenticate(ctx context.Context, chain []*x509.Certificate, afterExpiry time.Duration, renewal bool) (*Caller, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrCertInvalid)
	}
	leaf := chain[0]
	// The node's record is read first, for the certificate it was last
	// given; a name that is not a node's, or no record, leaves verify to
	// check the certificate in full, and its own error comes first.
	name, err := NodeName(leaf)
	var n Node
	nodeErr := err
	if err == nil {
		raw, err := s.cfg.Store.Get(ctx, nodePrefix+name)
		if errors.Is(err, store.ErrNotFound) {
			raw = nil
		} else if err != nil {
			return nil, fmt.Errorf("admission: %w", err)
		}
		n, nodeErr = decodeNode(raw, name)
	}
	if err := s.verify(leaf, n.Cert); err != nil {
		var inv x509.CertificateInvalidError
		if !errors.As(err, &inv) || inv.Reason != x509.Expired {
			return nil, fmt.Errorf("%w: %w", ErrCertInvalid, err)
		}
		// Expired: still good for a renewal within the window, provided
		// it was genuine at the last moment it was valid.
		since := s.cfg.Now().Sub(leaf.NotAfter)
		if since <= 0 || since > afterExpiry {
			return nil, fmt.Errorf("%w: %w", ErrCertExpired, err)
		}
		if err := s.cfg.KeyGranting.VerifyAt(leaf, x509.ExtKeyUsageClientAuth, leaf.NotAfter); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCertInvalid, err)
		}
	}
	if nodeErr != nil {
		return nil, nodeErr
	}
	serial := SerialHex(leaf)
	retry, err := n.present(serial, renewal)
	if err != nil {
		return nil, err
	}
	return &Caller{Node: n, Serial: serial, Retry: retry}, nil
}

// Renew issues the caller's next CGC for the key in csr, and from that
// moment the presented CGC is superseded: a copy of its key is useless to
// a thief. The one exception covers an answer lost in transit: the
// previous CGC may repeat the renewal for the same key (the keyclient
// keeps the key it asked for until it has the certificate), and gets a
// certificate for that key again, never for another.
func (s *Service) Renew(ctx context.Context, caller *Caller, csrData []byte) (*Issued, error) {
	csr, err := ParseCSR(csrData)
	if err != nil {
		return nil, err
	}
	name := caller.Node.Name
	key := keyHash(csr)
	// Refuse what the caller's record already rules out before paying
	// for a signature; the transaction checks again against the store.
	if err := caller.Node.renewal(caller.Serial, key); err != nil {
		return nil, err
	}
	cert, err := s.signCGC(name, csr)
	if err != nil {
		return nil, err
	}
	err = s.update(ctx, nodePrefix+name, func(raw []byte) ([]byte, error) {
		n, err := decodeNode(raw, name)
		if err != nil {
			return nil, err
		}
		if err := n.renewal(caller.Serial, key); err != nil {
			return nil, err
		}
		if caller.Serial == n.Serial {
			n.Previous, n.Key = n.Serial, key
		}
		n.Serial, n.NotAfter, n.Cert = SerialHex(cert), cert.NotAfter, certHash(cert)
		n.Renewals++
		n.RenewedAt = s.cfg.Now()
		return json.Marshal(n)
	})
	if err != nil {
		return nil, err
	}
	return &Issued{Node: name, Cert: cert, Chain: s.cfg.KeyGranting.Chain()}, nil
}

// present applies the rotation rule to a CGC serial the node presents:
// its current CGC is accepted; for a renewal, so is its previous one
// (retry reports that); any other is superseded. A revoked node is
// refused whatever it presents.
func (n *Node) present(serial string, renewal bool) (retry bool, err error) {
	switch {
	case n.Revoked:
		return false, fmt.Errorf("%w: %s", ErrNodeRevoked, n.Name)
	case serial == n.Serial:
		return false, nil
	case renewal && serial == n.Previous && n.Previous != "":
		return true, nil
	}
	return false, fmt.Errorf("%w: node %s presented serial %s, current is %s", ErrCertSuperseded, n.Name, serial, n.Serial)
}

// renewal checks that the CGC serial may renew for the key (keyHash): the
// current CGC for any key, the previous one only for the key the current
// one was issued for.
func (n *Node) renewal(serial, key string) error {
	retry, err := n.present(serial, true)
	if err != nil || !retry || key == n.Key {
		return err
	}
	return fmt.Errorf("%w: node %s presented its previous CGC %s to renew for a key other than its current CGC's", ErrCertSuperseded, n.Name, serial)
}

// keyHash names a request's public key in a node record.
func keyHash(csr *x509.CertificateRequest) string {
	h := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(h[:])
}

func decodeNode(raw []byte, name string) (Node, error) {
	if raw == nil {
		// A valid CGC for a node the store has never heard of: the store
		// was replaced or the record removed. Refuse rather than trust.
		return Node{}, fmt.Errorf("%w: node %s is not in the inventory", ErrCertInvalid, name)
	}
	var n Node
	if err := json.Unmarshal(raw, &n); err != nil {
		return Node{}, fmt.Errorf("admission: node %s: %w", name, err)
	}
	return n, nil
}

// Node returns one node of the inventory; ErrNotFound when there is none
// of that name.
func (s *Service) Node(ctx context.Context, name string) (Node, error) {
	raw, err := s.cfg.Store.Get(ctx, nodePrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return Node{}, fmt.Errorf("%w: node %s", ErrNotFound, name)
	}
	if err != nil {
		return Node{}, fmt.Errorf("admission: %w", err)
	}
	return decodeNode(raw, name)
}

// ListNodes returns every node in the inventory, sorted by name.
func (s *Service) ListNodes(ctx context.Context) ([]Node, error) {
	var all []Node
	err := s.EachNode(ctx, func(n Node) error {
		all = append(all, n)
		return nil
	})
	return all, err
}

// EachNode calls fn for every node in the inventory, by name, reading the
// store a page at a time: a fleet of 100,000 is never all in memory. An
// error from fn stops it and is returned as it is.
func (s *Service) EachNode(ctx context.Context, fn func(Node) error) error {
	return store.Each(ctx, s.cfg.Store, nodePrefix, pageSize, func(kv store.KV) error {
		var n Node
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return fmt.Errorf("admission: %s: %w", kv.Key, err)
		}
		return fn(n)
	})
}

// RevokeNode marks a node revoked, so every CGC it holds stops working at
// once, and revokes its pending tokens so none can bring it back. The
// tokens go first: a redemption racing with the revocation either loses on
// the token's compare-and-set, or commits its node record before the node
// is marked below, and is revoked with it. A name that was never admitted
// but has pending tokens (an installer file that leaked before the node
// first came up) is recorded as a revoked node; a name with neither is
// ErrNotFound and changes nothing. Revoking a revoked node is not an error.
func (s *Service) RevokeNode(ctx context.Context, name string) (Node, error) {
	revoked := 0
	err := s.eachToken(ctx, func(r tokens.Record) error {
		if r.Node != name || r.State != tokens.StatePending {
			return nil
		}
		if _, err := s.RevokeToken(ctx, r.ID); err != nil && !errors.Is(err, ErrInvalid) {
			return err
		}
		revoked++
		return nil
	})
	if err != nil {
		return Node{}, err
	}
	var out Node
	err = s.update(ctx, nodePrefix+name, func(raw []byte) ([]byte, error) {
		switch {
		case raw != nil:
			if err := json.Unmarshal(raw, &out); err != nil {
				return nil, err
			}
			if out.Revoked {
				return nil, nil
			}
		case revoked == 0:
			return nil, fmt.Errorf("%w: node %s", ErrNotFound, name)
		default:
			out = Node{Name: name} // never admitted: a record that says it may not be
		}
		out.Revoked, out.RevokedAt = true, s.cfg.Now()
		return json.Marshal(out)
	})
	if err != nil {
		return Node{}, err
	}
	return out, nil
}

// Prune deletes token records that can no longer be redeemed nor replayed,
// and returns how many it removed. It reads the prune/ index up to now and
// the records it names, not the other records.
func (s *Service) Prune(ctx context.Context) (int, error) {
	if err := s.indexForPrune(ctx); err != nil {
		return 0, fmt.Errorf("admission: prune: %w", err)
	}
	now, n := s.cfg.Now(), 0
	end := prunePrefix + now.UTC().Format(pruneTime) + "/\xff"
	err := store.Each(ctx, s.cfg.Store, prunePrefix, pageSize, func(kv store.KV) error {
		if kv.Key > end {
			return errPruned
		}
		gone, err := s.pruneEntry(ctx, kv.Key, now)
		if gone {
			n++
		}
		return err
	})
	if err != nil && !errors.Is(err, errPruned) {
		return n, fmt.Errorf("admission: prune: %w", err)
	}
	return n, nil
}

var errPruned = errors.New("reached the entries not yet due")

// pruneEntry deletes the token record of a due prune/ entry, and the entry.
// An entry whose record is gone is dropped; one whose record is not in
// fact prunable (redeemed late, so in its retry window past its expiry)
// is moved to when it will be.
func (s *Service) pruneEntry(ctx context.Context, entry string, now time.Time) (removed bool, err error) {
	id := entry[strings.LastIndexByte(entry, '/')+1:]
	raw, err := s.cfg.Store.Get(ctx, tokenPrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return false, s.cfg.Store.Txn(ctx, nil, []store.Op{{Key: entry, Delete: true}})
	} else if err != nil {
		return false, err
	}
	var rec tokens.Record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return false, fmt.Errorf("token %s: %w", id, err)
	}
	remove := rec.Prunable(now, s.cfg.Grace)
	ops := []store.Op{{Key: entry, Delete: true}}
	if remove {
		ops = append(ops, store.Op{Key: tokenPrefix + id, Delete: true})
	} else if to, ok := s.pruneKey(rec); ok && to != entry {
		ops = append(ops, store.Op{Key: to, Value: []byte{}})
	} else {
		return false, nil
	}
	err = s.cfg.Store.Txn(ctx, []store.Cond{{Key: tokenPrefix + id, Value: raw}}, ops)
	if errors.Is(err, store.ErrConflict) {
		return false, nil // changed under us; the next round looks again
	}
	return remove && err == nil, err
}

// indexForPrune gives every token record its prune/ entry, once per store:
// records written before the index existed have none.
func (s *Service) indexForPrune(ctx context.Context) error {
	if _, err := s.cfg.Store.Get(ctx, pruneIndexed); err == nil {
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	err := store.Each(ctx, s.cfg.Store, tokenPrefix, pageSize, func(kv store.KV) error {
		var rec tokens.Record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil // unreadable: left for an administrator, as before
		}
		entry, ok := s.pruneKey(rec)
		if !ok {
			return nil
		}
		// Unconditional: if the record changes meanwhile, an entry that
		// comes due too early is moved by pruneEntry, never acted on.
		return s.cfg.Store.Txn(ctx, nil, []store.Op{{Key: entry, Value: []byte{}}})
	})
	if err != nil {
		return err
	}
	return s.cfg.Store.Txn(ctx, nil, []store.Op{{Key: pruneIndexed, Value: []byte("1")}})
}

func (s *Service) signCGC(node string, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	cert, err := s.cfg.KeyGranting.Sign(authority.Request{
		PublicKey:   csr.PublicKey,
		CommonName:  node,
		URIs:        []*url.URL{NodeURI(node)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		Lifetime:    s.CGCLimits().Lifetime,
	})
	if err != nil {
		if errors.Is(err, authority.ErrWeakKey) {
			return nil, fmt.Errorf("%w: %w", ErrKeyRejected, err)
		}
		return nil, fmt.Errorf("admission: %w", err)
	}
	return cert, nil
}

// NodeURI is the URI SAN naming a node in its CGC.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: NodeURIScheme, Host: "node", Path: "/" + node}
}

// NodeName reads the node name from a CGC: its URI SAN, which must agree
// with its common name.
func NodeName(cert *x509.Certificate) (string, error) {
	for _, u := range cert.URIs {
		if u.Scheme == NodeURIScheme && u.Host == "node" {
			name := strings.TrimPrefix(u.Path, "/")
			if name != cert.Subject.CommonName || tokens.ValidNodeName(name) != nil {
				break
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("%w: no node name in certificate %q", ErrCertInvalid, cert.Subject.CommonName)
}

// ParseCSR decodes a PEM (or DER) certificate request and checks its
// self-signature and its key.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if !slices.Contains([]string{"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"}, block.Type) {
			return nil, fmt.Errorf("%w: PEM block is %q", ErrCSRInvalid, block.Type)
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSRInvalid, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSRInvalid, err)
	}
	if err := authority.CheckKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyRejected, err)
	}
	return csr, nil
}

// SerialHex is the form in which serials are stored and shown.
func SerialHex(c *x509.Certificate) string { return authority.SerialText(c) }
