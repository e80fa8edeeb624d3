package tokens

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// State is the life-cycle state of a token.
type State string

const (
	StatePending  State = "pending"  // issued, not yet redeemed
	StateRedeemed State = "redeemed" // traded for a certificate
	StateRevoked  State = "revoked"  // withdrawn by an administrator
)

// A Record is what the keyserver stores about a token. It never contains
// the secret, only its hash.
type Record struct {
	ID         string    `json:"id"`
	Hash       []byte    `json:"hash,omitempty"` // SHA-256 of the secret (Token.Hash)
	Node       string    `json:"node"`           // node name the token is bound to
	IPs        []string  `json:"ips,omitempty"`  // if set, the source addresses the token may be redeemed from (netip.Addr text)
	Groups     []string  `json:"groups,omitempty"`
	Creator    string    `json:"creator,omitempty"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	State      State     `json:"state"`
	RedeemedAt time.Time `json:"redeemed_at,omitzero"` // zero unless redeemed
	KeyHash    []byte    `json:"key_hash,omitempty"`   // SHA-256 of the SubjectPublicKeyInfo DER that redeemed the token
	Serial     string    `json:"serial,omitempty"`     // serial (hex) of the certificate issued on redemption
	Cert       []byte    `json:"cert,omitempty"`       // DER of that certificate, kept only for the retry window
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
}

// An Attempt is one redemption attempt as the server sees it.
type Attempt struct {
	Token   Token
	Node    string        // node name the client claims ("" = not stated)
	Source  netip.Addr    // client's source address (zero = unknown)
	KeyHash []byte        // SHA-256 of the SubjectPublicKeyInfo in the client's CSR
	Now     time.Time     // time of the attempt
	Grace   time.Duration // crash-safe retry window after redemption
}

// An Outcome is the result of a successful Record.Check.
type Outcome int

const (
	// Redeem means first use: the caller signs the CSR and stores
	// r.Redeemed(...) before returning the certificate.
	Redeem Outcome = iota + 1
	// Replay means the client that redeemed the token retried with the
	// same key within the grace period: the caller returns r.Cert again.
	Replay
)

func (o Outcome) String() string {
	switch o {
	case Redeem:
		return "redeem"
	case Replay:
		return "replay"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Check decides whether the attempt a may redeem the token described by r.
// r may be nil, meaning no token with that ID is known. The rules, in order:
//
//   - no record, a different ID or a wrong secret: ErrUnknown
//     (a wrong secret is indistinguishable from an unknown token);
//   - revoked: ErrRevoked;
//   - a.Node stated and not r.Node: ErrWrongNode;
//   - r.IPs set and a.Source not among them: ErrWrongAddress
//     (IPv4-mapped IPv6 addresses match their IPv4 form);
//   - redeemed with a different key: ErrKeyMismatch (which is also ErrUsed);
//   - redeemed with the same key, before RedeemedAt+Grace and with the
//     certificate still stored: Replay;
//   - redeemed otherwise: ErrUsed;
//   - pending and not before Expires: ErrExpired;
//   - pending: Redeem.
//
// A record in any other state is rejected with a non-sentinel error.
func (r *Record) Check(a Attempt) (Outcome, error) {
	if r == nil || r.ID != a.Token.ID || !equalHash(a.Token.Hash(), r.Hash) {
		return 0, ErrUnknown
	}
	if r.State == StateRevoked {
		return 0, ErrRevoked
	}
	if a.Node != "" && a.Node != r.Node {
		return 0, ErrWrongNode
	}
	if len(r.IPs) > 0 && !r.allows(a.Source) {
		return 0, ErrWrongAddress
	}
	switch r.State {
	case StateRedeemed:
		if !equalHash(a.KeyHash, r.KeyHash) {
			return 0, ErrKeyMismatch
		}
		if a.Now.Before(r.RedeemedAt.Add(a.Grace)) && len(r.Cert) > 0 {
			return Replay, nil
		}
		return 0, ErrUsed
	case StatePending:
		if !a.Now.Before(r.Expires) {
			return 0, ErrExpired
		}
		return Redeem, nil
	}
	return 0, fmt.Errorf("tokens: record has invalid state %q", r.State)
}

// Redeemed returns a copy of r marking it redeemed by a, with the serial
// number and DER of the certificate issued.
func (r Record) Redeemed(a Attempt, serial string, certDER []byte) Record {
	r = r.clone()
	r.State = StateRedeemed
	r.RedeemedAt = a.Now
	r.KeyHash = bytes.Clone(a.KeyHash)
	r.Serial = serial
	r.Cert = bytes.Clone(certDER)
	return r
}

// Prunable reports whether r may be deleted at time now, given the retry
// window grace: a pending or revoked record once it has expired, a
// redeemed one once it has expired and its retry window has passed.
// Records in any other state are never prunable.
func (r Record) Prunable(now time.Time, grace time.Duration) bool {
	at, ok := r.PrunableAt(grace)
	return ok && !now.Before(at)
}

// PrunableAt is the moment from which r is Prunable; false for a state
// that never is.
func (r Record) PrunableAt(grace time.Duration) (time.Time, bool) {
	switch r.State {
	case StatePending, StateRevoked:
		return r.Expires, true
	case StateRedeemed:
		end := r.RedeemedAt.Add(grace)
		if r.Expires.After(end) {
			end = r.Expires
		}
		return end, true
	}
	return time.Time{}, false
}

// Redacted returns a copy of r without Hash, KeyHash and Cert, for listings.
func (r Record) Redacted() Record {
	r.IPs = slices.Clone(r.IPs)
	r.Groups = slices.Clone(r.Groups)
	r.Hash, r.KeyHash, r.Cert = nil, nil, nil
	return r
}

// clone returns a copy of r that shares no memory with it.
func (r Record) clone() Record {
	r.Hash = bytes.Clone(r.Hash)
	r.IPs = slices.Clone(r.IPs)
	r.Groups = slices.Clone(r.Groups)
	r.KeyHash = bytes.Clone(r.KeyHash)
	r.Cert = bytes.Clone(r.Cert)
	return r
}

// allows reports whether src is among r.IPs.
func (r *Record) allows(src netip.Addr) bool {
	if !src.IsValid() {
		return false
	}
	src = src.Unmap()
	for _, s := range r.IPs {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Unmap() == src {
			return true
		}
	}
	return false
}

// equalHash reports, in constant time, whether a and b are the same
// SHA-256 hash. Hashes of the wrong length never match.
func equalHash(a, b []byte) bool {
	return len(a) == sha256.Size && subtle.ConstantTimeCompare(a, b) == 1
}

// ValidNodeName reports whether name is a valid node name: a lowercase DNS
// name of 1 to 253 characters whose dot-separated labels are 1 to 63
// characters of a-z, 0-9 and '-', not starting or ending with '-'. The
// error says what is wrong.
func ValidNodeName(name string) error {
	switch {
	case name == "":
		return errors.New("tokens: empty node name")
	case len(name) > 253:
		return errors.New("tokens: node name longer than 253 characters")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.':
		case 'A' <= c && c <= 'Z':
			return fmt.Errorf("tokens: node name %q: upper case letter %q (node names are lower case)", name, c)
		default:
			return fmt.Errorf("tokens: node name %q: invalid character at offset %d (want a-z, 0-9, '-' or '.')", name, i)
		}
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return fmt.Errorf("tokens: node name %q: empty label", name)
		case len(label) > 63:
			return fmt.Errorf("tokens: node name %q: label longer than 63 characters", name)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("tokens: node name %q: label %q starts or ends with '-'", name, label)
		}
	}
	return nil
}
