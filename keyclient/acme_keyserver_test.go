package keyclient_test

// An acme item against a real keyserver over loopback TLS, whose ACME
// side orders the label's certificate from a real ACME CA (Pebble),
// proving http-01 through the keyserver's own listener. The keyserver and
// the keyclient share one hand-driven clock, started at the real time
// (Pebble's certificates are dated by the real clock): the keyserver's
// staging time holds the CA's certificate back until the test moves the
// clock past it, so the keyclient sees the placeholder first, for
// certain. One order, of one key type: Pebble takes about 5 s for it.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyclient"
	"github.com/keysystem/keysystem/keyclient/clocktest"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/acme/pebbletest"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

const acmePolicy = `groups: {}
acme:
  accounts:
    pebble:
      directory: %s
      ca_file: pebble-tls.pem
  certificates:
    www:
      sni: [www.example.test]
      key_types: [ecdsa-p256]
      to: {nodes: [web1]}
`

// acmeKeyserver is a keyserver with ACME on, against Pebble.
type acmeKeyserver struct {
	srv    *keyserver.Server
	auths  *keyserver.Authorities
	addr   string
	pebble *pebbletest.Pebble
	admin  *http.Client
}

func startACMEKeyserver(t *testing.T, clk *clocktest.Clock) *acmeKeyserver {
	t.Helper()
	h01, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: h01.Addr().(*net.TCPAddr).Port})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pebble-tls.pem"), pb.RootsPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), fmt.Appendf(nil, acmePolicy, pb.Directory), 0o644); err != nil {
		t.Fatal(err)
	}
	auths, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := keyserver.New(keyserver.Config{
		Names:       []string{"127.0.0.1"},
		KeyGranting: auths.KeyGranting, Server: auths.Server, Admin: auths.Admin,
		Store:       store.NewMemory(),
		PolicyFile:  filepath.Join(dir, "policy.yaml"),
		CGCLifetime: 30 * 24 * time.Hour,
		ACME: &keyserver.ACMEConfig{
			KEK:           bytes.Repeat([]byte{7}, 32),
			HTTP01Probe:   h01.Addr().String(),
			Staging:       time.Hour,
			CheckInterval: time.Second,
		},
		Logger: slog.New(slog.DiscardHandler),
		Now:    clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.ServeHTTP01(ctx, h01); err != nil {
			t.Errorf("ServeHTTP01: %v", err)
		}
	})
	wg.Go(func() {
		if err := srv.Serve(ctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &acmeKeyserver{srv: srv, auths: auths, addr: l.Addr().String(), pebble: pb, admin: adminClient(t, auths, clk)}
}

// adminClient speaks to the keyserver as an administrator.
func adminClient(t *testing.T, auths *keyserver.Authorities, clk *clocktest.Clock) *http.Client {
	t.Helper()
	key, err := authority.GenerateKey(authority.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auths.Admin.Sign(authority.Request{PublicKey: key.Public(), CommonName: "test-admin",
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
	for _, c := range auths.Admin.Chain() {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	roots := x509.NewCertPool()
	roots.AddCert(auths.Server.Root())
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tc}, Time: clk.Now, MinVersion: tls.VersionTLS13}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// status is the label's state, as `keyctl acme status www` shows it.
func (k *acmeKeyserver) status(t *testing.T) *api.ACMEStatus {
	t.Helper()
	resp, err := k.admin.Get("https://" + k.addr + api.PathACME + "/www")
	if err != nil {
		t.Fatal(err)
	}
	var st api.ACMEStatus
	if err := api.ReadResponse(resp, 1<<20, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// waitForOrder waits until the keyserver holds the CA's certificate.
func (k *acmeKeyserver) waitForOrder(t *testing.T) *api.ACMEVersion {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := k.status(t)
		switch {
		case st.Next != nil:
			return st.Next
		case st.Current != nil:
			return st.Current
		case st.Failures > 0:
			t.Fatalf("the keyserver's order failed: %s", st.LastError)
		case time.Now().After(deadline):
			t.Fatalf("no certificate from Pebble after 2 minutes: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (k *acmeKeyserver) token(t *testing.T, node string) string {
	t.Helper()
	tok, _, err := k.srv.Admission().IssueToken(context.Background(), admission.TokenSpec{Node: node, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok.String()
}

// logRecords keeps the messages logged, to see what the client did.
type logRecords struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecords) WithGroup(string) slog.Handler            { return r }
func (r *logRecords) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}

func (r *logRecords) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func acmeNodeConfig(t *testing.T, k *acmeKeyserver, node, dir string) *keyclient.Config {
	t.Helper()
	return &keyclient.Config{
		Node:        node,
		Servers:     []string{"https://" + k.addr},
		TrustAnchor: authority.SPKIPin(k.auths.Server.Root()),
		Token:       k.token(t, node),
		StateDir:    filepath.Join(dir, "state"),
		Items: []keyclient.Item{{
			Type: keyclient.TypeACME, Label: "www",
			Key: filepath.Join(dir, "www.key"), Cert: filepath.Join(dir, "www.crt"),
			Chain: filepath.Join(dir, "chain.crt"), FullChain: filepath.Join(dir, "fullchain.crt"),
			Reload: `echo "$KEYCLIENT_ITEM $KEYCLIENT_EVENT $KEYCLIENT_ACME_VERSION" >> ` + filepath.Join(dir, "reloads"),
		}},
	}
}

// readItemFiles reads the item's files and checks what holds for every
// version: the key is the certificate's (their public keys compared), the
// full chain is the certificate and the chain, and the modes.
func readItemFiles(t *testing.T, dir string) (leaf *x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	read := func(name string, mode os.FileMode) []byte {
		t.Helper()
		p := filepath.Join(dir, name)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %04o, want %04o", name, fi.Mode().Perm(), mode)
		}
		return data
	}
	key, err := pemutil.ParseKey(read("www.key", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err = pemutil.ParseCertificate(read("www.crt", 0o644))
	if err != nil {
		t.Fatal(err)
	}
	pub := key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool })
	if !pub.Equal(leaf.PublicKey) {
		t.Fatal("the key written is not the certificate's")
	}
	if data := read("chain.crt", 0o644); len(bytes.TrimSpace(data)) > 0 {
		if chain, err = pemutil.ParseCertificateBundle(data); err != nil {
			t.Fatal(err)
		}
	}
	full, err := pemutil.ParseCertificateBundle(read("fullchain.crt", 0o644))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(full, append([]*x509.Certificate{leaf}, chain...), (*x509.Certificate).Equal) {
		t.Fatal("fullchain is not the certificate followed by the chain")
	}
	return leaf, chain
}

func reloadLines(t *testing.T, dir string) string {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(dir, "reloads"))
	return strings.Join(strings.Split(strings.TrimSpace(string(data)), "\n"), ", ")
}

func TestACMEItemAgainstTheKeyserverAndPebble(t *testing.T) {
	clk := clocktest.New(time.Now().UTC().Truncate(time.Second))
	ks := startACMEKeyserver(t, clk)
	dir := t.TempDir()
	cfg := acmeNodeConfig(t, ks, "web1", dir)
	logs := &logRecords{}
	opts := keyclient.Options{Clock: clk, Logger: slog.New(logs)}
	c, err := keyclient.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }()
	ctx := context.Background()

	// Before the CA's certificate is there: the placeholder, so that the
	// front end can start.
	rep, err := c.Once(ctx, false)
	if err != nil || rep.Action != keyclient.ActionAdmitted {
		t.Fatalf("first pass: %v, CGC %s", err, rep.Action)
	}
	if it := rep.Items[0]; it.Action != keyclient.ActionIssued || it.Version != 0 || !it.Placeholder {
		t.Fatalf("first pass, item: %+v", it)
	}
	leaf, chain := readItemFiles(t, dir)
	if len(chain) != 0 || leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) != nil || !strings.Contains(strings.Join(leaf.Subject.Organization, " "), "placeholder") ||
		!slices.Contains(leaf.DNSNames, "www.example.test") {
		t.Errorf("placeholder: subject %s, names %v, %d chain certificates", leaf.Subject, leaf.DNSNames, len(chain))
	}
	if got := reloadLines(t, dir); got != "www issued 0" {
		t.Errorf("reloads: %s", got)
	}
	lines, _, err := keyclient.Inspect(cfg, clk.Now())
	if err != nil || lines[1].State != keyclient.StatePending || !lines[1].Placeholder || lines[1].Label != "www" {
		t.Errorf("status holding the placeholder: %+v, %v", lines[1], err)
	}

	// The CA's certificate, once the keyserver serves it.
	next := ks.waitForOrder(t)
	if next.ReadyAt.After(clk.Now()) {
		clk.Set(next.ReadyAt.Add(time.Second))
	}
	clk.Advance(time.Minute)
	rep, err = c.Once(ctx, false)
	if err != nil || rep.Items[0].Action != keyclient.ActionUpdated || rep.Items[0].Version != 1 || rep.Items[0].Placeholder {
		t.Fatalf("with the CA's certificate: %v, %+v", err, rep.Items)
	}
	leaf, chain = readItemFiles(t, dir)
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ks.pebble.IssuerRoots(t), Intermediates: inter, DNSName: "www.example.test",
		CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the certificate written does not verify against Pebble's roots: %v", err)
	}
	if serial := authority.SerialText(leaf); serial != next.Serials["ecdsa-p256"] {
		t.Errorf("serial %s, the keyserver's version 1 has %s", serial, next.Serials["ecdsa-p256"])
	}
	if got := reloadLines(t, dir); got != "www issued 0, www updated 1" {
		t.Errorf("reloads: %s", got)
	}
	st := ks.status(t)
	if i := slices.IndexFunc(st.Nodes, func(f api.ACMEFetch) bool { return f.Node == "web1" }); i < 0 || st.Nodes[i].Version != 1 || st.Nodes[i].Stale {
		t.Errorf("the keyserver's record of the node's fetches: %+v", st.Nodes)
	}
	lines, _, _ = keyclient.Inspect(cfg, clk.Now())
	if l := lines[1]; l.State != keyclient.StateOK || l.Placeholder || l.Version != 1 || !l.Expires.Equal(leaf.NotAfter) {
		t.Errorf("status holding version 1: %+v", l)
	}

	// Nothing new at the refresh: a 304, nothing written, no reload;
	// after a restart too.
	stat := func() []os.FileInfo {
		var out []os.FileInfo
		for _, f := range []string{"www.key", "www.crt", "chain.crt", "fullchain.crt"} {
			fi, err := os.Stat(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, fi)
		}
		return out
	}
	before := stat()
	for round := range 2 {
		if round == 1 {
			c.Close()
			if c, err = keyclient.New(cfg, opts); err != nil {
				t.Fatal(err)
			}
		}
		clk.Advance(20 * time.Minute)
		rep, err = c.Once(ctx, false)
		if err != nil || rep.Items[0].Action != keyclient.ActionNone || rep.Items[0].Version != 1 {
			t.Fatalf("round %d, nothing new: %v, %+v", round, err, rep.Items)
		}
		if n := logs.count("acme certificate not modified"); n != round+1 {
			t.Fatalf("round %d: %d answers 304, want %d", round, n, round+1)
		}
	}
	for i, fi := range stat() {
		if !os.SameFile(fi, before[i]) {
			t.Errorf("%s was written again", fi.Name())
		}
	}
	if got := reloadLines(t, dir); got != "www issued 0, www updated 1" {
		t.Errorf("reloads: %s", got)
	}

	// A certificate file removed is put back.
	certPEM, _ := os.ReadFile(filepath.Join(dir, "www.crt"))
	os.Remove(filepath.Join(dir, "www.crt"))
	clk.Advance(time.Minute)
	rep, err = c.Once(ctx, false)
	if err != nil || rep.Items[0].Action != keyclient.ActionRecreated {
		t.Fatalf("after removing the certificate: %v, %+v", err, rep.Items)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "www.crt")); !bytes.Equal(again, certPEM) {
		t.Error("the certificate put back is not the one removed")
	}
	readItemFiles(t, dir)
	if got := reloadLines(t, dir); got != "www issued 0, www updated 1, www recreated 1" {
		t.Errorf("reloads: %s", got)
	}

	// A node the label does not name is refused, and writes nothing.
	dir2 := t.TempDir()
	c2, err := keyclient.New(acmeNodeConfig(t, ks, "web2", dir2), keyclient.Options{Clock: clk, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	rep, err = c2.Once(ctx, false)
	var ae *api.Error
	if !errors.Is(err, keyclient.ErrItemsFailed) || rep.Action != keyclient.ActionAdmitted || !errors.As(rep.Items[0].Err, &ae) ||
		ae.Status != http.StatusForbidden || ae.Code != api.CodeGrantDenied {
		t.Fatalf("node outside the label: %v, %+v", err, rep.Items)
	}
	for _, f := range []string{"www.key", "www.crt", "chain.crt", "fullchain.crt", "reloads"} {
		if _, err := os.Stat(filepath.Join(dir2, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s written for a node outside the label", f)
		}
	}
}
