package acme

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"

	"github.com/keysystem/keysystem/keyserver/store"
)

// PlaceholderLifetime is how long a placeholder certificate is valid; it
// is replaced when half of that is left.
const PlaceholderLifetime = 24 * time.Hour

// PlaceholderOrganization marks a placeholder in its subject, for anyone
// who looks at what a front end serves.
const PlaceholderOrganization = "keysystem placeholder: not yet issued by the CA"

// placeholder returns the label's placeholder version, making a new one
// (and keeping it, so every keyserver serves the same) when there is
// none or it is past half its life.
func (m *Manager) placeholder(ctx context.Context, label string) (*Version, error) {
	lc := m.cfg.Policy().ACMECert(label)
	for {
		st, raw, err := m.state(ctx, label)
		if err != nil {
			return nil, err
		}
		now := m.cfg.Now()
		if st.Current != nil {
			return st.Current, nil // obtained meanwhile
		}
		if p := st.Placeholder; p != nil && now.Before(p.NotAfter.Add(-PlaceholderLifetime/2)) && slices.Equal(p.Names, lc.Names) && len(p.Certs) == len(lc.KeyTypes) {
			return p, nil
		}
		v := &Version{Names: slices.Clone(lc.Names), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(PlaceholderLifetime), Certs: map[string]*CertFile{}}
		v.ReadyAt = v.NotBefore
		for _, kt := range lc.KeyTypes {
			key, err := certcrypto.GeneratePrivateKey(legoKeyTypes[kt])
			if err != nil {
				return nil, err
			}
			der, err := selfSigned(key.(crypto.Signer), lc.CommonName, lc.Names, v.NotBefore, v.NotAfter)
			if err != nil {
				return nil, fmt.Errorf("acme: %s placeholder: %w", label, err)
			}
			sealed, err := m.cfg.Sealer.Seal(certcrypto.PEMEncode(key), fmt.Sprintf("%s%s/0/%s", labelPrefix, label, kt))
			if err != nil {
				return nil, err
			}
			v.Certs[kt] = &CertFile{Fullchain: certcrypto.PEMEncode(certcrypto.DERCertificateBytes(der)), Key: sealed}
		}
		st.Placeholder = v
		if err := m.put(ctx, label, raw, st); errors.Is(err, store.ErrConflict) {
			continue // another keyserver made one, or the CA's came: use that
		} else if err != nil {
			return nil, err
		}
		m.cfg.Log.Info("acme placeholder made", "label", label, "not_after", v.NotAfter)
		return v, nil
	}
}

func selfSigned(key crypto.Signer, cn string, names []string, notBefore, notAfter time.Time) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{PlaceholderOrganization}},
		DNSNames:     names,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
}
