package acme

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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

// LoadKEK reads the key-encryption key from dir, creating it (0600, written
// to a temporary file, synced and renamed) when there is none. A key file
// others may read is refused.
func LoadKEK(dir string, random io.Reader) ([]byte, error) {
	path := filepath.Join(dir, KEKFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKEK(path, random)
	} else if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	if fi, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("acme: %s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	kek, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(kek) != 32 {
		return nil, fmt.Errorf("acme: %s does not hold a base64 32-byte key", path)
	}
	return kek, nil
}

func createKEK(path string, random io.Reader) ([]byte, error) {
	if random == nil {
		random = rand.Reader
	}
	kek := make([]byte, 32)
	if _, err := io.ReadFull(random, kek); err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".acme.kek-*")
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(base64.StdEncoding.EncodeToString(kek) + "\n")
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// Link, not rename: of two keyservers creating it at once, one
		// wins and the other reads the winner's key.
		err = os.Link(tmp.Name(), path)
		if errors.Is(err, fs.ErrExist) {
			return LoadKEK(filepath.Dir(path), random)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("acme: write %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return kek, nil
}
