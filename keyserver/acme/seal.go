package acme

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/keysystem/keysystem/authority/keyfile"
)

// KEKFile is the key-encryption key's file name in the keyserver's
// directory. It never goes into the store: a copy of the store (a backup,
// an etcd snapshot) holds ACME private keys only sealed under it.
const KEKFile = "acme.kek"

// sealVersion prefixes every sealed value, so the format can change.
const sealVersion = 1

// ErrSealed is returned when a sealed value cannot be opened: the wrong
// key-encryption key, or a value that was altered or moved.
var ErrSealed = errors.New("acme: sealed value does not open under this keyserver's key-encryption key")

// Sealer encrypts private keys for the store with AES-256-GCM.
type Sealer struct {
	aead cipher.AEAD
	rand io.Reader
}

// NewSealer returns a Sealer for a 32-byte key-encryption key.
func NewSealer(kek []byte, random io.Reader) (*Sealer, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("acme: key-encryption key is %d bytes, want 32", len(kek))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if random == nil {
		random = rand.Reader
	}
	return &Sealer{aead: aead, rand: random}, nil
}

// Seal encrypts plaintext; where (the store key it goes to, say) is bound
// to it, so a sealed value copied to another place does not open there.
func (s *Sealer) Seal(plaintext []byte, where string) ([]byte, error) {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := io.ReadFull(s.rand, out[1:]); err != nil {
		return nil, fmt.Errorf("acme: seal: %w", err)
	}
	return s.aead.Seal(out, out[1:], plaintext, []byte(where)), nil
}

// Open decrypts what Seal returned for the same where.
func (s *Sealer) Open(sealed []byte, where string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, ErrSealed
	}
	out, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(where))
	if err != nil {
		return nil, ErrSealed
	}
	return out, nil
}

// LoadKEK reads the key-encryption key from dir. It never makes one: a
// keyserver that made its own would seal what the others cannot open, so
// the key is made once (CreateKEK, by keyctl init) and copied to every
// keyserver sharing a store. A key file others may read is refused.
func LoadKEK(dir string) ([]byte, error) {
	path := filepath.Join(dir, KEKFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("acme: %s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	kek, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(kek) != 32 {
		return nil, fmt.Errorf("acme: %s does not hold a base64 32-byte key", path)
	}
	return kek, nil
}

// CreateKEK makes a new key-encryption key in dir (0600); it fails with
// fs.ErrExist when there is one already, which it leaves alone.
func CreateKEK(dir string, random io.Reader) error {
	if random == nil {
		random = rand.Reader
	}
	kek := make([]byte, 32)
	if _, err := io.ReadFull(random, kek); err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	staged, err := keyfile.Stage(filepath.Join(dir, KEKFile), []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600, keyfile.NoOwner)
	if err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	if err := staged.CommitNew(); err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	return nil
}
