package keyclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/keysystem/keysystem/authority"
)

// ErrAnchorMismatch means the keyserver did not present a root matching the
// pinned trust anchor: it is not the keyserver this node was installed for,
// or someone is in the middle.
var ErrAnchorMismatch = errors.New("keyclient: keyserver does not match the pinned trust anchor")

// discoverAnchor finds the keyserver's root certificate, knowing only its
// pin. It shakes hands with an empty set of roots, which must fail; the
// failure carries the chain the server presented, in which the root whose
// public key matches the pin is looked for. The whole chain is then
// verified against that root, for the server's name, as an ordinary TLS
// client would. Nothing is accepted on the way without verification.
func discoverAnchor(ctx context.Context, serverURL, pin string, now time.Time) (*x509.Certificate, error) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, fmt.Errorf("keyclient: %w", err)
	}
	host := u.Hostname()
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(host, "443")
	}
	d := tls.Dialer{Config: &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: host,
		RootCAs:    x509.NewCertPool(), // nothing is trusted yet
	}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
		return nil, fmt.Errorf("keyclient: %s: handshake with no trusted roots succeeded, which cannot be", serverURL)
	}
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		return nil, fmt.Errorf("keyclient: reach %s: %w", serverURL, err)
	}
	presented := verr.UnverifiedCertificates
	var anchor *x509.Certificate
	var seen []string
	for _, c := range presented {
		p := authority.SPKIPin(c)
		seen = append(seen, p)
		if p == pin && c.IsCA && c.CheckSignatureFrom(c) == nil {
			anchor = c
		}
	}
	if anchor == nil {
		return nil, fmt.Errorf("%w: %s presented %s; the pin is %s", ErrAnchorMismatch, serverURL, strings.Join(seen, ", "), pin)
	}
	if err := verifyServer(presented, anchor, host, now); err != nil {
		return nil, err
	}
	return anchor, nil
}

// verifyServer checks a presented server chain against anchor for host.
func verifyServer(chain []*x509.Certificate, anchor *x509.Certificate, host string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("keyclient: keyserver certificate does not verify against the pinned anchor: %w", err)
	}
	return nil
}
