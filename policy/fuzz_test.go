package policy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/policy"
)

// fuzzCSR asks for a little of everything.
var fuzzCSR = sync.OnceValue(func() *x509.CertificateRequest {
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		panic(err)
	}
	u, _ := url.Parse("spiffe://example.org/etcd/x")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "node1.example.org"},
		DNSNames:    []string{"node1.example.org", "a.etcd.internal", "*.etcd.internal"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
		URIs:        []*url.URL{u},
	}, key)
	if err != nil {
		panic(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		panic(err)
	}
	return csr
})

// FuzzParse checks that Parse never panics, that a refusal is an Errors
// whose every problem names the file and a line within it, and that a
// policy it accepts can be evaluated.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullPolicy))
	f.Add([]byte(evalPolicy))
	f.Add([]byte(""))
	f.Add([]byte("grants: {a: {type: static, file: files/bundle.pem, to: {all: true}}}"))
	f.Add([]byte("grants:\n  a:\n    type: x509\n    authority: e\n    usage: both\n    dns: ['{{.Node}}']\n    to: {all: true}\nauthorities: {e: {}}\n"))
	for _, tc := range badCases {
		f.Add([]byte(tc.src))
	}
	const file = "fuzz/policy.yaml"
	read := func(name string) ([]byte, error) {
		if strings.Contains(name, "missing") {
			return nil, os.ErrNotExist
		}
		return []byte("static:" + name), nil
	}
	facts := []policy.Facts{
		{Node: "node1.example.org", Groups: []string{"etcd", "web"}, IPs: []string{"192.0.2.1"}},
		{Node: "etcd1.dc1.example.org", IPs: []string{"10.0.0.1", "2001:db8::1"}},
		{Node: "solo"},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := policy.Parse(file, data, read)
		if err != nil {
			if p != nil {
				t.Errorf("Parse returned a policy and an error")
			}
			var errs policy.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %v is a %T, not a policy.Errors", err, err)
			}
			if len(errs) == 0 {
				t.Fatal("empty policy.Errors")
			}
			// At most: YAML breaks lines at \n, \r, NEL, LS and PS.
			lines := 1
			for _, br := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
				lines += bytes.Count(data, []byte(br))
			}
			for i, pr := range errs {
				if pr.File != file {
					t.Errorf("problem %q has file %q, want %q", pr.Msg, pr.File, file)
				}
				if pr.Line < 0 || pr.Line > lines+1 {
					t.Errorf("problem %q at line %d of a file of %d lines", pr.Msg, pr.Line, lines)
				}
				if pr.Msg == "" {
					t.Errorf("problem at line %d without a message", pr.Line)
				}
				if i > 0 && errs[i-1].Line > pr.Line {
					t.Errorf("problems not sorted by line: %d before %d", errs[i-1].Line, pr.Line)
				}
			}
			return
		}
		if p == nil {
			t.Fatal("Parse returned neither a policy nor an error")
		}
		if !strings.HasPrefix(p.Digest(), "sha256:") {
			t.Errorf("Digest() = %q", p.Digest())
		}
		for _, fa := range facts {
			p.GroupsOf(fa)
			_, granted, _ := p.Explain(fa)
			for _, d := range granted {
				if d.Cert == nil {
					continue
				}
				if c, err := d.Cert.Request(fuzzCSR()); err == nil && c == nil {
					t.Errorf("grant %s: Request returned neither a Cert nor an error", d.Grant.Name)
				}
			}
		}
	})
}
