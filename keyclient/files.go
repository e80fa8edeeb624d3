package keyclient

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
)

// x509Files is what an x509 item's files hold, once they were found to
// agree with each other and with the item's settings.
type x509Files struct {
	key   crypto.Signer
	leaf  *x509.Certificate
	chain []*x509.Certificate // from the chain or fullchain file; nil when neither is configured
	root  *x509.Certificate   // from the ca file; nil without one
	// rootVerified says the leaf was checked to chain up to root; without
	// a chain file and with an intermediate in between, it cannot be.
	rootVerified bool
}

// FileProblem says why an item's files cannot be used as they are; the
// item is then re-requested (or rewritten) at once.
type FileProblem struct {
	Missing bool // none of the item's files exists: it was never written
	Msg     string
}

func (p *FileProblem) Error() string { return p.Msg }

func problemf(format string, a ...any) *FileProblem {
	return &FileProblem{Msg: fmt.Sprintf(format, a...)}
}

// readFile reads one of an item's files, naming the trouble as a problem.
func readFile(what, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, problemf("%s %s is missing", what, path)
	case err != nil:
		return nil, problemf("%s %s is unreadable: %v", what, path, err)
	}
	return data, nil
}

// readX509Files checks an x509 item's files: cheap (read and parse, no
// keyserver), so it is done at every check. Any disagreement is a
// *FileProblem: a missing or unreadable file, a key that does not match
// the certificate, a key of another type than configured, a certificate
// without the extra names the item asks for, chain, fullchain or ca files
// that do not belong to the certificate. Expiry is not a problem here; it
// is a reason to renew.
func readX509Files(s *itemSpec) (*x509Files, error) {
	if noneExist(s.files()) {
		return nil, &FileProblem{Missing: true, Msg: "no files yet"}
	}
	var f x509Files
	keyPEM, err := readFile("key", s.key)
	if err != nil {
		return nil, err
	}
	if f.key, err = parseSigner(keyPEM); err != nil {
		return nil, problemf("key %s: %v", s.key, err)
	}
	if f.leaf, err = readCert("cert", s.cert); err != nil {
		return nil, err
	}
	if err := keyutil.VerifyPair(f.leaf.PublicKey, f.key); err != nil {
		return nil, problemf("key %s does not match certificate %s", s.key, s.cert)
	}
	if got := authority.KeyTypeOf(f.leaf.PublicKey); got != string(s.keyType) {
		return nil, problemf("certificate %s has a %s key; the config asks for %s", s.cert, got, s.keyType)
	}
	if missing := missingExtras(f.leaf, s); len(missing) > 0 {
		return nil, problemf("certificate %s lacks %s, which the config asks for", s.cert, strings.Join(missing, ", "))
	}
	if err := f.readIssuers(s); err != nil {
		return nil, err
	}
	return &f, nil
}

func noneExist(paths []string) bool {
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			return false
		}
	}
	return true
}

// readIssuers reads and checks the chain, fullchain and ca files.
func (f *x509Files) readIssuers(s *itemSpec) error {
	if s.chain != "" {
		chain, err := readBundle("chain", s.chain)
		if err != nil {
			return err
		}
		f.chain = chain
	}
	if s.fullchain != "" {
		full, err := readBundle("fullchain", s.fullchain)
		if err != nil {
			return err
		}
		if len(full) == 0 || !full[0].Equal(f.leaf) {
			return problemf("fullchain %s does not start with certificate %s", s.fullchain, s.cert)
		}
		if s.chain != "" && !slices.EqualFunc(full[1:], f.chain, (*x509.Certificate).Equal) {
			return problemf("fullchain %s does not hold chain %s", s.fullchain, s.chain)
		}
		f.chain = full[1:]
	}
	if err := signedInTurn(f.leaf, f.chain); err != nil {
		return problemf("issuer chain does not belong to certificate %s: %v", s.cert, err)
	}
	if s.ca == "" {
		return nil
	}
	root, err := readCert("ca", s.ca)
	if err != nil {
		return err
	}
	if !root.IsCA || root.CheckSignatureFrom(root) != nil {
		return problemf("ca %s is not a self-signed authority certificate", s.ca)
	}
	f.root = root
	top := f.leaf
	if len(f.chain) > 0 {
		top = f.chain[len(f.chain)-1]
	}
	if s.chain == "" && s.fullchain == "" && !bytes.Equal(top.RawIssuer, root.RawSubject) {
		// An intermediate lies between them that no file holds; the root
		// is then compared with the grant's at the next refresh.
		return nil
	}
	if err := top.CheckSignatureFrom(root); err != nil {
		return problemf("certificate %s does not chain to ca %s: %v", s.cert, s.ca, err)
	}
	f.rootVerified = true
	return nil
}

// signedInTurn checks that each certificate was signed by the next.
func signedInTurn(leaf *x509.Certificate, chain []*x509.Certificate) error {
	child := leaf
	for _, parent := range chain {
		if err := child.CheckSignatureFrom(parent); err != nil {
			return err
		}
		child = parent
	}
	return nil
}

// readCert reads a file of exactly one certificate.
func readCert(what, path string) (*x509.Certificate, error) {
	data, err := readFile(what, path)
	if err != nil {
		return nil, err
	}
	c, err := onePEMCert(data)
	if err != nil {
		return nil, problemf("%s %s: %v", what, path, err)
	}
	return c, nil
}

// readBundle reads a file of PEM certificates; an empty file is an empty
// chain (an authority without intermediates has one), which pemutil's
// ReadCertificateBundle would refuse.
func readBundle(what, path string) ([]*x509.Certificate, error) {
	data, err := readFile(what, path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	certs, err := pemutil.ParseCertificateBundle(data)
	if err != nil {
		return nil, problemf("%s %s does not parse: %v", what, path, err)
	}
	return certs, nil
}

// missingExtras are the extra names the item asks for that the
// certificate lacks (after a change of the config, say).
func missingExtras(leaf *x509.Certificate, s *itemSpec) []string {
	var missing []string
	dns, ips, uris := certNames(leaf)
	for _, n := range s.dns {
		if !dns[strings.ToLower(n)] {
			missing = append(missing, n)
		}
	}
	for _, a := range s.ips {
		if !ips[a.String()] {
			missing = append(missing, a.String())
		}
	}
	for _, u := range s.uris {
		if !uris[u.String()] {
			missing = append(missing, u.String())
		}
	}
	return missing
}

// certNames are a certificate's names in the forms compared: DNS names
// lower-case, IP addresses in canonical text, URIs as text.
func certNames(c *x509.Certificate) (dns, ips, uris map[string]bool) {
	dns, ips, uris = map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, n := range c.DNSNames {
		dns[strings.ToLower(n)] = true
	}
	for _, ip := range c.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			ips[a.Unmap().String()] = true
		}
	}
	for _, u := range c.URIs {
		uris[u.String()] = true
	}
	return dns, ips, uris
}

// writeX509Files writes a key and certificate with their chain and root:
// new ones, or the ones on disk again, to give them the mode and owner the
// config asks for.
//
// The files are written as a set. Every one is first staged (written to a
// temporary file beside its target, synced, given its owner, then its
// mode); only when all are staged are they renamed into place, one right
// after the other, so a failure before then (owner, permissions, a full
// disk) aborts them all and changes nothing a service uses. Renames are
// atomic each, but the set is not, so their order matters: the root goes
// first, so that a peer that reads this node's ca file already trusts a
// new root when a certificate from it appears; then the key and at once
// the certificate, so that they disagree only between two renames; chain
// and fullchain last. A service should read the files when the reload
// command tells it to, after all are in place; should the client die in
// between, the next check finds the key and certificate apart and
// repairs them with a new certificate.
func writeX509Files(s *itemSpec, key crypto.Signer, leaf *x509.Certificate, chain []*x509.Certificate, root *x509.Certificate) error {
	keyPEM, err := authority.EncodeKeyPEM(key)
	if err != nil {
		return err
	}
	type file struct {
		path string
		data []byte
		mode os.FileMode
	}
	files := []file{
		{s.key, keyPEM, s.mode},
		{s.cert, authority.EncodePEM(leaf), certMode},
		{s.chain, authority.EncodePEM(chain...), certMode},
		{s.fullchain, authority.EncodePEM(append([]*x509.Certificate{leaf}, chain...)...), certMode},
	}
	// The root goes first, so peers' trust is in place before a new
	// certificate is; a repair that did not read the root leaves it alone.
	if s.ca != "" && root != nil {
		files = append([]file{{s.ca, authority.EncodePEM(root), certMode}}, files...)
	}
	var staged []*keyfile.Staged
	defer func() {
		for _, st := range staged {
			st.Abort() // does nothing to those committed
		}
	}()
	for _, f := range files {
		if f.path == "" {
			continue
		}
		st, err := stageOwned(s, f.path, f.data, f.mode)
		if err != nil {
			return err
		}
		staged = append(staged, st)
	}
	for _, st := range staged {
		if err := st.Commit(); err != nil {
			return fmt.Errorf("keyclient: %s: %w", s.label(), err)
		}
	}
	return nil
}

// stageOwned stages one of an item's files with the item's owner (see
// fileOwner). A missing directory is created (0755, the client's own): a
// fresh machine often lacks the service's directory until its package
// comes, and what needs protecting is the key file, by its own mode.
func stageOwned(s *itemSpec, path string, data []byte, mode os.FileMode) (*keyfile.Staged, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("keyclient: %s: %w", s.label(), err)
	}
	st, err := keyfile.Stage(path, data, mode, s.fileOwner())
	if err != nil {
		return nil, fmt.Errorf("keyclient: %s: %w", s.label(), err)
	}
	return st, nil
}

// fileOwner is the owner and group the item's files get and are checked
// against: those configured, and the keyclient's own where none is. The
// group is set even then, so that a file made in a set-group-ID directory
// does not take the directory's group and then differ from the config at
// every check.
func (s *itemSpec) fileOwner() keyfile.Owner {
	o := s.owner
	if o.UID < 0 {
		o.UID = os.Geteuid()
	}
	if o.GID < 0 {
		o.GID = os.Getegid()
	}
	return o
}

// attrCheck is how an item's files on disk differ from the mode and owner
// the config gives them.
type attrCheck struct {
	wrong []string // one per difference, naming the file
	// exposed says the key could be read by someone the config does not
	// allow: its mode gives the group or others more than the configured
	// mode does, it belongs to another user, or to another group that may
	// read it, or it is not a regular file at all.
	exposed bool
}

func (a attrCheck) String() string { return strings.Join(a.wrong, "; ") }

// checkAttrs compares the mode and owner of each of the item's files (not
// following links) with the config: the key's and a static file's mode
// as configured, certificates 0644, the owner as fileOwner says. Missing
// or unreadable files are left to the content checks.
func checkAttrs(s *itemSpec) attrCheck {
	var a attrCheck
	own := s.fileOwner()
	for _, f := range s.attrFiles() {
		if f.path == "" {
			continue
		}
		wrong, exposed := fileAttrs(f, own)
		a.wrong = append(a.wrong, wrong...)
		a.exposed = a.exposed || exposed
	}
	return a
}

// attrFile is one of an item's files, with the mode it should have.
type attrFile struct {
	what, path string
	mode       os.FileMode
	key        bool // a private key
}

// attrFiles are the item's files, configured or not ("" path).
func (s *itemSpec) attrFiles() []attrFile {
	if s.typ == TypeStatic {
		return []attrFile{{"file", s.path, s.mode, false}}
	}
	return []attrFile{{"key", s.key, s.mode, true}, {"cert", s.cert, certMode, false}, {"chain", s.chain, certMode, false},
		{"fullchain", s.fullchain, certMode, false}, {"ca", s.ca, certMode, false}}
}

// fileAttrs says how one file's mode and owner differ from f's and own,
// and whether that exposes a key (see attrCheck). A file that cannot be
// found is no difference.
func fileAttrs(f attrFile, own keyfile.Owner) (wrong []string, exposed bool) {
	fi, err := os.Lstat(f.path)
	if err != nil {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok {
		return []string{fmt.Sprintf("%s %s is not a regular file", f.what, f.path)}, f.key
	}
	mode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	uid, gid := int(st.Uid), int(st.Gid)
	if mode != f.mode {
		wrong = append(wrong, fmt.Sprintf("%s %s has mode %04o, the config says %04o", f.what, f.path, mode.Perm(), f.mode))
	}
	if uid != own.UID || gid != own.GID {
		wrong = append(wrong, fmt.Sprintf("%s %s belongs to %d:%d, the config says %d:%d", f.what, f.path, uid, gid, own.UID, own.GID))
	}
	exposed = f.key && (mode&0o077&^f.mode != 0 || uid != own.UID || gid != own.GID && mode&0o070 != 0)
	return wrong, exposed
}
