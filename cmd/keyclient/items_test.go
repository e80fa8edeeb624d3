package main

// The keyclient's items: `keyclient status` on files made here with real
// authorities (it calls no keyserver), the lines `once` prints per item,
// and items kept against a real keyserver with a policy.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyclient"
	"github.com/keysystem/keysystem/keyclient/clocktest"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/keyserver/store"
)

// nodeFiles writes a node's CGC, one x509 item's key and certificate and
// one static file, as a keyclient would have (with the modes it gives
// them), and its config.
func nodeFiles(t *testing.T) (dir, config string) {
	t.Helper()
	dir = t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(path string, data []byte, mode ...os.FileMode) {
		t.Helper()
		m := os.FileMode(0o600)
		if len(mode) > 0 {
			m = mode[0]
		}
		if err := os.WriteFile(path, data, m); err != nil {
			t.Fatal(err)
		}
	}
	sign := func(name, cn string, life time.Duration, usage x509.ExtKeyUsage) ([]byte, []byte) {
		t.Helper()
		a, err := authority.Generate(authority.Config{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		key, _ := authority.GenerateKey(authority.ECDSAP256)
		cert, err := a.Sign(authority.Request{PublicKey: key.Public(), CommonName: cn, Lifetime: life, ExtKeyUsage: []x509.ExtKeyUsage{usage}})
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, _ := authority.EncodeKeyPEM(key)
		return keyPEM, authority.EncodePEM(cert)
	}
	k, c := sign("keygranting", "web1", 30*24*time.Hour, x509.ExtKeyUsageClientAuth)
	write(filepath.Join(state, keyclient.CGCFile), append(k, c...))
	k, c = sign("web", "web1", 7*24*time.Hour, x509.ExtKeyUsageServerAuth)
	write(filepath.Join(dir, "web.key"), k)
	write(filepath.Join(dir, "web.crt"), c, 0o644)
	write(filepath.Join(dir, "bundle.pem"), []byte("roots\n"), 0o644)
	config = filepath.Join(dir, "node.yaml")
	write(config, []byte(`node: web1
servers: [https://127.0.0.1:8443]
trust_anchor: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
state_dir: state
items:
  - {type: x509, grant: web, key: web.key, cert: web.crt}
  - {type: static, name: bundle, path: bundle.pem}
`))
	return dir, config
}

func TestStatusCommand(t *testing.T) {
	dir, config := nodeFiles(t)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %s\n%s", code, errb.String(), out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ITEM") || !strings.Contains(lines[0], "NEXT RENEWAL") || !strings.Contains(lines[0], "LAST ERROR") {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, want := range [][]string{{"web1", "cgc", "ok"}, {"web", "x509", "ok"}, {"bundle", "static", "ok"}} {
		if f := strings.Fields(lines[i+1]); len(f) < 3 || f[0] != want[0] || f[1] != want[1] || f[2] != want[2] {
			t.Errorf("line %d: %q, want it to start with %v", i+1, lines[i+1], want)
		}
	}

	out.Reset()
	if code := run(context.Background(), []string{"status", "--config", config, "--json"}, &out, &errb); code != 0 {
		t.Fatalf("--json: exit %d", code)
	}
	var got []keyclient.StatusLine
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || len(got) != 3 || got[1].Expires.IsZero() {
		t.Fatalf("--json output %s: %v", out.String(), err)
	}

	// Anything missing, mismatched or failing is exit 1, and said so.
	os.Remove(filepath.Join(dir, "bundle.pem"))
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 1 {
		t.Fatalf("missing file: exit %d", code)
	}
	if !strings.Contains(out.String(), "missing") || !strings.Contains(errb.String(), "bundle") {
		t.Errorf("missing file not reported:\n%s%s", out.String(), errb.String())
	}
	k, _ := authority.GenerateKey(authority.ECDSAP256)
	keyPEM, _ := authority.EncodeKeyPEM(k)
	os.WriteFile(filepath.Join(dir, "web.key"), keyPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "bundle.pem"), []byte("roots\n"), 0o644)
	out.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 1 || !strings.Contains(out.String(), "does not match") {
		t.Fatalf("mismatched key: exit %d\n%s", code, out.String())
	}
}

func TestStatusCommandExitCodes(t *testing.T) {
	dir, config := nodeFiles(t)
	// A failing item, as the status file says.
	st := keyclient.Status{Node: "web1", Items: []keyclient.ItemStatus{{Name: "bundle", Type: "static", State: keyclient.StateFailing, Failures: 3, LastError: "keyserver: grant bundle is not for this node (grant_denied)"}}}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, "state", keyclient.StatusFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 1 || !strings.Contains(out.String(), "grant_denied") {
		t.Fatalf("failing item: exit %d\n%s", code, out.String())
	}
	// A bad config is exit 2, before anything is read.
	os.WriteFile(config, []byte("node: web1\nitems:\n  - {type: bogus}\n"), 0o600)
	errb.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "items[0] (bogus)") {
		t.Fatalf("bad config: exit %d, %s", code, errb.String())
	}
	if code := run(context.Background(), []string{"status"}, &out, &errb); code != 2 {
		t.Fatalf("no --config: exit %d", code)
	}
}

func TestOnceItemLines(t *testing.T) {
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		r    keyclient.ItemResult
		want string
	}{
		{keyclient.ItemResult{Name: "web", Type: "x509", Action: keyclient.ActionIssued, NotAfter: at, RenewAt: at.Add(-time.Hour)},
			"x509 web: issued; valid until 2026-12-01T00:00:00Z; next renewal 2026-11-30T23:00:00Z"},
		{keyclient.ItemResult{Name: "bundle", Type: "static", Action: keyclient.ActionNone, RenewAt: at},
			"static bundle: valid, nothing to do; next refresh 2026-12-01T00:00:00Z"},
		{keyclient.ItemResult{Name: "db", Type: "x509", Action: keyclient.ActionFailed, Err: errors.New("keyserver: no\nreally")},
			"x509 db: FAILED: keyserver: no really"},
		{keyclient.ItemResult{Name: "web", Type: "x509", Action: keyclient.ActionRenewed, ReloadErr: errors.New("exit status 1")},
			"x509 web: renewed; RELOAD FAILED (owed to the next run or once): exit status 1"},
	} {
		if got := itemLine(tc.r); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

// The tests below run items against a real keyserver with a policy, over
// loopback TLS, driven by the shared hand-advanced clock.

const itemsNode = "web1.dc1.example.org"

// itemsPolicy gives every node a server certificate from authority web
// (which has an intermediate) and a trust bundle; grant db-client is for
// another node only.
const itemsPolicy = `cgc:
  lifetime: 720h
authorities:
  web: {}
grants:
  web-server:
    type: x509
    authority: web
    usage: server
    subject:
      common_name: "{{.Node}}"
      organization: [example]
    dns: ["{{.Node}}", "{{.Short}}.web.internal"%s]
    allow:
      dns: ["*.web.internal"]
    lifetime: 168h
    to: {all: true}
  trust-bundle:
    type: static
    file: files/bundle.pem
    authorities: [web]
    to: {all: true}
  db-client:
    type: x509
    authority: web
    usage: client
    lifetime: 24h
    to:
      nodes: [db1.dc1.example.org]
`

// itemsServer is a keyserver serving a policy.
type itemsServer struct {
	*rig
	dir string // policy.yaml, files/, authorities/
	web *authority.Authority
}

func startItemsServer(t *testing.T, clk *clocktest.Clock) *itemsServer {
	t.Helper()
	auths, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	web, err := authority.Generate(authority.Config{Name: "test web", Intermediate: true, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := web.Save(filepath.Join(dir, "authorities", "web")); err != nil {
		t.Fatal(err)
	}
	s := &itemsServer{dir: dir, web: web}
	s.setPolicy(t, "", "first bundle\n")
	s.rig = startKeyserver(t, clk, store.NewMemory(), auths, "", func(c *keyserver.Config) {
		c.PolicyFile = filepath.Join(dir, "policy.yaml")
		c.AuthorityDir = filepath.Join(dir, "authorities")
		c.PruneInterval = time.Hour
	})
	return s
}

// setPolicy writes the policy, with extra DNS templates for web-server,
// and the bundle file; a running keyserver needs ReloadPolicy after.
func (s *itemsServer) setPolicy(t *testing.T, extraDNS, bundle string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(s.dir, "files"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "files", "bundle.pem"), []byte(bundle), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "policy.yaml"), []byte(fmt.Sprintf(itemsPolicy, extraDNS)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// itemsConfig is a node config with the web-server and trust-bundle items
// in dir, both logging their reloads to dir/reloads.
func (s *itemsServer) itemsConfig(t *testing.T, dir, token string) *keyclient.Config {
	t.Helper()
	reload := `echo "$KEYCLIENT_ITEM $KEYCLIENT_EVENT" >> ` + filepath.Join(dir, "reloads")
	return &keyclient.Config{
		Node:        itemsNode,
		Servers:     []string{"https://" + s.addr},
		TrustAnchor: authority.SPKIPin(s.auths.Server.Root()),
		Token:       token,
		StateDir:    filepath.Join(dir, "state"),
		Items: []keyclient.Item{
			{Type: "x509", Grant: "web-server", Key: filepath.Join(dir, "web.key"), Cert: filepath.Join(dir, "web.crt"),
				Chain: filepath.Join(dir, "chain.crt"), FullChain: filepath.Join(dir, "full.crt"), CA: filepath.Join(dir, "ca.crt"),
				DNS: []string{"shop.web.internal"}, Reload: reload},
			{Type: "static", Name: "trust-bundle", Path: filepath.Join(dir, "bundle.pem"), Reload: reload},
		},
	}
}

func actions(rep *keyclient.Report) string {
	var out []string
	for _, it := range rep.Items {
		out = append(out, it.Name+"="+string(it.Action))
	}
	return strings.Join(out, " ")
}

func reloads(t *testing.T, dir string) string {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(dir, "reloads"))
	return strings.Join(strings.Split(strings.TrimSpace(string(data)), "\n"), ", ")
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A node admits itself, gets its certificate and bundle, leaves them alone
// while they match the policy (the grant and the file are compared every
// refresh), picks up a policy change at the next refresh, and renews at
// two thirds of the lifetime; reload commands run once per change.
func TestItemsAgainstTheKeyserver(t *testing.T) {
	clk := newFakeClock()
	ks := startItemsServer(t, clk)
	dir := t.TempDir()
	cfg := ks.itemsConfig(t, dir, issue(t, ks.rig, itemsNode))
	c, err := keyclient.New(cfg, keyclient.Options{Clock: clk, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rep, err := c.Once(ctx, false)
	if err != nil || rep.Action != keyclient.ActionAdmitted || actions(rep) != "web-server=issued trust-bundle=issued" {
		t.Fatalf("first pass: %v, CGC %s, %s", err, rep.Action, actions(rep))
	}
	leaf := parseCert(t, filepath.Join(dir, "web.crt"))
	for _, n := range []string{itemsNode, "web1.web.internal", "shop.web.internal"} {
		if !slices.Contains(leaf.DNSNames, n) {
			t.Errorf("certificate lacks %s: %v", n, leaf.DNSNames)
		}
	}
	if got := leaf.Subject.String(); got != "CN="+itemsNode+",O=example" {
		t.Errorf("subject %s", got)
	}
	if ca := parseCert(t, filepath.Join(dir, "ca.crt")); !ca.Equal(ks.web.Root()) {
		t.Error("ca file is not authority web's root")
	}
	if err := ks.web.VerifyAt(leaf, x509.ExtKeyUsageServerAuth, clk.Now()); err != nil {
		t.Errorf("certificate does not verify under authority web: %v", err)
	}
	bundle, _ := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if want := "first bundle\n" + string(authority.EncodePEM(ks.web.Root())); string(bundle) != want {
		t.Errorf("bundle holds %q", bundle)
	}
	if got := reloads(t, dir); got != "web-server issued, trust-bundle issued" {
		t.Errorf("reloads: %s", got)
	}

	// Past the refresh interval: the grant and the file are compared, and
	// they match, so nothing is written.
	clk.Advance(90 * time.Minute)
	rep, err = c.Once(ctx, false)
	if err != nil || actions(rep) != "web-server=none trust-bundle=none" {
		t.Fatalf("refresh with an unchanged policy: %v, %s", err, actions(rep))
	}
	if again := parseCert(t, filepath.Join(dir, "web.crt")); !again.Equal(leaf) {
		t.Fatal("an unchanged grant brought a new certificate")
	}

	// The policy changes: one more name, a new bundle.
	ks.setPolicy(t, `, "{{.Short}}.example.org"`, "second bundle\n")
	if _, err := ks.srv.ReloadPolicy("test"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(90 * time.Minute)
	rep, err = c.Once(ctx, false)
	if err != nil || actions(rep) != "web-server=updated trust-bundle=updated" {
		t.Fatalf("refresh after a policy change: %v, %s", err, actions(rep))
	}
	if leaf = parseCert(t, filepath.Join(dir, "web.crt")); !slices.Contains(leaf.DNSNames, "web1.example.org") {
		t.Errorf("updated certificate lacks the new name: %v", leaf.DNSNames)
	}
	if bundle, _ := os.ReadFile(filepath.Join(dir, "bundle.pem")); !strings.HasPrefix(string(bundle), "second bundle\n") {
		t.Errorf("bundle holds %q", bundle)
	}

	// Renewal at about two thirds of the 168h lifetime.
	renewAt := rep.Items[0].RenewAt
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if lo, hi := leaf.NotBefore.Add(life*2/3-life/20), leaf.NotBefore.Add(life*2/3+life/20); renewAt.Before(lo) || renewAt.After(hi) {
		t.Fatalf("renewal at %v, outside [%v, %v]", renewAt, lo, hi)
	}
	clk.Advance(renewAt.Sub(clk.Now()))
	rep, err = c.Once(ctx, false)
	if err != nil || rep.Items[0].Action != keyclient.ActionRenewed {
		t.Fatalf("at the renewal time: %v, %s", err, actions(rep))
	}
	if renewed := parseCert(t, filepath.Join(dir, "web.crt")); renewed.Equal(leaf) || renewed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("renewal did not bring a new certificate for a new key")
	}
	if got := reloads(t, dir); got != "web-server issued, trust-bundle issued, web-server updated, trust-bundle updated, web-server renewed" {
		t.Errorf("reloads: %s", got)
	}

	// A certificate removed on disk is back at the next check.
	os.Remove(filepath.Join(dir, "web.crt"))
	clk.Advance(time.Minute)
	if rep, err := c.Once(ctx, false); err != nil || rep.Items[0].Action != keyclient.ActionRecreated {
		t.Fatalf("after removing the certificate: %v, %s", err, actions(rep))
	}
}

// Refusals of the keyserver fail only the item they concern.
func TestItemRefusalsAgainstTheKeyserver(t *testing.T) {
	clk := newFakeClock()
	ks := startItemsServer(t, clk)
	dir := t.TempDir()
	cfg := ks.itemsConfig(t, dir, issue(t, ks.rig, itemsNode))
	cfg.Items[0].DNS = []string{"shop.evil.example.com"} // outside allow.dns
	cfg.Items = append(cfg.Items, keyclient.Item{Type: "x509", Grant: "db-client", Key: filepath.Join(dir, "db.key"), Cert: filepath.Join(dir, "db.crt")})
	c, err := keyclient.New(cfg, keyclient.Options{Clock: clk, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Once(context.Background(), false)
	if !errors.Is(err, keyclient.ErrItemsFailed) || rep.Action != keyclient.ActionAdmitted {
		t.Fatalf("err = %v, CGC %s", err, rep.Action)
	}
	if got := actions(rep); got != "web-server=failed trust-bundle=issued db-client=failed" {
		t.Fatalf("actions: %s", got)
	}
	var ae *api.Error
	if !errors.As(rep.Items[0].Err, &ae) || ae.Code != api.CodeNameNotAllowed || !strings.Contains(ae.Message, "shop.evil.example.com") {
		t.Errorf("extra name outside the grant: %v", rep.Items[0].Err)
	}
	if !errors.As(rep.Items[2].Err, &ae) || ae.Code != api.CodeGrantDenied {
		t.Errorf("grant for another node: %v", rep.Items[2].Err)
	}
	for _, f := range []string{"web.key", "web.crt", "db.key", "db.crt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s written for a refused item", f)
		}
	}
}

// The daemon starts with only a token: the items wait for the CGC, and are
// issued as soon as it arrives, without waiting for their next check.
func TestRunIssuesItemsOnceAdmitted(t *testing.T) {
	clk := newFakeClock()
	ks := startItemsServer(t, clk)
	dir := t.TempDir()
	cfg := ks.itemsConfig(t, dir, issue(t, ks.rig, itemsNode))
	c, err := keyclient.New(cfg, keyclient.Options{Clock: clk, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	// Polling is only for the daemon's goroutines to get there; the clock
	// does not move, so no check interval ever passes.
	deadline := time.Now().Add(30 * time.Second)
	for reloads(t, dir) != "web-server issued, trust-bundle issued" && reloads(t, dir) != "trust-bundle issued, web-server issued" {
		if time.Now().After(deadline) {
			t.Fatalf("items not issued after admission; reloads: %q", reloads(t, dir))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	lines, _, err := keyclient.Inspect(cfg, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if l.State != keyclient.StateOK {
			t.Errorf("%s %s: %s %s", l.Type, l.Item, l.State, l.LastError)
		}
	}
}

// The command line: once does the pass and prints a line per item,
// status reports on what is there; a refused item makes both exit 1.
func TestOnceAndStatusCommands(t *testing.T) {
	// The keyclient command reads the real clock: so does this keyserver.
	clk := newFakeClock()
	ks := startItemsServer(t, clk)
	dir := t.TempDir()
	cfg := ks.itemsConfig(t, dir, issue(t, ks.rig, itemsNode))
	config := filepath.Join(dir, "node.yaml")
	writeYAML := func() {
		t.Helper()
		data, err := cfg.Marshal("test")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(config, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeYAML()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"once", "--config", config}, &out, &errb); code != 0 {
		t.Fatalf("once: exit %d\n%s%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"admitted", "x509 web-server: issued; valid until", "static trust-bundle: issued; next refresh"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("once output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 0 {
		t.Fatalf("status: exit %d\n%s%s", code, out.String(), errb.String())
	}

	cfg.Token = "" // spent
	cfg.Items = append(cfg.Items, keyclient.Item{Type: "x509", Grant: "db-client", Key: filepath.Join(dir, "db.key"), Cert: filepath.Join(dir, "db.crt")})
	writeYAML()
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"once", "--config", config}, &out, &errb); code != 1 {
		t.Fatalf("once with a refused item: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "x509 db-client: FAILED:") || !strings.Contains(out.String(), "x509 web-server: valid, nothing to do") {
		t.Errorf("once output:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 1 || !strings.Contains(out.String(), "grant_denied") {
		t.Fatalf("status with a refused item: exit %d\n%s", code, out.String())
	}
}

// Only one keyclient uses a state directory at a time: once (or run)
// while another holds it fails with exit 1, saying so; status reads on.
func TestStateDirInUse(t *testing.T) {
	_, config := nodeFiles(t)
	cfg, err := keyclient.LoadConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	c, err := keyclient.New(cfg, keyclient.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, cmd := range []string{"once", "run"} {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{cmd, "--config", config}, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), "another keyclient (run or once) is using state_dir "+cfg.StateDir) {
			t.Errorf("%s while the state directory is in use: exit %d, stderr %q", cmd, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 0 {
		t.Errorf("status while the state directory is in use: exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// status: items the daemon has not checked for a while are stale (exit
// 1); a status file that does not parse is a warning, not a failure.
func TestStatusStaleAndCorrupt(t *testing.T) {
	dir, config := nodeFiles(t)
	statusFile := filepath.Join(dir, "state", keyclient.StatusFile)
	long := time.Now().Add(-time.Hour)
	st := keyclient.Status{Node: "web1", Items: []keyclient.ItemStatus{
		{Name: "web", Type: "x509", State: keyclient.StateOK, CheckedAt: long},
		{Name: "bundle", Type: "static", State: keyclient.StateOK, CheckedAt: time.Now()},
	}}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(statusFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), "stale") || !strings.Contains(out.String(), "is the keyclient daemon running?") || !strings.Contains(errb.String(), "web") {
		t.Fatalf("stale item: exit %d\n%s%s", code, out.String(), errb.String())
	}

	if err := os.WriteFile(statusFile, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"status", "--config", config}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "warning: "+statusFile+" is unreadable") || strings.Count(out.String(), " ok ") != 3 {
		t.Fatalf("corrupt status file: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"status", "--config", config, "--json"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "warning:") {
		t.Fatalf("corrupt status file, --json: exit %d\n%s%s", code, out.String(), errb.String())
	}
	var lines []keyclient.StatusLine
	if err := json.Unmarshal(out.Bytes(), &lines); err != nil || len(lines) != 3 {
		t.Fatalf("--json output %s: %v", out.String(), err)
	}
}
