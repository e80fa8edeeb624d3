package loadgen

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
)

var now = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

type ca struct {
	root, inter *x509.Certificate
	key         crypto.Signer // the intermediate's
}

func newKeyT(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(now.UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCA makes a root and an intermediate, as an authority with
// --intermediate has.
func newCA(t *testing.T, name string) *ca {
	rootKey, interKey := newKeyT(t), newKeyT(t)
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	}
	root := sign(t, caTmpl(name+" root"), caTmpl(name+" root"), rootKey.Public(), rootKey)
	inter := sign(t, caTmpl(name+" intermediate"), root, interKey.Public(), rootKey)
	return &ca{root: root, inter: inter, key: interKey}
}

func (c *ca) leaf(t *testing.T, cn string, uris []string, dns []string, pub crypto.PublicKey) string {
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	return pemOf(sign(t, tmpl, c.inter, pub, c.key))
}

func pemOf(c *x509.Certificate) string { return string(authority.EncodePEM(c)) }

func TestVerify(t *testing.T) {
	kg, other := newCA(t, "keygranting"), newCA(t, "other")
	nodeKey, otherKey := newKeyT(t), newKeyT(t)
	const node = "bench-abcdef-7"
	cgc := Expect{Root: kg.root, Node: node, CGC: true, Key: nodeKey.Public(), Now: now}
	grant := Expect{Root: kg.root, Node: node, Key: nodeKey.Public(), Now: now}
	chain := pemOf(kg.inter)
	type verifyCase struct {
		name   string
		cert   string
		chain  string
		want   Expect
		wantOK bool
		kind   string
	}
	tests := []verifyCase{
		{"good CGC", kg.leaf(t, node, []string{nodeURI(node)}, nil, nodeKey.Public()), chain, cgc, true, ""},
		{"good grant by CN", kg.leaf(t, node, nil, nil, nodeKey.Public()), chain, grant, true, ""},
		{"good grant by DNS name", kg.leaf(t, "service", nil, []string{"x", node}, nodeKey.Public()), chain, grant, true, ""},
		{"wrong CN", kg.leaf(t, "bench-abcdef-8", []string{nodeURI(node)}, nil, nodeKey.Public()), chain, cgc, false, KindName},
		{"wrong URI", kg.leaf(t, node, []string{nodeURI("bench-abcdef-8")}, nil, nodeKey.Public()), chain, cgc, false, KindName},
		{"no URI", kg.leaf(t, node, nil, nil, nodeKey.Public()), chain, cgc, false, KindName},
		{"extra URI", kg.leaf(t, node, []string{nodeURI(node), "spiffe://x/y"}, nil, nodeKey.Public()), chain, cgc, false, KindName},
		{"grant for another node", kg.leaf(t, "web1", nil, []string{"web1"}, nodeKey.Public()), chain, grant, false, KindName},
		{"wrong key", kg.leaf(t, node, []string{nodeURI(node)}, nil, otherKey.Public()), chain, cgc, false, KindKey},
		{"wrong root", other.leaf(t, node, []string{nodeURI(node)}, nil, nodeKey.Public()), pemOf(other.inter), cgc, false, KindChain},
		{"right root, chain missing", kg.leaf(t, node, []string{nodeURI(node)}, nil, nodeKey.Public()), "", cgc, false, KindChain},
		{"expired", kg.leaf(t, node, []string{nodeURI(node)}, nil, nodeKey.Public()), chain, Expect{Root: kg.root, Node: node, CGC: true, Key: nodeKey.Public(), Now: now.Add(2 * time.Hour)}, false, KindChain},
		{"garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", chain, cgc, false, KindParse},
		{"no certificate", "", chain, cgc, false, KindParse},
		{"two certificates", pemOf(kg.inter) + pemOf(kg.inter), chain, cgc, false, KindParse},
	}
	tests = append(tests, verifyCase{"an intermediate verified under another root", kg.leaf(t, node, []string{nodeURI(node)}, nil, nodeKey.Public()), chain, Expect{Root: other.root, Node: node, CGC: true, Key: nodeKey.Public(), Now: now}, false, KindChain})
	// Without a cache, and with one the good cases fill first: the
	// answers must be the same.
	for _, cache := range []*Issuers{nil, {}} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/cache=%v", tt.name, cache != nil), func(t *testing.T) {
				tt.want.Issuers = cache
				leaf, _, err := Verify(tt.cert, tt.chain, tt.want)
				if tt.wantOK {
					if err != nil || leaf == nil {
						t.Fatalf("Verify: %v", err)
					}
					return
				}
				var f *Failure
				if !errors.As(err, &f) || f.Kind != tt.kind {
					t.Fatalf("Verify = %v, want a failure of kind %s", err, tt.kind)
				}
			})
		}
		if cache != nil && len(cache.pools) != 1 {
			t.Errorf("cache holds %d intermediates, want keygranting's alone", len(cache.pools))
		}
	}
}
