package keyserver_test

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"net/url"
	"testing"
	"time"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
)

// BenchmarkRenewalCrypto measures, one by one, the cryptography the
// keyserver cannot avoid in a renewal, so that docs/benchmarks.md can say
// how far the whole request is from its floor:
//
//   - the TLS 1.3 key exchange, server side (Go's default group,
//     X25519MLKEM768: an ML-KEM-768 encapsulation and an X25519 key pair
//     and shared secret);
//   - the server's CertificateVerify signature (ECDSA P-256);
//   - the client's CertificateVerify, checked (ECDSA P-256);
//   - the CSR's signature, checked (proof the node holds the new key);
//   - the new CGC, signed (crypto/x509 also checks the signature it made).
//
// The CGC itself is not verified: the node record names the very
// certificate the keyserver issued (admission.Service.verify).
func BenchmarkRenewalCrypto(b *testing.B) {
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("transcript"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("kex-x25519mlkem768-server", func(b *testing.B) {
		dk, err := mlkem.GenerateKey768()
		if err != nil {
			b.Fatal(err)
		}
		ek := dk.EncapsulationKey().Bytes()
		peer, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			k, err := mlkem.NewEncapsulationKey768(ek)
			if err != nil {
				b.Fatal(err)
			}
			k.Encapsulate()
			priv, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := priv.ECDH(peer.PublicKey()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ecdsa-p256-sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ecdsa-p256-verify", func(b *testing.B) {
		pub := key.Public().(*ecdsa.PublicKey)
		for b.Loop() {
			if !ecdsa.VerifyASN1(pub, digest[:], sig) {
				b.Fatal("signature does not verify")
			}
		}
	})
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("csr-parse-and-check", func(b *testing.B) {
		for b.Loop() {
			if _, err := admission.ParseCSR(csr); err != nil {
				b.Fatal(err)
			}
		}
	})
	kg, err := authority.Generate(authority.Config{Name: authority.KeyGranting, Intermediate: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("cgc-sign", func(b *testing.B) {
		req := authority.Request{
			PublicKey:   key.Public(),
			CommonName:  "web1.example.org",
			URIs:        []*url.URL{admission.NodeURI("web1.example.org")},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			Lifetime:    30 * 24 * time.Hour,
		}
		for b.Loop() {
			if _, err := kg.Sign(req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
