package loadgen

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.step.sm/crypto/pemutil"
)

// Failure kinds of the verification of an answer.
const (
	KindParse = "verify_parse" // the certificate or chain does not parse
	KindChain = "verify_chain" // it does not chain to the expected root
	KindName  = "verify_name"  // it does not carry the node's name
	KindKey   = "verify_key"   // it is not for the node's key
)

// Other failure kinds; an API refusal is "http_<status>_<code>", e.g.
// http_503_unavailable.
const (
	KindTransport = "transport"  // no answer: connection, TLS or timeout
	KindBadAnswer = "bad_answer" // a 2xx answer that is not what the API says
	KindClient    = "client"     // the generator failed to make a request
)

// Failure is a failed operation with its kind, for counting.
type Failure struct {
	Kind string
	Err  error
}

func (f *Failure) Error() string { return f.Kind + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// kindOf is the kind of a failure, "other" for an error that is not a
// *Failure.
func kindOf(err error) string {
	var f *Failure
	if errors.As(err, &f) {
		return f.Kind
	}
	return "other"
}

func fail(kind string, format string, args ...any) *Failure {
	return &Failure{Kind: kind, Err: fmt.Errorf(format, args...)}
}

// Expect is what a certificate the keyserver sent must be.
type Expect struct {
	Root *x509.Certificate // it must chain to this root, through the chain sent
	Node string            // the node's name: the common name, or a DNS name for grants
	CGC  bool              // a CGC: CN is the node and the URI SAN keysystem://node/<node>, for client auth
	Key  crypto.PublicKey  // the node's public key
	Now  time.Time         // when it must be valid
	// Issuers, when set, remembers intermediates already verified
	// against Root, so that later leaves under them cost one signature
	// check, not two: the generator's own CPU is taken from the server's.
	Issuers *Issuers
}

// Issuers are intermediates verified against a root, by the DER of both.
type Issuers struct {
	mu    sync.Mutex
	pools map[string]*x509.CertPool
}

func (s *Issuers) get(root, c *x509.Certificate) *x509.CertPool {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pools[string(root.Raw)+string(c.Raw)]
}

func (s *Issuers) add(root, c *x509.Certificate) {
	if s == nil {
		return
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pools == nil {
		s.pools = map[string]*x509.CertPool{}
	}
	s.pools[string(root.Raw)+string(c.Raw)] = pool
}

// nodeURI is the URI SAN of a node's CGC, as admission.NodeURI makes it.
func nodeURI(node string) string { return "keysystem://node/" + node }

// Verify checks a certificate (PEM, the leaf) and its issuer chain (PEM)
// against want and returns the parsed leaf and chain; a mismatch is a
// *Failure of kind verify_parse, verify_chain, verify_name or verify_key.
func Verify(certPEM, chainPEM string, want Expect) (*x509.Certificate, []*x509.Certificate, error) {
	leaves, err := parsePEM(certPEM)
	if err != nil || len(leaves) != 1 {
		return nil, nil, fail(KindParse, "certificate: want one, got %d (%v)", len(leaves), err)
	}
	leaf := leaves[0]
	chain, err := parsePEM(chainPEM)
	if err != nil {
		return nil, nil, fail(KindParse, "chain: %v", err)
	}
	usage := x509.ExtKeyUsageAny
	if want.CGC {
		usage = x509.ExtKeyUsageClientAuth
	}
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), CurrentTime: want.Now, KeyUsages: []x509.ExtKeyUsage{usage}}
	var known *x509.CertPool
	if len(chain) == 1 {
		known = want.Issuers.get(want.Root, chain[0])
	}
	if known != nil {
		opts.Roots, opts.Intermediates = known, nil
	} else {
		opts.Roots.AddCert(want.Root)
		for _, c := range chain {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, nil, fail(KindChain, "%v", err)
	}
	if known == nil && len(chain) == 1 && len(chains[0]) == 3 && chains[0][1].Equal(chain[0]) {
		want.Issuers.add(want.Root, chain[0])
	}
	if want.CGC {
		uris := make([]string, len(leaf.URIs))
		for i, u := range leaf.URIs {
			uris[i] = u.String()
		}
		if leaf.Subject.CommonName != want.Node || !slices.Equal(uris, []string{nodeURI(want.Node)}) {
			return nil, nil, fail(KindName, "CGC for CN %q, URIs %v; want %q and %s", leaf.Subject.CommonName, uris, want.Node, nodeURI(want.Node))
		}
	} else if leaf.Subject.CommonName != want.Node && !slices.Contains(leaf.DNSNames, want.Node) {
		return nil, nil, fail(KindName, "certificate for CN %q, DNS %v; want %q as either", leaf.Subject.CommonName, leaf.DNSNames, want.Node)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(want.Key) {
		return nil, nil, fail(KindKey, "certificate for another key")
	}
	return leaf, chain, nil
}

// parsePEM reads every certificate of data; no certificate at all (an
// empty chain) is not an error.
func parsePEM(data string) ([]*x509.Certificate, error) {
	if strings.TrimSpace(data) == "" {
		return nil, nil
	}
	return pemutil.ParseCertificateBundle([]byte(data))
}
