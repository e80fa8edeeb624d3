// Package tokens implements the rules for one-time admission tokens.
//
// A keyserver issues a token for a node name; the node trades it, once,
// for a certificate. This package defines the token text form (New, Parse,
// Token.String), the record a keyserver keeps about each token (Record) and
// the decision whether a redemption attempt is allowed (Record.Check).
//
// The package is pure: it does no I/O and keeps no state. Randomness is
// passed in as an io.Reader and every time-dependent decision takes the
// current time as an argument.
//
// The secret part of a token must never be stored or logged. A Record
// holds only the SHA-256 hash of the secret (Token.Hash), and only the
// token ID is meant for listings and audit logs. Note that Token.String
// returns the full token, secret included.
package tokens

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"strings"
)

// Errors returned by Parse. A client treats either one as "not a token";
// ErrChecksum lets it say more precisely that the token was mistyped.
var (
	ErrMalformed = errors.New("tokens: malformed token")
	ErrChecksum  = errors.New("tokens: token check code mismatch (mistyped token?)")
)

// Errors returned by Record.Check. They are distinct so that the server
// can tell the reasons apart internally, for example in its audit log. A
// client must not learn which one applied: the server answers every one of
// them with the same uniform "invalid token" response. That mapping is the
// server's job, not this package's.
//
// ErrKeyMismatch wraps ErrUsed: errors.Is(err, ErrUsed) reports true for
// both, and errors.Is(err, ErrKeyMismatch) singles out a retry with a key
// other than the one the token was redeemed with.
var (
	ErrUnknown      = errors.New("tokens: unknown token")
	ErrExpired      = errors.New("tokens: token expired")
	ErrUsed         = errors.New("tokens: token already used")
	ErrKeyMismatch  = fmt.Errorf("%w with a different key", ErrUsed)
	ErrRevoked      = errors.New("tokens: token revoked")
	ErrWrongNode    = errors.New("tokens: token issued for a different node")
	ErrWrongAddress = errors.New("tokens: token not valid from this address")
)

const (
	prefix      = "ks1_"
	alphabet    = "0123456789abcdefghjkmnpqrstvwxyz" // lowercase Crockford base32
	idBytes     = 10
	secretBytes = 20
	idLen       = 16 // base32 length of idBytes
	secretLen   = 32 // base32 length of secretBytes
	checkLen    = 7  // base32 length of a 4-byte CRC
	textLen     = len(prefix) + idLen + 1 + secretLen + checkLen
)

var (
	encoding   = base32.NewEncoding(alphabet).WithPadding(base32.NoPadding)
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// A Token is a one-time admission token. Its text form is
//
//	ks1_<id>_<secret><check>
//
// where id (16 characters, 80 random bits) and secret (32 characters, 160
// random bits) are lowercase Crockford base32, and check (7 characters) is
// the Crockford base32 of the big-endian CRC-32C of "ks1_<id>_<secret>".
// The ID is public; the secret is not.
type Token struct {
	ID     string // public identifier, 16 characters
	Secret string // base32 text of the secret, 32 characters
}

// New returns a new token whose ID and secret are read from rand, which
// should be a cryptographically secure source such as crypto/rand.Reader.
func New(rand io.Reader) (Token, error) {
	var b [idBytes + secretBytes]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return Token{}, fmt.Errorf("tokens: reading random bytes: %w", err)
	}
	return Token{
		ID:     encoding.EncodeToString(b[:idBytes]),
		Secret: encoding.EncodeToString(b[idBytes:]),
	}, nil
}

// Parse parses the text form of a token. It ignores surrounding white
// space and letter case, and reads the look-alikes i and l as 1 and o as
// 0. It returns ErrMalformed if s does not have the form of a token and
// ErrChecksum if the check code does not match.
func Parse(s string) (Token, error) {
	b := []byte(strings.TrimSpace(s))
	for i, c := range b {
		b[i] = normalize(c)
	}
	if !bytes.HasPrefix(b, []byte(prefix)) {
		return Token{}, fmt.Errorf("%w: missing %q prefix", ErrMalformed, prefix)
	}
	if len(b) != textLen {
		return Token{}, fmt.Errorf("%w: wrong length", ErrMalformed)
	}
	b = b[len(prefix):]
	if b[idLen] != '_' {
		return Token{}, fmt.Errorf("%w: missing '_' after the id", ErrMalformed)
	}
	id, rest := b[:idLen], b[idLen+1:]
	if !validChars(id) || !validChars(rest) {
		return Token{}, fmt.Errorf("%w: invalid character", ErrMalformed)
	}
	t := Token{ID: string(id), Secret: string(rest[:secretLen])}
	if string(rest[secretLen:]) != checkCode(t.ID, t.Secret) {
		return Token{}, ErrChecksum
	}
	return t, nil
}

// String returns the text form of t, including the secret and the check
// code. It must not be logged; log t.ID instead.
func (t Token) String() string {
	return prefix + t.ID + "_" + t.Secret + checkCode(t.ID, t.Secret)
}

// LogValue implements slog.LogValuer so that structured logging of a Token
// shows only its ID, never the secret.
func (t Token) LogValue() slog.Value {
	return slog.StringValue(t.ID)
}

// Hash returns the SHA-256 hash of the decoded secret bytes. It is what a
// Record stores in place of the secret. Hash returns nil if t.Secret is
// not a secret in the form New and Parse produce.
func (t Token) Hash() []byte {
	if len(t.Secret) != secretLen || !validChars([]byte(t.Secret)) {
		return nil
	}
	b, err := encoding.DecodeString(t.Secret)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(b)
	return h[:]
}

// ValidID reports whether id has the form of a token ID: 16 characters of
// the lowercase Crockford base32 alphabet.
func ValidID(id string) bool {
	return len(id) == idLen && validChars([]byte(id))
}

// checkCode returns the check code of the token with the given id and secret.
func checkCode(id, secret string) string {
	sum := crc32.Checksum([]byte(prefix+id+"_"+secret), castagnoli)
	return encoding.EncodeToString(binary.BigEndian.AppendUint32(nil, sum))
}

// normalize folds ASCII upper case to lower case and maps the Crockford
// look-alikes i, l and o to 1, 1 and 0.
func normalize(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		c += 'a' - 'A'
	}
	switch c {
	case 'i', 'l':
		return '1'
	case 'o':
		return '0'
	}
	return c
}

func validChars(b []byte) bool {
	for _, c := range b {
		if strings.IndexByte(alphabet, c) < 0 {
			return false
		}
	}
	return true
}
