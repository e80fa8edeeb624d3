package loadgen

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
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
)

// Failure is a failed operation with its kind, for counting.
type Failure struct {
	Kind string
	Err  error
}

func (f *Failure) Error() string { return f.Kind + ": " + f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

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
}

// NodeURI is the URI SAN of a node's CGC.
func NodeURI(node string) string { return "keysystem://node/" + node }

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
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	roots.AddCert(want.Root)
	usage := x509.ExtKeyUsageAny
	if want.CGC {
		usage = x509.ExtKeyUsageClientAuth
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: want.Now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return nil, nil, fail(KindChain, "%v", err)
	}
	if want.CGC {
		uris := make([]string, len(leaf.URIs))
		for i, u := range leaf.URIs {
			uris[i] = u.String()
		}
		if leaf.Subject.CommonName != want.Node || !slices.Equal(uris, []string{NodeURI(want.Node)}) {
			return nil, nil, fail(KindName, "CGC for CN %q, URIs %v; want %q and %s", leaf.Subject.CommonName, uris, want.Node, NodeURI(want.Node))
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
