package acme

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"slices"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/policy"
)

// PlaceholderLifetime is how long a placeholder certificate is valid; it
// is replaced when half of that is left.
const PlaceholderLifetime = 24 * time.Hour

// PlaceholderOrganization marks a placeholder in its subject, for anyone
// who looks at what a front end serves.
const PlaceholderOrganization = "keysystem placeholder: not yet issued by the CA"

// fits reports whether placeholder v still stands for the label as the
// policy has it now, with at least half its life left.
func (m *Manager) fits(v *Version, lc *policy.ACMECert) bool {
	return covers(v, lc) && m.cfg.Now().Before(v.NotAfter.Add(-PlaceholderLifetime/2))
}

// placeholder returns the label's placeholder version, given its record
// st as last read, making a new one (kept in the store, so that every
// keyserver serves the same) when there is none that fits.
func (m *Manager) placeholder(ctx context.Context, lc *policy.ACMECert, st labelState) (*Version, error) {
	if m.fits(st.Placeholder, lc) {
		return st.Placeholder, nil
	}
	m.placeholderMu.Lock()
	defer m.placeholderMu.Unlock()
	var v *Version
	_, err := m.updateState(ctx, lc.Label, func(st *labelState) (bool, error) {
		if m.fits(st.Placeholder, lc) {
			v = st.Placeholder // made meanwhile, here or by another keyserver
			return false, nil
		}
		var err error
		v, err = m.newPlaceholder(lc)
		st.Placeholder = v
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	m.cfg.Log.Info("acme placeholder in use", "label", lc.Label, "not_after", v.NotAfter)
	return v, nil
}

func (m *Manager) newPlaceholder(lc *policy.ACMECert) (*Version, error) {
	now := m.cfg.Now()
	v := &Version{CommonName: lc.CommonName, Names: slices.Clone(lc.Names), NotBefore: now.Add(-authority.Backdate), NotAfter: now.Add(PlaceholderLifetime), Certs: map[string]*CertFile{}}
	v.ReadyAt = v.NotBefore
	for _, kt := range lc.KeyTypes {
		key, err := authority.GenerateKey(authority.KeyType(kt))
		if err != nil {
			return nil, err
		}
		cert, err := selfSigned(key, lc.CommonName, lc.Names, v.NotBefore, v.NotAfter)
		if err != nil {
			return nil, err
		}
		pemKey, err := authority.EncodeKeyPEM(key)
		if err != nil {
			return nil, err
		}
		sealed, err := m.cfg.Sealer.Seal(pemKey, keyWhere(lc.Label, 0, kt))
		if err != nil {
			return nil, err
		}
		v.Certs[kt] = &CertFile{Fullchain: authority.EncodePEM(cert), Key: sealed}
	}
	return v, nil
}

func selfSigned(key crypto.Signer, cn string, names []string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := authority.Serial(rand.Reader)
	if err != nil {
		return nil, err
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := key.Public().(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange, as authority.Sign
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{PlaceholderOrganization}},
		DNSNames:     names,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     ku,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
