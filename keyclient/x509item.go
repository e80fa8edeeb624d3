package keyclient

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
)

// keepX509 does one pass for an x509 item. Its files are read and checked
// (no keyserver call); a new certificate, for a new key, is requested at
// once when they are missing or do not agree, when the key was readable
// by others, when the certificate is due or forced, and when the grant,
// asked for every refresh interval, no longer matches the certificate.
// Files that are good but have another mode or owner than configured are
// written again as they are.
func (c *Client) keepX509(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	files, err := readX509Files(it.spec)
	var (
		why       Action
		rewritten bool // the files were written again, for their mode or owner
		fp        *FileProblem
	)
	switch {
	case errors.As(err, &fp) && fp.Missing && !it.held:
		why = ActionIssued
	case err != nil:
		c.log.Warn("item files need repair", "item", it.spec.id, "problem", err)
		why = ActionRecreated
	default:
		it.observe(files)
		if attrs := checkAttrs(it.spec); len(attrs.wrong) > 0 {
			// Put right at once, even for a key about to be replaced: that
			// needs the keyserver, which may not answer.
			if attrs.exposed {
				c.log.Warn("private key was readable beyond what the config allows: it is taken as compromised and replaced, with a new certificate",
					"item", it.spec.id, "key", it.spec.key, "problem", attrs)
				why = ActionRecreated
			} else {
				c.log.Warn("item files have another mode or owner than configured; writing them again", "item", it.spec.id, "problem", attrs)
			}
			if err := writeX509Files(it.spec, files.key, files.leaf, files.chain, files.root); err != nil {
				return ActionFailed, err
			}
			rewritten = !attrs.exposed
		}
		if why == "" && (force || !now.Before(it.renewAt)) {
			why = ActionRenewed
		}
	}
	var g *api.GrantInfo
	if why == "" {
		done := ActionNone
		if rewritten {
			done = ActionRecreated
		}
		if now.Before(it.nextRefresh) {
			return done, nil
		}
		var stale error
		g, stale, err = c.checkGrant(ctx, it, files, now)
		if err != nil {
			if done != ActionNone {
				return done, err // the files were rewritten all the same
			}
			return ActionFailed, err
		}
		if stale == nil {
			return done, nil
		}
		c.log.Info("certificate no longer matches its grant", "item", it.spec.id, "difference", stale)
		why = ActionUpdated
	}
	if err := c.issueX509(ctx, it, now, g); err != nil {
		return ActionFailed, err
	}
	return why, nil
}

// observe takes note of a good certificate on disk. Its renewal time is
// drawn once per certificate, so that checks do not move it about.
func (it *item) observe(f *x509Files) {
	serial := authority.SerialText(f.leaf)
	if serial != it.serial {
		it.serial, it.rootPin, it.renewAt = serial, "", time.Time{}
	}
	if it.renewAt.IsZero() {
		it.renewAt = RenewTime(f.leaf.NotBefore, f.leaf.NotAfter, it.rnd.Float64())
	}
	if f.rootVerified {
		it.rootPin = authority.SPKIPin(f.root)
	}
	it.notAfter = f.leaf.NotAfter
	it.held = true
}

// checkGrant asks the keyserver what the grant says now and compares the
// certificate with it; stale says how they differ, nil when they agree.
// The grant is returned for the new certificate stale calls for.
func (c *Client) checkGrant(ctx context.Context, it *item, f *x509Files, now time.Time) (g *api.GrantInfo, stale, err error) {
	g, err = c.fetchGrant(ctx, it, now)
	if err != nil {
		return nil, nil, err
	}
	it.nextRefresh = now.Add(it.jittered(it.spec.refresh))
	return g, grantMismatch(f.leaf, it.rootPin, g, it.spec), nil
}

// fetchGrant gets the grant and checks that an x509 item can use it.
func (c *Client) fetchGrant(ctx context.Context, it *item, now time.Time) (*api.GrantInfo, error) {
	if err := c.requireCGC(now); err != nil {
		return nil, err
	}
	g, err := c.remote.grant(ctx, it.spec.name)
	if err != nil {
		return nil, err
	}
	switch {
	case g.Type != TypeX509:
		return nil, fmt.Errorf("keyclient: grant %s is of type %q; use a %s item for it", it.spec.name, g.Type, g.Type)
	case g.Error != "":
		return nil, fmt.Errorf("keyclient: grant %s cannot be rendered for this node: %s", it.spec.name, g.Error)
	case len(g.KeyTypes) > 0 && !slices.Contains(g.KeyTypes, string(it.spec.keyType)):
		return nil, fmt.Errorf("keyclient: grant %s does not allow key_type %s (it allows %s)", it.spec.name, it.spec.keyType, strings.Join(g.KeyTypes, ", "))
	}
	return g, nil
}

// issueX509 gets a new certificate for a new key and writes it. The
// answer is checked against the grant: g when the caller just asked for
// it, else it is asked first.
func (c *Client) issueX509(ctx context.Context, it *item, now time.Time, g *api.GrantInfo) error {
	if g == nil {
		var err error
		if g, err = c.fetchGrant(ctx, it, now); err != nil {
			return err
		}
	}
	key, err := authority.GenerateKey(it.spec.keyType)
	if err != nil {
		return err
	}
	csr, err := csrPEM(key, it.spec.csrTemplate())
	if err != nil {
		return err
	}
	resp, err := c.remote.sign(ctx, it.spec.name, csr)
	if err != nil {
		return err
	}
	leaf, chain, root, err := checkIssued(resp, key, it.spec.name, g, now)
	if err != nil {
		return fmt.Errorf("keyclient: grant %s: %w", it.spec.name, err)
	}
	pin := authority.SPKIPin(root)
	if stale := grantMismatch(leaf, pin, g, it.spec); stale != nil {
		return fmt.Errorf("keyclient: grant %s: keyserver issued a certificate that does not match the grant: %w", it.spec.name, stale)
	}
	if err := writeX509Files(it.spec, key, leaf, chain, root); err != nil {
		return err
	}
	it.serial, it.rootPin, it.notAfter, it.held = authority.SerialText(leaf), pin, leaf.NotAfter, true
	it.renewAt = RenewTime(leaf.NotBefore, leaf.NotAfter, it.rnd.Float64())
	// A certificate due as soon as it is issued (its issuer is about to
	// expire, or the clock is far ahead) would be renewed at once, again
	// and again: the next renewal waits MinBackoff, doubling each time.
	if earliest := now.Add(c.opts.MinBackoff); it.renewAt.Before(earliest) {
		it.dueEarly++
		wait := doubled(c.opts.MinBackoff, c.opts.MaxBackoff, it.dueEarly)
		it.renewAt = now.Add(wait)
		c.log.Warn("new certificate is due for renewal already (its issuer expires soon, or the clock is off); it is renewed later",
			"item", it.spec.id, "not_before", leaf.NotBefore, "not_after", leaf.NotAfter, "renew_at", it.renewAt)
	} else {
		it.dueEarly = 0
	}
	it.nextRefresh = now.Add(it.jittered(it.spec.refresh))
	return nil
}

// csrTemplate carries the extra names the item asks for, nothing else:
// the grant decides the rest.
func (s *itemSpec) csrTemplate() *x509.CertificateRequest {
	tmpl := &x509.CertificateRequest{DNSNames: s.dns, URIs: s.uris}
	for _, a := range s.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.AsSlice()))
	}
	return tmpl
}

// checkIssued accepts a keyserver's answer only when the certificate is
// for key, chains through the chain sent to the root sent, that root is
// the one the grant names, and it is valid now, or from its NotBefore on
// when that is later: a node whose clock is behind the keyserver's by more
// than the backdating (authority.Backdate) still takes it. A certificate
// that has expired by now is refused.
func checkIssued(resp *api.CertificateResponse, key crypto.Signer, grant string, g *api.GrantInfo, now time.Time) (leaf *x509.Certificate, chain []*x509.Certificate, root *x509.Certificate, err error) {
	if resp.Grant != "" && resp.Grant != grant {
		return nil, nil, nil, fmt.Errorf("keyserver answered for grant %q", resp.Grant)
	}
	leaf, err = onePEMCert([]byte(resp.Certificate))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("keyserver sent an unusable certificate: %w", err)
	}
	if strings.TrimSpace(resp.Chain) != "" {
		if chain, err = pemutil.ParseCertificateBundle([]byte(resp.Chain)); err != nil {
			return nil, nil, nil, fmt.Errorf("keyserver sent an unusable chain: %w", err)
		}
	}
	root, err = onePEMCert([]byte(resp.Root))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("keyserver sent an unusable root: %w", err)
	}
	if keyutil.VerifyPair(leaf.PublicKey, key) != nil {
		return nil, nil, nil, errors.New("keyserver sent a certificate for another key")
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		return nil, nil, nil, errors.New("keyserver sent a root that is not a self-signed authority certificate")
	}
	if pin := authority.SPKIPin(root); pin != g.RootPin {
		return nil, nil, nil, fmt.Errorf("keyserver sent root %s, but the grant names root %s", pin, g.RootPin)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range chain {
		inter.AddCert(c)
	}
	at := now
	if leaf.NotBefore.After(at) {
		at = leaf.NotBefore
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, nil, nil, fmt.Errorf("certificate does not verify against the root sent: %w", err)
	}
	if err := signedInTurn(leaf, chain); err != nil {
		return nil, nil, nil, fmt.Errorf("chain sent is not the certificate's issuers in order: %w", err)
	}
	return leaf, chain, root, nil
}

// onePEMCert parses a PEM text of exactly one certificate
// (pemutil.ParseCertificate would take the first of several).
func onePEMCert(data []byte) (*x509.Certificate, error) {
	certs, err := pemutil.ParseCertificateBundle(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%d certificates where one was expected", len(certs))
	}
	return certs[0], nil
}

// grantMismatch says how a certificate differs from what the grant gives
// and the item asks for, or nil: the subject (its common name, and all of
// it when the keyserver sends it), every granted name, the extra names
// (exactly those the item asks for), the usage, the root (its pin; ""
// means unknown, which counts as different) and the key type.
func grantMismatch(leaf *x509.Certificate, rootPin string, g *api.GrantInfo, s *itemSpec) error {
	var diff []string
	if leaf.Subject.CommonName != g.CommonName {
		diff = append(diff, fmt.Sprintf("common name %q, the grant says %q", leaf.Subject.CommonName, g.CommonName))
	} else if g.Subject != "" && leaf.Subject.String() != g.Subject {
		diff = append(diff, fmt.Sprintf("subject %q, the grant says %q", leaf.Subject.String(), g.Subject))
	}
	dns, ips, uris := certNames(leaf)
	diff = append(diff, compareNames("DNS name", dns, lowerAll(g.DNSNames), lowerAll(s.dns))...)
	var granted []string
	for _, a := range g.IPAddresses {
		if p, err := netip.ParseAddr(a); err == nil {
			a = p.Unmap().String()
		}
		granted = append(granted, a)
	}
	var asked []string
	for _, a := range s.ips {
		asked = append(asked, a.String())
	}
	diff = append(diff, compareNames("IP address", ips, granted, asked)...)
	asked = nil
	for _, u := range s.uris {
		asked = append(asked, u.String())
	}
	diff = append(diff, compareNames("URI", uris, g.URIs, asked)...)
	if want := policy.Usage(g.Usage).ExtKeyUsage(); want != nil && !sameUsages(leaf.ExtKeyUsage, want) {
		diff = append(diff, fmt.Sprintf("usage differs from %q", g.Usage))
	}
	switch rootPin {
	case g.RootPin:
	case "":
		diff = append(diff, "the root it was issued under is not known")
	default:
		diff = append(diff, fmt.Sprintf("issued under root %s, the grant's is %s", rootPin, g.RootPin))
	}
	if kt := authority.KeyTypeOf(leaf.PublicKey); len(g.KeyTypes) > 0 && !slices.Contains(g.KeyTypes, kt) {
		diff = append(diff, fmt.Sprintf("key type %s is no longer allowed", kt))
	}
	if len(diff) == 0 {
		return nil
	}
	return errors.New(strings.Join(diff, "; "))
}

func sameUsages(have, want []x509.ExtKeyUsage) bool {
	h, w := slices.Clone(have), slices.Clone(want)
	slices.Sort(h)
	slices.Sort(w)
	return slices.Equal(slices.Compact(h), slices.Compact(w))
}

// compareNames compares one kind of name: every granted name must be in
// the certificate, and the others in it must be exactly those asked for.
func compareNames(kind string, have map[string]bool, granted, asked []string) []string {
	var diff []string
	g := map[string]bool{}
	for _, n := range granted {
		g[n] = true
		if !have[n] {
			diff = append(diff, fmt.Sprintf("%s %s is granted but not in the certificate", kind, n))
		}
	}
	a := map[string]bool{}
	for _, n := range asked {
		a[n] = true
		if !g[n] && !have[n] {
			diff = append(diff, fmt.Sprintf("%s %s is asked for but not in the certificate", kind, n))
		}
	}
	for n := range have {
		if !g[n] && !a[n] {
			diff = append(diff, fmt.Sprintf("%s %s is in the certificate but neither granted nor asked for", kind, n))
		}
	}
	slices.Sort(diff)
	return diff
}

func lowerAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}
