package keyclient

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
)

// An acme item keeps, for a label of the policy's acme section, the
// certificate the keyserver obtained from the CA and its private key. The
// key is made by the keyserver and shared by every node the label names
// (front ends behind one name), so unlike an x509 item the node neither
// makes a key nor asks for a certificate: it fetches the version the
// keyserver serves, checks that the certificate and the key belong
// together, and writes them.

// ACMEDir, in the state directory, holds the version each acme item last
// fetched (ACMEDir/<id>.json, 0600): its files are put back from it
// without a keyserver, and a restarted client knows what it holds.
const ACMEDir = "acme"

// acmePlaceholderRefresh is how often an item that holds the keyserver's
// placeholder asks again, when its refresh is longer: until the real
// certificate comes, the front end serves one no client accepts.
const acmePlaceholderRefresh = 5 * time.Minute

// acmeFetchAttempts bounds how often a certificate and its key are
// fetched again in one pass because a new version landed between the
// two requests (which takes a renewal coming into service within those
// milliseconds: twice in a row is already unlikely).
const acmeFetchAttempts = 3

// acmeHeld is one version of a label's certificate with its key, checked
// to belong together, in the form the item's files take.
type acmeHeld struct {
	etag    string // the keyserver's, shared by the certificate and its key
	version int    // 0: the keyserver's self-signed placeholder
	leaf    *x509.Certificate

	fullchain, cert, chain, key []byte // PEM, as written
}

func (h *acmeHeld) placeholder() bool { return h.version == 0 }

// parseACME checks a full chain and a key fetched together: the chain is
// the certificate followed by its issuers, each signed by the next, the
// key is the certificate's, and its type is of the family asked for ("":
// any). It renders the files from them: the certificate alone, the chain
// without it (empty for a self-signed placeholder), and the key as PKCS
// #8.
func parseACME(fullchain, keyPEM []byte, family string) (*acmeHeld, error) {
	certs, err := pemutil.ParseCertificateBundle(fullchain)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("unusable full chain: %v", err)
	}
	leaf, chain := certs[0], certs[1:]
	if err := signedInTurn(leaf, chain); err != nil {
		return nil, fmt.Errorf("the full chain is not a certificate followed by its issuers: %w", err)
	}
	key, err := parseSigner(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("unusable key: %w", err)
	}
	if keyutil.VerifyPair(leaf.PublicKey, key) != nil {
		return nil, errors.New("the key does not match the certificate")
	}
	if kt := authority.KeyTypeOf(leaf.PublicKey); family != "" && !strings.HasPrefix(kt, family+"-") {
		return nil, fmt.Errorf("the certificate has a %s key; key_type %s was asked for", kt, family)
	}
	keyOut, err := authority.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &acmeHeld{
		leaf:      leaf,
		fullchain: authority.EncodePEM(certs...),
		cert:      authority.EncodePEM(leaf),
		chain:     authority.EncodePEM(chain...),
		key:       keyOut,
	}, nil
}

// keepACME does one pass for an acme item. Its files are compared with
// the version held, and every one that is missing, differs, or has
// another mode or owner than configured is written again from it (no
// keyserver call). Every refresh interval, at once when no version is
// held, and when forced, the keyserver is asked for the label's version,
// conditionally (If-None-Match with the ETag held, unless forced), and a
// new one is written.
func (c *Client) keepACME(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	done := ActionNone
	if it.acme != nil {
		fixed, exposed, err := writeACMEFiles(it.spec, it.acme)
		if err != nil {
			return ActionFailed, err
		}
		if len(fixed) > 0 {
			c.log.Warn("acme item files missing, changed, or with another mode or owner on disk; writing them again from the version held",
				"item", it.spec.id, "version", it.acme.version, "problem", strings.Join(fixed, "; "))
			done = ActionRecreated
		}
		if exposed {
			c.log.Warn("private key was readable beyond what the config allows; every node of the label shares it, so only `keyctl acme renew "+it.spec.name+"` replaces it",
				"item", it.spec.id, "key", it.spec.key)
		}
	}
	if !force && it.acme != nil && now.Before(it.nextRefresh) {
		return done, nil
	}
	act, err := c.refreshACME(ctx, it, now, force)
	switch {
	case err != nil && done != ActionNone:
		return done, err // the files were put back all the same
	case err != nil:
		return ActionFailed, err
	case act != ActionNone:
		return act, nil
	}
	return done, nil
}

// refreshACME asks the keyserver for the label's version and writes it
// when it is not the one held. The version is first kept in the state
// directory, then written to the item's files: should the client stop in
// between, the next pass (or start) completes them from there.
func (c *Client) refreshACME(ctx context.Context, it *item, now time.Time, force bool) (Action, error) {
	if err := c.requireCGC(now); err != nil {
		return ActionFailed, err
	}
	inm := ""
	if it.acme != nil && !force {
		inm = it.acme.etag
	}
	h, err := c.fetchACME(ctx, it, now, inm)
	if err != nil {
		return ActionFailed, err
	}
	if h == nil {
		it.nextRefresh = now.Add(it.jittered(it.acmeRefresh()))
		return ActionNone, nil
	}
	prev := it.acme
	if prev != nil && prev.etag == h.etag {
		// The version held (a forced refresh asks without If-None-Match):
		// its files were checked at the start of the pass.
		it.nextRefresh = now.Add(it.jittered(it.acmeRefresh()))
		return ActionNone, nil
	}
	fresh := prev == nil && noneExist(it.spec.files())
	if err := c.saveACMECopy(it, h); err != nil {
		return ActionFailed, err
	}
	it.takeACME(h)
	it.nextRefresh = now.Add(it.jittered(it.acmeRefresh()))
	if prev != nil && h.version < prev.version && !h.placeholder() {
		c.log.Warn("keyserver serves an older version of the label than the one held (its store restored from a backup?); taking it",
			"item", it.spec.id, "held", prev.version, "served", h.version)
	}
	fixed, _, err := writeACMEFiles(it.spec, h)
	switch {
	case err != nil:
		return ActionFailed, err // the version is held: the next pass writes it
	case len(fixed) == 0:
		return ActionNone, nil // the files hold it already
	case fresh:
		return ActionIssued, nil
	case prev == nil || prev.etag != h.etag:
		return ActionUpdated, nil
	}
	return ActionRecreated, nil
}

// acmeRefresh is how long the item waits before it asks the keyserver
// again (before jitter).
func (it *item) acmeRefresh() time.Duration {
	if it.acme != nil && it.acme.placeholder() {
		return min(it.spec.refresh, acmePlaceholderRefresh)
	}
	return it.spec.refresh
}

// takeACME makes h the version held.
func (it *item) takeACME(h *acmeHeld) {
	it.acme = h
	it.serial, it.notAfter, it.held = authority.SerialText(h.leaf), h.leaf.NotAfter, true
}

// fetchACME gets the label's version: the full chain (conditionally,
// when ifNoneMatch is not ""), then the key, and checks that both are of
// one version (the same ETag and version number) and that the key is the
// certificate's. When a new version landed between the two requests,
// both are fetched again, at most acmeFetchAttempts times in all. It
// returns nil, and no error, when nothing is to be written: the keyserver
// answered 304 Not Modified, or it serves its placeholder while the item
// holds a real certificate that is still valid (a key type newly added to
// the label, or the label's record lost at the keyserver: a front end
// keeps what clients accept). A certificate that has expired already is
// refused when the one held is still valid.
func (c *Client) fetchACME(ctx context.Context, it *item, now time.Time, ifNoneMatch string) (*acmeHeld, error) {
	s, held := it.spec, it.acme
	var last string
	for range acmeFetchAttempts {
		full, err := c.remote.acmeFile(ctx, s.name, s.family, acmeFullchainFile, ifNoneMatch)
		if err != nil {
			return nil, err
		}
		if full.NotModified {
			if ifNoneMatch == "" {
				return nil, fmt.Errorf("keyclient: acme %s: keyserver answered 304 Not Modified to a request without If-None-Match", s.name)
			}
			c.log.Debug("acme certificate not modified", "item", it.spec.id, "version", held.version)
			return nil, nil
		}
		if full.Version == 0 && held != nil && !held.placeholder() && now.Before(held.leaf.NotAfter) {
			c.log.Warn("keyserver serves only its placeholder for the label; keeping the real certificate held",
				"item", it.spec.id, "version", held.version, "not_after", held.leaf.NotAfter)
			return nil, nil
		}
		key, err := c.remote.acmeFile(ctx, s.name, s.family, acmeKeyFile, "")
		if err != nil {
			return nil, err
		}
		if key.NotModified {
			return nil, fmt.Errorf("keyclient: acme %s: keyserver answered 304 Not Modified to a request without If-None-Match", s.name)
		}
		if key.ETag != full.ETag || key.Version != full.Version {
			last = fmt.Sprintf("certificate of version %d (ETag %s), key of version %d (ETag %s)", full.Version, full.ETag, key.Version, key.ETag)
			c.log.Info("a new version landed between fetching the certificate and its key; fetching both again", "item", it.spec.id, "fetched", last)
			ifNoneMatch = ""
			continue
		}
		h, err := parseACME(full.Body, key.Body, s.family)
		if err != nil {
			return nil, fmt.Errorf("keyclient: acme %s: keyserver sent version %d: %w; nothing written", s.name, full.Version, err)
		}
		h.etag, h.version = full.ETag, full.Version
		if !now.Before(h.leaf.NotAfter) && held != nil && now.Before(held.leaf.NotAfter) {
			return nil, fmt.Errorf("keyclient: acme %s: keyserver serves version %d, which expired at %s; keeping version %d, valid until %s",
				s.name, h.version, h.leaf.NotAfter.UTC().Format(time.RFC3339), held.version, held.leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return h, nil
	}
	return nil, fmt.Errorf("keyclient: acme %s: the certificate and its key came from different versions %d times in a row (last: %s); nothing written",
		s.name, acmeFetchAttempts, last)
}

// writeACMEFiles writes those of the item's files that are missing,
// differ from h, or have another mode or owner than configured, and says
// what it put right (nothing, when every file was as it should be), and
// whether the key on disk was exposed (see attrCheck).
//
// As for an x509 item (writeX509Files), every file to write is first
// staged (written beside its target, synced, given its owner and mode),
// and only when all are staged are they renamed into place, one right
// after the other: the key, then at once the full chain and the
// certificate, so that the key and the certificate a server reads
// disagree at most between two renames (three, for a service that reads
// cert while fullchain is also kept); the chain, which holds no key's
// certificate, last. A failure before the renames changes nothing. The
// real guarantee is the reload command: it runs once, after every file
// of the item is in place, and servers such as nginx and haproxy read
// key and certificate only then. Should the client stop between two
// renames, the next pass finds the files apart from the version held
// and completes them.
func writeACMEFiles(s *itemSpec, h *acmeHeld) (fixed []string, exposed bool, err error) {
	own := s.fileOwner()
	files := []struct {
		f    attrFile
		data []byte
	}{
		{attrFile{"key", s.key, s.mode, true}, h.key},
		{attrFile{"fullchain", s.fullchain, certMode, false}, h.fullchain},
		{attrFile{"cert", s.cert, certMode, false}, h.cert},
		{attrFile{"chain", s.chain, certMode, false}, h.chain},
	}
	var staged []*keyfile.Staged
	defer func() {
		for _, st := range staged {
			st.Abort() // does nothing to those committed
		}
	}()
	for _, x := range files {
		if x.f.path == "" {
			continue
		}
		disk, rerr := os.ReadFile(x.f.path)
		wrong, exp := fileAttrs(x.f, own)
		switch {
		case errors.Is(rerr, os.ErrNotExist):
			fixed = append(fixed, fmt.Sprintf("%s %s is missing", x.f.what, x.f.path))
		case rerr != nil:
			fixed = append(fixed, fmt.Sprintf("%s %s is unreadable: %v", x.f.what, x.f.path, rerr))
		case !bytes.Equal(disk, x.data):
			fixed = append(fixed, fmt.Sprintf("%s %s differs from version %d", x.f.what, x.f.path, h.version))
		case len(wrong) > 0:
			fixed = append(fixed, wrong...)
		default:
			continue
		}
		exposed = exposed || exp
		st, err := stageOwned(s, x.f.path, x.data, x.f.mode)
		if err != nil {
			return nil, exposed, err
		}
		staged = append(staged, st)
	}
	for _, st := range staged {
		if err := st.Commit(); err != nil {
			return nil, exposed, fmt.Errorf("keyclient: %s: %w", s.label(), err)
		}
	}
	return fixed, exposed, nil
}

// acmeCopy is the form of the version held in the state directory.
type acmeCopy struct {
	Label     string `json:"label"`
	KeyType   string `json:"key_type,omitempty"` // the item's family; "" the label's first key type
	ETag      string `json:"etag"`
	Version   int    `json:"version"`
	Fullchain string `json:"fullchain"`
	Key       string `json:"key"`
}

// acmeCopyPath is where the state directory keeps the version an acme
// item holds.
func acmeCopyPath(stateDir, id string) string {
	return filepath.Join(stateDir, ACMEDir, id+".json")
}

// saveACMECopy keeps h in the state directory, atomically, 0600: it
// holds a private key, like cgc.pem beside it.
func (c *Client) saveACMECopy(it *item, h *acmeHeld) error {
	data, err := json.Marshal(acmeCopy{Label: it.spec.name, KeyType: it.spec.family, ETag: h.etag, Version: h.version,
		Fullchain: string(h.fullchain), Key: string(h.key)})
	if err != nil {
		return fmt.Errorf("keyclient: %s: %w", it.spec.label(), err)
	}
	if err := os.MkdirAll(filepath.Join(c.cfg.StateDir, ACMEDir), 0o700); err != nil {
		return fmt.Errorf("keyclient: %s: %w", it.spec.label(), err)
	}
	if err := keyfile.Write(acmeCopyPath(c.cfg.StateDir, it.spec.id), data, 0o600); err != nil {
		return fmt.Errorf("keyclient: %s: keeping the version in the state directory: %w", it.spec.label(), err)
	}
	return nil
}

// loadACMECopy takes the version kept in the state directory as the one
// the item holds, when it is for the item's label and key type and its
// certificate and key still belong together. rec is the item's entry in
// the status file: when it names another version (or there is none), the
// client stopped after it kept the version and before it recorded the
// change, so the files may not all be in place and the reload command
// did not run. The next pass completes the files, and the reload is owed.
func (c *Client) loadACMECopy(it *item, rec *ItemStatus) {
	path := acmeCopyPath(c.cfg.StateDir, it.spec.id)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var cp acmeCopy
	if err == nil {
		err = json.Unmarshal(data, &cp)
	}
	var h *acmeHeld
	switch {
	case err != nil:
	case cp.Label != it.spec.name || cp.KeyType != it.spec.family:
		err = fmt.Errorf("it is for label %q, key type %q", cp.Label, cp.KeyType)
	case cp.ETag == "" || cp.Version < 0:
		err = errors.New("no ETag or version")
	case rec != nil && rec.ETag != "" && rec.ETag != cp.ETag && rec.Version > cp.Version:
		// The copy is written before the status file, never after: one
		// older than the status file's was put there by hand.
		err = fmt.Errorf("it holds version %d, older than version %d the status file records", cp.Version, rec.Version)
	default:
		h, err = parseACME([]byte(cp.Fullchain), []byte(cp.Key), it.spec.family)
	}
	if err != nil {
		c.log.Warn("ignoring the acme item's copy in the state directory; the keyserver is asked at once", "item", it.spec.id, "path", path, "err", err)
		return
	}
	h.etag, h.version = cp.ETag, cp.Version
	it.takeACME(h)
	if (rec == nil || rec.ETag != h.etag) && it.spec.reload != "" && it.reload.event == "" {
		c.log.Info("the last run kept a new version without recording its reload; the files are checked and the reload runs at the next pass",
			"item", it.spec.id, "version", h.version)
		it.reload.event = ActionUpdated
	}
}

// readACMEFiles checks an acme item's files on their own, for `keyclient
// status`: the key parses and is the certificate's, the certificate,
// full chain and chain agree, and the key type is the configured family.
// It returns the certificate.
func readACMEFiles(s *itemSpec) (*x509.Certificate, error) {
	if noneExist(s.files()) {
		return nil, &FileProblem{Missing: true, Msg: "no files yet"}
	}
	keyPEM, err := readFile("key", s.key)
	if err != nil {
		return nil, err
	}
	key, err := parseSigner(keyPEM)
	if err != nil {
		return nil, problemf("key %s: %v", s.key, err)
	}
	var leaf *x509.Certificate
	var full []*x509.Certificate
	if s.fullchain != "" {
		if full, err = readBundle("fullchain", s.fullchain); err != nil {
			return nil, err
		}
		if len(full) == 0 {
			return nil, problemf("fullchain %s holds no certificate", s.fullchain)
		}
		leaf = full[0]
	}
	if s.cert != "" {
		cert, err := readCert("cert", s.cert)
		if err != nil {
			return nil, err
		}
		if leaf != nil && !leaf.Equal(cert) {
			return nil, problemf("fullchain %s does not start with certificate %s", s.fullchain, s.cert)
		}
		leaf = cert
	}
	certPath := s.cert
	if certPath == "" {
		certPath = s.fullchain
	}
	if err := keyutil.VerifyPair(leaf.PublicKey, key); err != nil {
		return nil, problemf("key %s does not match certificate %s", s.key, certPath)
	}
	if kt := authority.KeyTypeOf(leaf.PublicKey); s.family != "" && !strings.HasPrefix(kt, s.family+"-") {
		return nil, problemf("certificate %s has a %s key; the config asks for %s", certPath, kt, s.family)
	}
	var chain []*x509.Certificate
	if full != nil {
		chain = full[1:]
	}
	if s.chain != "" {
		c, err := readBundle("chain", s.chain)
		if err != nil {
			return nil, err
		}
		if full != nil && !slices.EqualFunc(chain, c, (*x509.Certificate).Equal) {
			return nil, problemf("fullchain %s does not hold chain %s", s.fullchain, s.chain)
		}
		chain = c
	}
	if err := signedInTurn(leaf, chain); err != nil {
		return nil, problemf("issuer chain does not belong to certificate %s: %v", certPath, err)
	}
	return leaf, nil
}
