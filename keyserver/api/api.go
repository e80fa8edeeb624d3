// Package api holds the wire types of the keyserver's HTTPS API: the JSON
// bodies both the keyserver and its clients (keyclient, keyctl) speak, the
// paths, and the stable error codes. It imports nothing else of this module,
// so a client never links the server.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Paths of the API.
const (
	PathHealth  = "/healthz"
	PathAdmit   = "/v1/admit"
	PathRenew   = "/v1/renew"
	PathNode    = "/v1/node" // the calling node's own record; using a new CGC here makes it current
	PathCA      = "/v1/ca/"  // + authority name
	PathTokens  = "/v1/admin/tokens"
	PathNodes   = "/v1/admin/nodes"
	PathRevoke  = "/revoke" // suffix of PathTokens/{id} and PathNodes/{name}
	ContentJSON = "application/json"

	PathSign          = "/v1/sign/"   // + grant name: POST a CSR, get the grant's certificate
	PathStatic        = "/v1/static/" // + static grant name: the file's bytes
	PathGrants        = "/v1/grants"  // the calling node's grants, rendered; + "/" + name for one
	PathPolicy        = "/v1/admin/policy"
	PathPolicyReload  = "/v1/admin/policy/reload"
	PathPolicyExplain = "/v1/admin/policy/explain"

	// ACME certificates (policy labels). A node fetches
	// PathCerts+label+"/public.pem" (the full chain) and "/private.pem"
	// (its key), in the label's first key type, or one key type's files:
	// PathCerts+label+"/ecdsa/"+("cert.pem", "chain.pem", "fullchain.pem"
	// or "key.pem"), likewise "/rsa/". Administrators read the labels'
	// state at PathACME (+ "/" + label) and force a renewal by POST to
	// PathACME/{label}/renew.
	PathCerts     = "/certs/"
	PathACME      = "/v1/admin/acme"
	PathACMERenew = "/renew" // suffix of PathACME/{label}

	// HeaderACMEVersion carries the version number of an ACME label's
	// certificate served (0: the self-signed placeholder).
	HeaderACMEVersion = "X-Keysystem-Acme-Version"

	// HeaderDigest carries "sha256:<hex>" of a static file's content.
	HeaderDigest = "X-Keysystem-Digest"
)

// MaxStaticBytes is the largest static file a grant may serve.
const MaxStaticBytes = 1 << 20

// Digest is the digest HeaderDigest carries for a static file's content:
// "sha256:<hex>".
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// MaxBodyBytes is the largest request body the keyserver reads.
const MaxBodyBytes = 64 << 10

// AdmitRequest trades a one-time token for a certificate-granting
// certificate (CGC). The CGC's identity comes from the token, never from
// the CSR, whose only use is to carry the node's public key.
type AdmitRequest struct {
	Token string `json:"token"`
	Node  string `json:"node,omitempty"` // the name the node believes it has; must match the token's
	CSR   string `json:"csr"`            // PEM CERTIFICATE REQUEST
}

// RenewRequest asks for a new CGC for a new key; it is sent over mutual TLS
// with the node's current CGC.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// CertificateResponse carries a certificate and its issuer chain.
type CertificateResponse struct {
	Node        string    `json:"node"`
	Certificate string    `json:"certificate"` // PEM, the leaf alone
	Chain       string    `json:"chain"`       // PEM, issuer chain up to but not including the root
	Serial      string    `json:"serial"`      // hex
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	Grant       string    `json:"grant,omitempty"` // for PathSign answers
	Root        string    `json:"root,omitempty"`  // PEM, the issuing authority's root, for PathSign answers
}

// SignRequest asks for a grant's certificate; it is sent over mutual TLS
// with the node's CGC. The CSR carries the node's public key and, when the
// grant allows extra names, the extra names it wants; its subject and any
// other extension are ignored.
type SignRequest struct {
	CSR string `json:"csr"`
}

// GrantInfo is a grant as it applies to one node: for x509 grants, the
// exact subject and names its certificate carries and the extra names a
// CSR may add; for static grants, the digest of the file.
type GrantInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`          // "x509" or "static"
	Via  string `json:"via,omitempty"` // why the node has it: "group web", "node web1", "pattern web*", "all nodes"

	Authority   string   `json:"authority,omitempty"`
	RootPin     string   `json:"root_pin,omitempty"` // sha256:<hex> of the authority root's public key
	Usage       string   `json:"usage,omitempty"`    // server, client or both
	CommonName  string   `json:"common_name,omitempty"`
	Subject     string   `json:"subject,omitempty"` // the whole subject, RFC 2253
	DNSNames    []string `json:"dns,omitempty"`
	IPAddresses []string `json:"ips,omitempty"`
	URIs        []string `json:"uris,omitempty"`
	AllowDNS    []string `json:"allow_dns,omitempty"`  // patterns of extra DNS names a CSR may ask for
	AllowIPs    []string `json:"allow_ips,omitempty"`  // prefixes of extra IP addresses
	AllowURIs   []string `json:"allow_uris,omitempty"` // patterns of extra URIs
	KeyTypes    []string `json:"key_types,omitempty"`
	Lifetime    Duration `json:"lifetime,omitempty"`

	Digest string `json:"digest,omitempty"` // static: sha256:<hex> of the content
	Size   int    `json:"size,omitempty"`   // static: bytes

	Error string `json:"error,omitempty"` // the grant applies but cannot be rendered for this node
}

// GrantList is the answer to GET PathGrants and to an explanation: the
// grants a node gets under the policy, and, for an explanation, why it
// does not get the others.
type GrantList struct {
	Node       string      `json:"node"`
	Groups     []string    `json:"groups"`
	Grants     []GrantInfo `json:"grants"`
	NotGranted []string    `json:"not_granted,omitempty"` // names of the grants the node does not get
	Policy     string      `json:"policy,omitempty"`      // digest of the policy evaluated
}

// ExplainRequest asks how the keyserver's running policy treats a node:
// the one in the inventory, or a name not yet admitted, with Groups and
// IPs standing in for what its token would give it.
type ExplainRequest struct {
	Node   string   `json:"node"`
	Grant  string   `json:"grant,omitempty"` // only this grant
	Groups []string `json:"groups,omitempty"`
	IPs    []string `json:"ips,omitempty"`
}

// PolicyStatus describes the policy a keyserver is serving.
type PolicyStatus struct {
	File        string    `json:"file"`
	Digest      string    `json:"digest"` // sha256:<hex> over the file and every static file it serves
	LoadedAt    time.Time `json:"loaded_at"`
	Authorities []string  `json:"authorities"`
	Groups      []string  `json:"groups"`
	Grants      []string  `json:"grants"`
}

// TokenRequest asks the keyserver for a new admission token.
type TokenRequest struct {
	Node   string   `json:"node"`
	TTL    Duration `json:"ttl,omitempty"`    // 0: the keyserver's default
	IPs    []string `json:"ips,omitempty"`    // source addresses the token may be redeemed from
	Groups []string `json:"groups,omitempty"` // policy groups the node joins when admitted
}

// TokenResponse carries a new token: the only time its secret is shown.
type TokenResponse struct {
	Token string    `json:"token"`
	Info  TokenInfo `json:"info"`
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	ID         string    `json:"id"`
	Node       string    `json:"node"`
	IPs        []string  `json:"ips,omitempty"`
	Groups     []string  `json:"groups,omitempty"`
	Creator    string    `json:"creator"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	State      string    `json:"state"` // pending, redeemed, revoked, expired
	RedeemedAt time.Time `json:"redeemed_at,omitzero"`
}

// TokenList is the answer to GET PathTokens.
type TokenList struct {
	Tokens []TokenInfo `json:"tokens"`
}

// NodeInfo describes an admitted node.
type NodeInfo struct {
	Name       string    `json:"name"`
	IPs        []string  `json:"ips,omitempty"`
	Groups     []string  `json:"groups,omitempty"` // given by its token; the policy may add more by name
	AdmittedAt time.Time `json:"admitted_at"`
	Serial     string    `json:"serial"` // the current CGC's serial
	NotAfter   time.Time `json:"not_after"`
	// PreviousSerial is the CGC the current one replaced, accepted only
	// to repeat that renewal for the same key (an answer lost in transit).
	PreviousSerial string    `json:"previous_serial,omitempty"`
	Renewals       int       `json:"renewals"`
	RenewedAt      time.Time `json:"renewed_at,omitzero"`
	Revoked        bool      `json:"revoked,omitempty"`
	RevokedAt      time.Time `json:"revoked_at,omitzero"`
}

// NodeList is the answer to GET PathNodes.
type NodeList struct {
	Nodes []NodeInfo `json:"nodes"`
}

// ACMEStatus is an ACME label's state, as every keyserver sharing the
// store sees it.
type ACMEStatus struct {
	Label      string   `json:"label"`
	Account    string   `json:"account"`
	CommonName string   `json:"cn"`
	Names      []string `json:"names"`
	Challenge  string   `json:"challenge"`
	KeyTypes   []string `json:"key_types"`

	Current *ACMEVersion `json:"current,omitempty"` // served
	Next    *ACMEVersion `json:"next,omitempty"`    // obtained, held back until its ready_at
	// Placeholder: a key type is served as the self-signed placeholder,
	// because no certificate from the CA exists for it yet.
	Placeholder bool `json:"placeholder,omitempty"`

	// RenewAt is when the current version is due for renewal, and
	// RenewBy why then: "ari" (the CA's renewal window), "lifetime" (two
	// thirds of it), or, with RenewAt now, "first issue", "policy
	// changed" or "forced".
	RenewAt      time.Time `json:"renew_at,omitzero"`
	RenewBy      string    `json:"renew_by,omitempty"`
	ARICheckedAt time.Time `json:"ari_checked_at,omitzero"`
	// NextAttempt is the earliest the keyserver orders again: after a
	// failure (backing off), or when the daily cap is reached.
	NextAttempt     time.Time `json:"next_attempt,omitzero"`
	LastAttempt     time.Time `json:"last_attempt,omitzero"`
	LastSuccess     time.Time `json:"last_success,omitzero"`
	LastError       string    `json:"last_error,omitempty"`
	Failures        int       `json:"failures,omitempty"` // in a row
	OrdersToday     int       `json:"orders_today"`       // in the last 24 hours, one per key type
	MaxOrdersPerDay int       `json:"max_orders_per_day"`
	Forced          bool      `json:"forced,omitempty"`   // a renewal was asked for and has not yet succeeded
	Ordering        string    `json:"ordering,omitempty"` // the keyserver ordering now, if one is

	Nodes []ACMEFetch `json:"nodes,omitempty"` // which version each node last fetched
}

// ACMEVersion is one version of a label's certificates.
type ACMEVersion struct {
	Number    int               `json:"number"`
	Names     []string          `json:"names"`
	NotBefore time.Time         `json:"not_before"`
	NotAfter  time.Time         `json:"not_after"`
	ReadyAt   time.Time         `json:"ready_at"`
	Serials   map[string]string `json:"serials"` // by key type, hex
}

// ACMEFetch is the version of a label a node last fetched.
type ACMEFetch struct {
	Node    string    `json:"node"`
	Version int       `json:"version"`
	KeyType string    `json:"key_type"`
	At      time.Time `json:"at"`
	Stale   bool      `json:"stale,omitempty"` // older than the version served now
}

// ACMEStatusList is the answer to GET PathACME.
type ACMEStatusList struct {
	Labels []ACMEStatus `json:"labels"`
}

// Health is the answer to GET PathHealth.
type Health struct {
	Status string `json:"status"` // "ok"
}

// Error codes: stable, for scripts and clients to act on.
const (
	CodeBadRequest       = "bad_request"          // malformed JSON, unknown fields, missing fields
	CodeBodyTooLarge     = "body_too_large"       // over MaxBodyBytes
	CodeTokenInvalid     = "token_invalid"        // any token problem: unknown, expired, used, revoked, wrong node
	CodeCSRInvalid       = "csr_invalid"          // unparsable CSR or bad signature
	CodeKeyRejected      = "key_rejected"         // weak or unsupported key
	CodeCertRequired     = "certificate_required" // no client certificate
	CodeCertInvalid      = "certificate_invalid"  // not from the authority this endpoint needs, or malformed
	CodeCertExpired      = "certificate_expired"
	CodeCertSuperseded   = "certificate_superseded" // an older CGC of the node: possible key theft
	CodeNodeRevoked      = "node_revoked"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeGrantDenied      = "grant_denied"     // no such grant, or not for this node
	CodeNameNotAllowed   = "name_not_allowed" // the CSR asks for a name the grant does not allow; the message names it
	CodePolicyInvalid    = "policy_invalid"   // a policy file refused (details: file:line: message), or a grant that cannot be rendered
	CodeInternal         = "internal"
	CodeUnavailable      = "unavailable"
)

// ErrorBody is the JSON body of every error answer:
// {"error":{"code":"token_invalid","message":"..."}}.
type ErrorBody struct {
	Error Error `json:"error"`
}

// Error is an API error as a client sees it.
type Error struct {
	Status  int      `json:"-"`
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Details []string `json:"details,omitempty"` // for policy_invalid: every problem, as file:line: message

	// RetryAfter is the server's Retry-After (503 unavailable): the least
	// a client waits before it asks again.
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("keyserver: %s (%s)", e.Message, e.Code)
}

// Duration is a time.Duration that travels as text ("1h30m").
type Duration time.Duration

// Std is d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	*d = Duration(v)
	return nil
}

// ReadResponse reads an answer of the keyserver of at most limit bytes:
// a 2xx body is decoded into out, anything else becomes an *Error.
func ReadResponse(resp *http.Response, limit int64, out any) error {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return fmt.Errorf("api: reading answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: "unexpected answer " + resp.Status}
		}
		eb.Error.Status = resp.StatusCode
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			eb.Error.RetryAfter = time.Duration(secs) * time.Second
		}
		return &eb.Error
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("api: unreadable answer: %w", err)
	}
	return nil
}
