// Package pebbletest runs a real ACME server for tests: Pebble, with
// pebble-challtestsrv as the DNS server it resolves names through (or a
// DNS server the test gives, for dns-01), all on loopback, built from the
// versions pinned in go.mod as Go tools.
// Validation is real (never PEBBLE_VA_ALWAYS_VALID), strict, without
// Pebble's random sleeps or authorization reuse, and with its default
// share of bad-nonce rejections, so clients' retries are exercised.
package pebbletest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/acme/internal/testlog"
)

// Pebble is a running Pebble.
type Pebble struct {
	Directory string // the ACME directory URL
	RootsPEM  []byte // trust anchor of the directory's TLS certificate (for a policy's ca_file)
	Mgmt      string // management API base URL (https)
	client    *http.Client
}

// Options for Start.
type Options struct {
	HTTPPort int // where Pebble sends HTTP-01 probes (to 127.0.0.1, as challtestsrv resolves every name there)
	// DNSServer, if set, is the resolver ("127.0.0.1:port") Pebble
	// looks names up through, over TCP, instead of a challtestsrv that
	// points every name at 127.0.0.1: for dns-01, whose TXT records the
	// test serves (dnstest.StartUnbound in front of the zones).
	DNSServer string
}

// tool returns the path of a Go tool of this module, building it if needed.
func tool(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command("go", "tool", "-n", name).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go tool -n %s (pinned in go.mod): %v\n%s", name, err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs Pebble (and challtestsrv, unless opt.DNSServer is set) until
// the test ends.
func Start(t testing.TB, opt Options) *Pebble {
	t.Helper()
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := tlsMaterial(t)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dnsAddr := opt.DNSServer
	if dnsAddr == "" {
		dnsAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
		run(t, "pebble-challtestsrv", []string{
			"-dnsserver", dnsAddr, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
			"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
			"-management", "127.0.0.1:" + strconv.Itoa(freePort(t)),
		}, nil)
	}
	listen, mgmt := "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:"+strconv.Itoa(freePort(t))
	httpPort := opt.HTTPPort
	if httpPort == 0 {
		httpPort = freePort(t)
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    write("cert.pem", certPEM),
		"privateKey":                     write("key.pem", keyPEM),
		"httpPort":                       httpPort,
		"tlsPort":                        freePort(t),
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"domainBlocklist":                []string{"blocked-domain.example"},
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default": map[string]any{"description": "default", "validityPeriod": 7776000},
		},
	}}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "pebble", []string{"-config", write("pebble.json", raw), "-strict", "-dnsserver", dnsAddr},
		[]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_AUTHZREUSE=0"})

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	p := &Pebble{
		Directory: "https://" + listen + "/dir",
		RootsPEM:  caPEM,
		Mgmt:      "https://" + mgmt,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := p.client.Get(p.Directory)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not answer at %s: %v", p.Directory, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// IssuerRoots fetches the roots Pebble issues under, which it generates
// afresh every start.
func (p *Pebble) IssuerRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.Mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble roots: %s %v", resp.Status, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble roots: no certificate in %q", data)
	}
	return pool
}

// SetRenewalInfo makes Pebble's renewal information (RFC 9773) for the
// certificate (PEM) suggest the window from start to end.
func (p *Pebble) SetRenewalInfo(t testing.TB, certPEM []byte, start, end time.Time) {
	t.Helper()
	window, err := json.Marshal(map[string]any{"suggestedWindow": map[string]time.Time{"start": start, "end": end}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]string{"Certificate": string(certPEM), "ARIResponse": string(window)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.client.Post(p.Mgmt+"/set-renewal-info/", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("pebble set-renewal-info: %s: %s", resp.Status, msg)
	}
}

func run(t testing.TB, name string, args, env []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	lw := testlog.New(t, name)
	cmd.Stdout, cmd.Stderr = lw, lw
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		lw.Stop()
	})
}

// tlsMaterial makes a CA and a certificate for 127.0.0.1 and localhost
// signed by it, for Pebble's own API.
func tlsMaterial(t testing.TB) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	ca, err := authority.Generate(authority.Config{Name: "pebbletest API"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Sign(authority.Request{
		PublicKey: key.Public(), CommonName: "pebble", Lifetime: 24 * time.Hour,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		t.Fatal(err)
	}
	if keyPEM, err = authority.EncodeKeyPEM(key); err != nil {
		t.Fatal(err)
	}
	return authority.EncodePEM(ca.Root()), authority.EncodePEM(append([]*x509.Certificate{cert}, ca.Chain()...)...), keyPEM
}
