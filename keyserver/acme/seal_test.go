package acme_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keysystem/keysystem/keyserver/acme"
)

func TestSeal(t *testing.T) {
	kek := bytes.Repeat([]byte{7}, 32)
	s, err := acme.NewSealer(kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n")
	sealed, err := s.Seal(secret, "acme/labels/web/1/ecdsa")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("secret")) {
		t.Fatal("sealed value holds the plaintext")
	}
	if again, _ := s.Seal(secret, "acme/labels/web/1/ecdsa"); bytes.Equal(again, sealed) {
		t.Error("two seals of one plaintext are equal: nonce reused")
	}
	if got, err := s.Open(sealed, "acme/labels/web/1/ecdsa"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	other, _ := acme.NewSealer(bytes.Repeat([]byte{8}, 32), nil)
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"moved":       func() ([]byte, error) { return s.Open(sealed, "acme/labels/other/1/ecdsa") },
		"other key":   func() ([]byte, error) { return other.Open(sealed, "acme/labels/web/1/ecdsa") },
		"tampered":    func() ([]byte, error) { return s.Open(tampered, "acme/labels/web/1/ecdsa") },
		"truncated":   func() ([]byte, error) { return s.Open(sealed[:10], "acme/labels/web/1/ecdsa") },
		"bad version": func() ([]byte, error) { return s.Open(append([]byte{9}, sealed[1:]...), "acme/labels/web/1/ecdsa") },
	} {
		if got, err := open(); !errors.Is(err, acme.ErrSealed) || got != nil {
			t.Errorf("%s: Open = %q, %v; want ErrSealed", name, got, err)
		}
	}
	if _, err := acme.NewSealer(kek[:16], nil); err == nil {
		t.Error("a 16-byte key-encryption key is accepted")
	}
}

func TestKEK(t *testing.T) {
	dir := t.TempDir()
	if _, err := acme.LoadKEK(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadKEK with no key = %v, want it refused, not made", err)
	}
	if err := acme.CreateKEK(dir, nil); err != nil {
		t.Fatalf("CreateKEK: %v", err)
	}
	path := filepath.Join(dir, acme.KEKFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	kek, err := acme.LoadKEK(dir)
	if err != nil || len(kek) != 32 {
		t.Fatalf("LoadKEK = %x, %v", kek, err)
	}
	if err := acme.CreateKEK(dir, nil); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateKEK over a key = %v, want fs.ErrExist", err)
	}
	if again, err := acme.LoadKEK(dir); err != nil || !bytes.Equal(again, kek) {
		t.Errorf("after a second CreateKEK the key is %x, %v; want the first", again, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the key", len(entries))
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.LoadKEK(dir); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("LoadKEK of a 0644 file = %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.LoadKEK(dir); err == nil || !strings.Contains(err.Error(), "32-byte") {
		t.Errorf("LoadKEK of a short key = %v", err)
	}
}
