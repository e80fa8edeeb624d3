package zone

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/go-acme/lego/v4/challenge"
)

var _ challenge.ProviderTimeout = (*Provider)(nil)

// storeTimeout bounds Present's and CleanUp's store writes: lego's
// interface passes no context.
const storeTimeout = 30 * time.Second

// Provider is lego's dns-01 provider for a zone that Server answers:
// Present puts the challenge's TXT value in the store, where every
// keyserver's Server answers with it at once, and CleanUp takes it out.
type Provider struct {
	Store Store
	Zone  string           // the delegated zone, as in Config.Zone
	Now   func() time.Time // default time.Now
}

// Present adds the TXT value for domain's challenge at Name(Zone, domain).
// The value is computed here rather than by lego's dns01.GetChallengeInfo,
// which also looks up CNAMEs through lego's package-global resolver: the
// name is known, since the operator's CNAME points into this zone.
func (p *Provider) Present(domain, token, keyAuth string) error {
	name, err := p.name(domain)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return Add(ctx, p.Store, name, txtValue(keyAuth), p.now())
}

// CleanUp removes the TXT value Present added, leaving any other
// challenge's at the same name.
func (p *Provider) CleanUp(domain, token, keyAuth string) error {
	name, err := p.name(domain)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	return Remove(ctx, p.Store, name, txtValue(keyAuth))
}

// Timeout is how long lego's pre-check waits for the value to be served,
// and how often it asks. There is no propagation to wait for, as every
// keyserver answers from the store once Present returns; the minute
// allows for a slow path to the zone's servers.
func (p *Provider) Timeout() (timeout, interval time.Duration) {
	return time.Minute, time.Second
}

func (p *Provider) name(domain string) (string, error) {
	if p.Zone == "" {
		return "", errors.New("zone: the dns-01 provider has no zone")
	}
	name := Name(p.Zone, domain)
	if err := checkName(name); err != nil {
		return "", fmt.Errorf("zone: %s cannot be validated in %s: %w", domain, p.Zone, err)
	}
	return name, nil
}

func (p *Provider) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// txtValue is the TXT value of a dns-01 challenge (RFC 8555 §8.4): the
// base64url SHA-256 digest of the key authorization, without padding.
func txtValue(keyAuth string) string {
	sum := sha256.Sum256([]byte(keyAuth))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
