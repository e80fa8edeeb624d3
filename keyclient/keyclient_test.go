package keyclient

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/tokens"
)

const pin = "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func validToken(t *testing.T) string {
	t.Helper()
	tok, err := tokens.New(rand.NewChaCha8([32]byte{1}))
	if err != nil {
		t.Fatal(err)
	}
	return tok.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	tok := validToken(t)
	// A single mistyped character (swap two of the secret) is caught by
	// the check code before anything is sent.
	typo := []byte(tok)
	typo[30], typo[31] = typo[31], typo[30]
	if typo[30] == typo[31] {
		t.Fatal("pick other positions for the typo")
	}
	base := "node: web1\nservers: [https://127.0.0.1:8443]\ntrust_anchor: " + pin + "\nstate_dir: state\n"
	for _, tc := range []struct {
		name, body string
		want       []string // substrings of the error; none for success
	}{
		{"valid", base + "token: " + tok + "\n", nil},
		{"unknown key", base + "tokn: " + tok + "\n", []string{"field tokn not found"}},
		{"mistyped token", base + "token: " + string(typo) + "\n", []string{"mistyped"}},
		{"token and file", base + "token: " + tok + "\ntoken_file: t\n", []string{"give one, not both"}},
		{"every problem at once", "node: Web_1\nservers: [http://x]\ntrust_anchor: md5:00\nkey_type: dsa\n",
			[]string{"node:", "servers:", "trust_anchor:", "state_dir:", "key_type:"}},
		{"empty", "", []string{"empty file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			cfg, err := LoadConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if want := filepath.Join(filepath.Dir(path), "state"); cfg.StateDir != want {
					t.Errorf("state_dir %q, want %q (relative to the config)", cfg.StateDir, want)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestRenewTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	life := 30 * 24 * time.Hour
	na := nb.Add(life)
	for _, tc := range []struct {
		u    float64
		want time.Duration
	}{
		{0, life*2/3 - life/20},
		{0.5, life * 2 / 3},
		{0.999999, life*2/3 + life/20},
	} {
		got := RenewTime(nb, na, tc.u).Sub(nb)
		if d := got - tc.want; d < -time.Minute || d > time.Minute {
			t.Errorf("u=%v: renew after %v, want %v", tc.u, got, tc.want)
		}
	}
}

func TestBackoffDoublesWithJitterUpToCap(t *testing.T) {
	c := &Client{opts: Options{MinBackoff: time.Second, MaxBackoff: 30 * time.Second}, rnd: rand.New(rand.NewChaCha8([32]byte{}))}
	want := time.Second
	for n := 1; n <= 12; n++ {
		for range 50 {
			if d := c.backoff(n); d < want/2 || d > want {
				t.Fatalf("failure %d: %v, want within [%v, %v]", n, d, want/2, want)
			}
		}
		want = min(2*want, 30*time.Second)
	}
}

// A CGC file whose key does not match its certificate cannot come from a
// partial write (it is one atomic file), so it is ignored: the node
// re-admits rather than presenting a credential it cannot use.
func TestUnusableCGCFileIsIgnored(t *testing.T) {
	ca, err := authority.Generate(authority.Config{Name: "kg"})
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := authority.GenerateKey(authority.ECDSAP256)
	k2, _ := authority.GenerateKey(authority.ECDSAP256)
	cert, err := ca.Sign(authority.Request{PublicKey: k1.Public(), CommonName: "web1", Lifetime: time.Hour, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, _ := authority.EncodeKeyPEM(k2)
	rightKey, _ := authority.EncodeKeyPEM(k1)
	for _, tc := range []struct {
		name string
		file []byte
		held bool
	}{
		{"matching", append(rightKey, authority.EncodePEM(cert)...), true},
		{"key mismatch", append(wrongKey, authority.EncodePEM(cert)...), false},
		{"no key", authority.EncodePEM(cert), false},
		{"garbage", []byte("not pem"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, CGCFile), tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := &Config{Node: "web1", Servers: []string{"https://127.0.0.1:1"}, TrustAnchor: pin, StateDir: dir}
			c, err := New(cfg, Options{Rand: bytes.NewReader(make([]byte, 32))})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got, _ := c.State(); (got != nil) != tc.held {
				t.Fatalf("holds a CGC: %v, want %v", got != nil, tc.held)
			}
		})
	}
}

// A Client holds its state directory's lock from New to Close: a second
// one is refused, with an error that is not the config's, while reading
// the status goes on.
func TestStateDirLock(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Node: "web1", Servers: []string{"https://127.0.0.1:1"}, TrustAnchor: pin, StateDir: filepath.Join(dir, "state")}
	opts := Options{Rand: bytes.NewReader(make([]byte, 64))}
	c1, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg, Options{Rand: bytes.NewReader(make([]byte, 32))})
	var ce *ConfigError
	if !errors.Is(err, ErrStateDirInUse) || errors.As(err, &ce) || !strings.Contains(err.Error(), "another keyclient (run or once) is using state_dir "+cfg.StateDir) {
		t.Fatalf("second client: %v, want ErrStateDirInUse naming the directory, not a ConfigError", err)
	}
	if _, _, err := Inspect(cfg, time.Now()); err != nil {
		t.Errorf("Inspect while the lock is held: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(cfg.StateDir, LockFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v, %v", fi, err)
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c2, err := New(cfg, Options{Rand: bytes.NewReader(make([]byte, 32))})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	c2.Close()
}

// A Client that fails to start releases the lock.
func TestFailedNewReleasesTheLock(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Node: "web1", Servers: []string{"https://127.0.0.1:1"}, TrustAnchor: pin, StateDir: dir}
	writeCGC(t, dir, "web2", time.Now)
	if _, err := New(cfg, Options{Rand: bytes.NewReader(make([]byte, 32))}); err == nil {
		t.Fatal("a CGC for another node accepted")
	}
	f, err := os.Open(filepath.Join(dir, LockFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock still held after a failed New: %v", err)
	}
}

func TestHonourRetryAfter(t *testing.T) {
	rnd := rand.New(rand.NewChaCha8([32]byte{1}))
	shed := fmt.Errorf("keyclient: renewal: %w", &api.Error{Status: 503, Code: api.CodeUnavailable, RetryAfter: 10 * time.Second})
	for range 100 {
		if w := honourRetryAfter(shed, 5*time.Second, rnd); w < 10*time.Second || w > 20*time.Second {
			t.Fatalf("wait %v after Retry-After 10s, want within [10s, 20s]", w)
		}
	}
	if w := honourRetryAfter(shed, time.Minute, rnd); w != time.Minute {
		t.Errorf("a longer backoff is kept: %v", w)
	}
	if w := honourRetryAfter(errors.New("connection refused"), 5*time.Second, rnd); w != 5*time.Second {
		t.Errorf("no Retry-After: %v", w)
	}
}

// TestRequestsWithTheCGCWaitForARenewal: the keyserver supersedes the old
// CGC the moment a renewal issues the new one, so no request may go out
// with the CGC while a renewal holds rotating (it would be refused, and
// audited as key theft). Requests without the CGC are not held up.
func TestRequestsWithTheCGCWaitForARenewal(t *testing.T) {
	c, accepted := heldClient(t, nil)
	send := func(as auth) chan error {
		done := make(chan error, 1)
		go func() {
			done <- c.roundTrip(t.Context(), http.MethodGet, api.PathNode, nil, nil, as, func(*http.Response) error { return nil })
		}()
		return done
	}

	c.rotating.Lock()
	<-send(noCGC)
	accepted.wait(t, "a request without the CGC, during a renewal,")
	held := send(withCGC)
	accepted.none(t, "a request with the CGC went out during a renewal")
	c.rotating.Unlock()
	accepted.wait(t, "a request with the CGC, after the renewal,")
	<-held
}

// A node admitted again (a new token file) while it holds a valid CGC has
// that CGC superseded the moment the keyserver admits it, as a renewal
// does: no request may go out with the CGC while the admission is under
// way.
func TestRequestsWithTheCGCWaitForAnAdmission(t *testing.T) {
	release := make(chan struct{})
	c, accepted := heldClient(t, release)
	admitted := make(chan error, 1)
	go func() { _, err := c.admit(t.Context()); admitted <- err }()
	accepted.wait(t, "the admission")
	held := make(chan error, 1)
	go func() {
		held <- c.roundTrip(t.Context(), http.MethodGet, api.PathNode, nil, nil, withCGC, func(*http.Response) error { return nil })
	}()
	accepted.none(t, "a request with the CGC went out during an admission")
	close(release)
	<-admitted // refused: the connection closed
	accepted.wait(t, "a request with the CGC, after the admission,")
	<-held
}

// acceptances reports each connection a listener accepted.
type acceptances chan struct{}

func (a acceptances) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-a:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never reached the keyserver", what)
	}
}

func (a acceptances) none(t *testing.T, msg string) {
	t.Helper()
	select {
	case <-a:
		t.Fatal(msg)
	case <-time.After(200 * time.Millisecond):
	}
}

// heldClient is a client holding a CGC for web1 (and a token), whose
// keyserver is a listener that only accepts connections, reports each, and
// closes it at once, or when release is closed if it is not nil.
func heldClient(t *testing.T, release chan struct{}) (*Client, acceptances) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(acceptances, 8)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			if release == nil {
				conn.Close()
				continue
			}
			go func() { <-release; conn.Close() }()
		}
	}()
	ka := newAuthority(t, "keygranting", time.Now)
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ka.Sign(authority.Request{PublicKey: key.Public(), CommonName: "web1", Lifetime: time.Hour, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return &Client{
		cfg:    &Config{Node: "web1", Servers: []string{"https://" + ln.Addr().String()}, Token: validToken(t), StateDir: t.TempDir()},
		opts:   Options{Clock: realClock{}, RequestTimeout: 10 * time.Second},
		log:    quietLogger(),
		anchor: ka.Root(),
		key:    key,
		certs:  []*x509.Certificate{cert},
	}, accepted
}
