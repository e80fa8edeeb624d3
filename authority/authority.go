// Package authority holds the keysystem's X.509 certificate authorities: it
// generates or loads a root and an optional intermediate, keeps the signing
// key, and signs what it is told.
//
// An Authority knows nothing of HTTP, tokens or policy: the caller decides
// what a certificate may say, and the authority only enforces what makes a
// certificate well formed (random serials, clock-skew back-dating, key
// identifiers, lifetimes inside its own). Keys are written 0600 and never
// leave the directory they were written to.
package authority

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/keysystem/keysystem/authority/keyfile"
)

// The built-in authorities, each with one purpose, so that a certificate
// from one can never be mistaken for another's.
const (
	KeyGranting = "keygranting" // signs certificate-granting certificates (node identity)
	Server      = "server"      // signs the keyserver's own TLS certificate
	Admin       = "admin"       // signs administrators' client certificates
)

// Builtin reports whether name is one of the built-in authorities, whose
// names a named authority can never take.
func Builtin(name string) bool {
	return name == KeyGranting || name == Server || name == Admin
}

// Errors of CheckName.
var (
	ErrBadName      = errors.New("authority: bad authority name")
	ErrReservedName = errors.New("authority: reserved authority name")
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// CheckName accepts the name of a named authority: 1 to 63 lower-case
// letters, digits, '.', '_' and '-', beginning and ending with a letter or
// digit (so a name is always a plain directory name, never "." or ".."),
// and not the name of a built-in authority.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w %q: want 1 to 63 of a-z 0-9 . _ -, starting and ending with a letter or digit", ErrBadName, name)
	}
	if Builtin(name) {
		return fmt.Errorf("%w %q: %s, %s and %s are the built-in authorities", ErrReservedName, name, KeyGranting, Server, Admin)
	}
	return nil
}

// Backdate is how far before "now" a certificate's validity starts, so a
// peer whose clock runs a little behind still accepts it.
const Backdate = time.Minute

// Files in an authority's directory.
const (
	RootCertFile         = "root.crt"
	RootKeyFile          = "root.key"
	IntermediateCertFile = "intermediate.crt"
	IntermediateKeyFile  = "intermediate.key"
)

// KeyType names a key algorithm.
type KeyType string

// The key types an authority or a node may use. They are named as
// KeyTypeOf names a public key, so a policy's key_types and a node's
// key_type speak the same language.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	Ed25519   KeyType = "ed25519"
	RSA2048   KeyType = "rsa-2048" // for peers that know nothing better; not a default anywhere
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
)

// KeyTypes are all the key types, the default first.
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, Ed25519, RSA2048, RSA3072, RSA4096}

// ParseKeyType accepts the names above; the empty string means ECDSAP256.
func ParseKeyType(s string) (KeyType, error) {
	kt := KeyType(strings.ToLower(s))
	if kt == "" {
		return ECDSAP256, nil
	}
	if slices.Contains(KeyTypes, kt) {
		return kt, nil
	}
	names := make([]string, len(KeyTypes))
	for i, k := range KeyTypes {
		names[i] = string(k)
	}
	return "", fmt.Errorf("authority: unknown key type %q (want one of %s)", s, strings.Join(names, ", "))
}

// GenerateKey makes a new private key of type kt.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	var (
		s   crypto.Signer
		err error
	)
	switch kt {
	case ECDSAP256, "":
		s, err = keyutil.GenerateSigner("EC", "P-256", 0)
	case ECDSAP384:
		s, err = keyutil.GenerateSigner("EC", "P-384", 0)
	case Ed25519:
		s, err = keyutil.GenerateSigner("OKP", "Ed25519", 0)
	case RSA2048:
		s, err = keyutil.GenerateSigner("RSA", "", 2048)
	case RSA3072:
		s, err = keyutil.GenerateSigner("RSA", "", 3072)
	case RSA4096:
		s, err = keyutil.GenerateSigner("RSA", "", 4096)
	default:
		return nil, fmt.Errorf("authority: unknown key type %q", kt)
	}
	if err != nil {
		return nil, fmt.Errorf("authority: generate %s key: %w", kt, err)
	}
	return s, nil
}

// ErrWeakKey is returned by CheckKey for keys the keysystem does not accept.
var ErrWeakKey = errors.New("authority: key rejected")

// CheckKey accepts ECDSA on P-256 and P-384, Ed25519, and RSA of 2048 to
// 8192 bits with a sane public exponent; anything else is ErrWeakKey.
func CheckKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s is not allowed (use P-256 or P-384)", ErrWeakKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: malformed Ed25519 key", ErrWeakKey)
		}
		return nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("%w: RSA key of %d bits (want 2048 to 8192)", ErrWeakKey, n)
		}
		if k.E < 3 || k.E%2 == 0 {
			return fmt.Errorf("%w: RSA public exponent %d", ErrWeakKey, k.E)
		}
		return nil
	}
	return fmt.Errorf("%w: unsupported key type %T", ErrWeakKey, pub)
}

// KeyTypeOf names a public key's algorithm and size as policies name
// them: ecdsa-p256, ecdsa-p384, ecdsa-p521, ed25519, rsa-<bits>; "" for
// anything else.
func KeyTypeOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ecdsa-" + strings.ToLower(strings.ReplaceAll(k.Curve.Params().Name, "-", ""))
	case ed25519.PublicKey:
		return string(Ed25519)
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return ""
}

// SPKIPin is the pin of a certificate's public key, "sha256:<hex>" of its
// DER SubjectPublicKeyInfo, the form kubeadm uses for its CA pin.
func SPKIPin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParsePin checks that pin has the form SPKIPin produces and returns it in
// canonical (lower-case) form.
func ParsePin(pin string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(pin))
	h, ok := strings.CutPrefix(p, "sha256:")
	if !ok {
		return "", fmt.Errorf("authority: pin %q must start with \"sha256:\"", pin)
	}
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("authority: pin %q must be sha256: and 64 hex digits", pin)
	}
	return p, nil
}

// Config says how to generate a new authority.
type Config struct {
	Name         string  // authority name, used in certificate subjects
	KeyType      KeyType // default ECDSAP256
	Intermediate bool    // sign with an intermediate under the root
	// Shared makes a root that other authorities' intermediates go under
	// (GenerateUnder): its path length is 1, it keeps signing with the
	// root key, and it has no intermediate of its own (so Shared and
	// Intermediate exclude each other).
	Shared bool

	RootLifetime         time.Duration // default 10 years
	IntermediateLifetime time.Duration // default 5 years

	Now  func() time.Time // default time.Now
	Rand io.Reader        // serial numbers; default crypto/rand
}

// Options are the run-time settings of a loaded authority.
type Options struct {
	Now  func() time.Time // default time.Now
	Rand io.Reader        // serial numbers; default crypto/rand
}

// Authority signs certificates with its issuer key: the intermediate's when
// there is one, the root's otherwise.
type Authority struct {
	name    string
	root    *x509.Certificate
	issuer  *x509.Certificate
	chain   []*x509.Certificate // from the issuer up to, not including, the root
	signer  crypto.Signer
	rootKey crypto.Signer // nil when loaded with an intermediate
	under   bool          // made by GenerateUnder: the root is another authority's
	roots   *x509.CertPool
	issuers *x509.CertPool // the issuing certificate alone, as Verify's anchor
	now     func() time.Time
	rand    io.Reader
}

func (o *Options) fill() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
}

// Generate creates a new authority in memory; Save writes it out.
func Generate(cfg Config) (*Authority, error) {
	if cfg.Name == "" {
		return nil, errors.New("authority: a name is required")
	}
	if cfg.RootLifetime == 0 {
		cfg.RootLifetime = 10 * 365 * 24 * time.Hour
	}
	if cfg.IntermediateLifetime == 0 {
		cfg.IntermediateLifetime = 5 * 365 * 24 * time.Hour
	}
	opts := Options{Now: cfg.Now, Rand: cfg.Rand}
	opts.fill()
	rootKey, err := GenerateKey(cfg.KeyType)
	if err != nil {
		return nil, err
	}
	if cfg.Shared && cfg.Intermediate {
		return nil, errors.New("authority: a shared root has no intermediate of its own")
	}
	pathLen := 0
	if cfg.Intermediate || cfg.Shared {
		pathLen = 1
	}
	now := opts.Now()
	root, err := signCA(opts.Rand, cfg.Name+" root", rootKey.Public(), nil, rootKey, now, now.Add(cfg.RootLifetime), pathLen)
	if err != nil {
		return nil, err
	}
	a := &Authority{name: cfg.Name, root: root, issuer: root, signer: rootKey, rootKey: rootKey}
	if cfg.Intermediate {
		key, err := GenerateKey(cfg.KeyType)
		if err != nil {
			return nil, err
		}
		inter, err := signCA(opts.Rand, cfg.Name+" intermediate", key.Public(), root, rootKey, now, now.Add(cfg.IntermediateLifetime), 0)
		if err != nil {
			return nil, err
		}
		a.issuer, a.signer, a.chain = inter, key, []*x509.Certificate{inter}
	}
	a.init(opts)
	return a, nil
}

// ErrNotParent is returned by GenerateUnder when the parent cannot sign
// an intermediate.
var ErrNotParent = errors.New("authority: cannot sign intermediates")

// GenerateUnder creates a new authority in memory whose issuer is a new
// intermediate (cfg.Name + " intermediate", path length 0, expiring no
// later than the root) signed by parent's root key, so that several
// authorities share one root (a "cluster" root with "etcd" and "kube"
// under it). cfg.Intermediate, cfg.Shared and cfg.RootLifetime do not
// apply. Save writes the parent's root certificate but never its key, so
// Load reads the result as any authority with an intermediate.
//
// The parent must hold its root key (an authority loaded with an
// intermediate does not) and its root must allow a path length of at
// least 1. Generate gives a root without an intermediate path length 0,
// so that a root which signs leaves itself can never grow a CA under it
// by accident; a root meant to be shared is generated with Shared.
func GenerateUnder(parent *Authority, cfg Config) (*Authority, error) {
	if cfg.Name == "" {
		return nil, errors.New("authority: a name is required")
	}
	if parent == nil || parent.rootKey == nil {
		return nil, fmt.Errorf("%w: the parent's root key is not at hand", ErrNotParent)
	}
	root := parent.root
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: the root of %s is not a certificate authority", ErrNotParent, parent.name)
	}
	if root.MaxPathLen == 0 {
		return nil, fmt.Errorf("%w: the root of %s has path length 0 (it was not made to be shared)", ErrNotParent, parent.name)
	}
	if cfg.IntermediateLifetime == 0 {
		cfg.IntermediateLifetime = 5 * 365 * 24 * time.Hour
	}
	opts := Options{Now: cfg.Now, Rand: cfg.Rand}
	opts.fill()
	now := opts.Now()
	if !now.Before(root.NotAfter) {
		return nil, fmt.Errorf("%w: the root of %s expired at %s", ErrNotParent, parent.name, root.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := GenerateKey(cfg.KeyType)
	if err != nil {
		return nil, err
	}
	inter, err := signCA(opts.Rand, cfg.Name+" intermediate", key.Public(), root, parent.rootKey, now, now.Add(cfg.IntermediateLifetime), 0)
	if err != nil {
		return nil, err
	}
	a := &Authority{name: cfg.Name, root: root, issuer: inter, chain: []*x509.Certificate{inter}, signer: key, under: true}
	a.init(opts)
	return a, nil
}

func (a *Authority) init(opts Options) {
	opts.fill()
	a.now, a.rand = opts.Now, opts.Rand
	a.roots = x509.NewCertPool()
	a.roots.AddCert(a.root)
	a.issuers = x509.NewCertPool()
	a.issuers.AddCert(a.issuer)
}

func signCA(r io.Reader, cn string, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer, now, notAfter time.Time, pathLen int) (*x509.Certificate, error) {
	serial, err := Serial(r)
	if err != nil {
		return nil, err
	}
	tmpl := &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: cn},
		SerialNumber:     x509util.SerialNumber{Int: serial},
		NotBefore:        now.Add(-Backdate),
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: pathLen},
		PublicKey:        pub,
	}
	c := tmpl.GetCertificate()
	c.MaxPathLenZero = pathLen == 0
	if parent == nil {
		parent = c // self-signed
	} else if notAfter.After(parent.NotAfter) {
		c.NotAfter = parent.NotAfter
	}
	cert, err := x509util.CreateCertificate(c, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("authority: sign %s: %w", cn, err)
	}
	return cert, nil
}

// Serial returns a random serial number of 128 bits (RFC 5280 allows up
// to 20 octets; a zero serial, which is not allowed, is drawn again).
func Serial(r io.Reader) (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("authority: serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// SerialText is the form in which the keysystem stores and shows serials:
// lower-case hex without leading zeros.
func SerialText(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// Save writes the authority into dir (created 0700 if missing): the
// certificates 0644 and the keys 0600. It refuses to overwrite an existing
// authority. An authority made by GenerateUnder is written as root.crt (its
// parent's root), intermediate.crt and intermediate.key, without root.key.
func (a *Authority) Save(dir string) error {
	if a.rootKey == nil && !a.under {
		return errors.New("authority: only a generated authority can be saved")
	}
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); err == nil {
		return fmt.Errorf("authority: %s already holds an authority", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	type file struct {
		name string
		v    any
		perm os.FileMode
	}
	files := []file{{RootKeyFile, a.rootKey, 0o600}, {RootCertFile, a.root, 0o644}}
	if a.under {
		files = files[1:] // the root key stays with the parent
	}
	if len(a.chain) > 0 {
		files = append(files, file{IntermediateKeyFile, a.signer, 0o600}, file{IntermediateCertFile, a.issuer, 0o644})
	}
	for _, f := range files {
		block, err := pemutil.Serialize(f.v, pemutil.WithPKCS8(true))
		if err != nil {
			return fmt.Errorf("authority: encode %s: %w", f.name, err)
		}
		if err := keyfile.Write(filepath.Join(dir, f.name), pem.EncodeToMemory(block), f.perm); err != nil {
			return fmt.Errorf("authority: %w", err)
		}
	}
	return nil
}

// ReadCertificates reads the public half of an authority directory, no
// key: its root, and the certificate it signs with (the intermediate
// when there is one, else the root), for tools that check or show an
// authority without the right to use it.
func ReadCertificates(dir string) (root, issuer *x509.Certificate, err error) {
	root, err = pemutil.ReadCertificate(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, nil, fmt.Errorf("authority: %w", err)
	}
	inter, err := pemutil.ReadCertificate(filepath.Join(dir, IntermediateCertFile))
	switch {
	case err == nil:
		return root, inter, nil
	case errors.Is(err, os.ErrNotExist):
		return root, root, nil
	}
	return nil, nil, fmt.Errorf("authority: %w", err)
}

// Load reads an authority from dir: root.crt, and either intermediate.crt
// with intermediate.key, or root.key. With an intermediate the root key is
// not read at all, so it may be kept offline.
func Load(dir, name string, opts Options) (*Authority, error) {
	root, err := pemutil.ReadCertificate(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("authority: load %s: %w", name, err)
	}
	a := &Authority{name: name, root: root, issuer: root}
	keyFile := RootKeyFile
	if inter, err := pemutil.ReadCertificate(filepath.Join(dir, IntermediateCertFile)); err == nil {
		a.issuer, a.chain, keyFile = inter, []*x509.Certificate{inter}, IntermediateKeyFile
		if err := inter.CheckSignatureFrom(root); err != nil {
			return nil, fmt.Errorf("authority: %s: intermediate is not signed by the root: %w", name, err)
		}
		// What Generate guarantees, a loaded intermediate must show too.
		if !inter.IsCA || inter.MaxPathLen != 0 || inter.NotAfter.After(root.NotAfter) {
			return nil, fmt.Errorf("authority: %s: the intermediate must be a CA with path length 0 that expires no later than its root", name)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("authority: load %s: %w", name, err)
	}
	k, err := pemutil.Read(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("authority: load %s: %w", name, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("authority: %s: %s is not a signing key", name, keyFile)
	}
	if err := keyutil.VerifyPair(a.issuer.PublicKey, signer); err != nil {
		return nil, fmt.Errorf("authority: %s: %s does not match its certificate: %w", name, keyFile, err)
	}
	a.signer = signer
	if keyFile == RootKeyFile {
		a.rootKey = signer
	}
	a.init(opts)
	return a, nil
}

// WithClock returns a copy of a that reads the time from now, so that a
// server and the authorities it holds share one (possibly injected) clock.
func (a *Authority) WithClock(now func() time.Time) *Authority {
	b := *a
	b.now = now
	return &b
}

// Name is the authority's name.
func (a *Authority) Name() string { return a.name }

// Root is the authority's self-signed root certificate, its trust anchor.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Issuer is the certificate this authority signs with: its intermediate,
// or its root when it has none.
func (a *Authority) Issuer() *x509.Certificate { return a.issuer }

// Chain is the issuer chain a leaf is served with, from the issuing
// certificate up to, but not including, the root.
func (a *Authority) Chain() []*x509.Certificate { return a.chain }

// Roots is a pool holding only this authority's root.
func (a *Authority) Roots() *x509.CertPool { return a.roots }

// Request is what a certificate will say. The caller has already decided
// that the subject and names are allowed; the authority checks the key.
type Request struct {
	PublicKey   crypto.PublicKey
	CommonName  string
	Subject     pkix.Name // further subject attributes; its CommonName is ignored
	DNSNames    []string
	IPAddresses []net.IP
	URIs        []*url.URL
	ExtKeyUsage []x509.ExtKeyUsage
	Lifetime    time.Duration // capped at the expiry of the issuer and of the root
}

// Sign issues a leaf certificate for req.
func (a *Authority) Sign(req Request) (*x509.Certificate, error) {
	if err := CheckKey(req.PublicKey); err != nil {
		return nil, err
	}
	if req.Lifetime <= 0 {
		return nil, errors.New("authority: a positive lifetime is required")
	}
	serial, err := Serial(a.rand)
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(req.Lifetime)
	for _, c := range []*x509.Certificate{a.issuer, a.root} {
		if notAfter.After(c.NotAfter) {
			notAfter = c.NotAfter
		}
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("authority: %s expired on %s: it can sign nothing", a.name, notAfter.UTC().Format(time.RFC3339))
	}
	subject := req.Subject
	subject.CommonName = req.CommonName
	ku := x509.KeyUsageDigitalSignature
	if _, ok := req.PublicKey.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
	}
	c := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-Backdate),
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           req.ExtKeyUsage,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		URIs:                  req.URIs,
		AuthorityKeyId:        a.issuer.SubjectKeyId,
	}
	cert, err := x509util.CreateCertificate(c, a.issuer, req.PublicKey, a.signer)
	if err != nil {
		return nil, fmt.Errorf("authority: %s: sign %q: %w", a.name, req.CommonName, err)
	}
	return cert, nil
}

// Verify checks that cert was issued by this authority (through its chain),
// is valid at the authority's current time and allows usage.
func (a *Authority) Verify(cert *x509.Certificate, usage x509.ExtKeyUsage) error {
	return a.VerifyAt(cert, usage, a.now())
}

// VerifyAt is Verify as of time t.
//
// The chain is built up to the issuing certificate, not the root: the
// authority's own intermediate was checked against its root when it was
// generated or loaded, so checking its signature again on every request
// (every node's every TLS connection) would only cost an ECDSA
// verification. Its validity period is still checked, and it expires no
// later than the root.
func (a *Authority) VerifyAt(cert *x509.Certificate, usage x509.ExtKeyUsage, t time.Time) error {
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       a.issuers,
		CurrentTime: t,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return fmt.Errorf("authority: %s: %w", a.name, err)
	}
	return nil
}

// EncodePEM encodes certificates as consecutive PEM blocks.
func EncodePEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// EncodeKeyPEM encodes a private key as a PKCS #8 PEM block.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	block, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return nil, fmt.Errorf("authority: encode key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}
