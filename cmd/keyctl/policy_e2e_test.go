package main

// End to end with a policy: named authorities, two nodes in different
// groups, each keeping its grants fresh with keyclient, a real mutual-TLS
// handshake between their certificates, a refused policy reload, and a
// removed file put back by the daemon.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver/api"
	"go.step.sm/crypto/pemutil"
)

const e2ePolicy = `cgc:
  lifetime: 720h
authorities:
  internal: {}
  etcd: {}
  web: {}
groups:
  etcd: {}                               # members only from tokens
  web:
    patterns: ["web*.example.org"]
grants:
  etcd-peer:
    type: x509
    authority: etcd
    usage: both
    dns: ["{{.Node}}", "{{.Short}}.etcd.internal"]
    ips: ["{{.IPs}}"]
    lifetime: 240h
    to: {groups: [etcd]}
  web-server:
    type: x509
    authority: web
    usage: server
    subject: {common_name: "{{.Node}}", organization: [example]}
    dns: ["{{.Node}}", "{{.Short}}.web.internal"]
    allow: {dns: ["*.web.internal"]}
    lifetime: 72h
    to: {groups: [web]}
  web-client:
    type: x509
    authority: web
    usage: client
    subject: {common_name: "client-{{.Short}}"}
    uris: ["spiffe://example.org/{{.Group}}/{{.Short}}"]
    lifetime: 72h
    to: {groups: [etcd]}
  bundle:
    type: static
    file: bundle.txt
    authorities: [etcd, web]
    to: {all: true}
`

const bundleText = "# trust bundle for the cluster\n"

func TestPolicyEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newWorld(t)
	w.must("keyctl", "init", "--dir", "srv", "--listen", w.addr)
	w.must("keyctl", "authority", "create", "cluster", "--dir", "srv", "--shared-root")
	w.must("keyctl", "authority", "create", "etcd", "--dir", "srv", "--parent", "cluster")
	w.must("keyctl", "authority", "create", "web", "--dir", "srv")
	w.write("srv/bundle.txt", bundleText)
	w.write("srv/policy.yaml", e2ePolicy)
	if out := w.must("keyctl", "policy", "check", "srv/policy.yaml"); !strings.Contains(out, "ok: 3 authorities, 2 groups, 4 grants") {
		t.Errorf("policy check: %s", out)
	}
	w.startKeyserver("--config", "srv/keyserver.yaml")

	// etcd1 is in group etcd by its token; web1 in group web by its name.
	etcdCfg := w.installer("etcd1.example.org", "etcd1", "--group", "etcd", "--ip", "127.0.0.1")
	webCfg := w.installer("web1.example.org", "web1")
	hints := w.read("web1.yaml")
	for _, want := range []string{"#   - {type: x509, grant: web-server,", "#   - {type: static, name: bundle,"} {
		if !strings.Contains(hints, want) {
			t.Errorf("installer output for web1 does not suggest %q:\n%s", want, hints)
		}
	}
	if strings.Contains(hints, "etcd-peer") {
		t.Errorf("installer output for web1 suggests a grant it does not get:\n%s", hints)
	}
	explained := w.must("keyctl", "policy", "explain", "--node", "web1.example.org")
	for _, want := range []string{"web-server (x509, via group web)", "web1.web.internal", "bundle (static, via all nodes)", "not granted: etcd-peer, web-client"} {
		if !strings.Contains(explained, want) {
			t.Errorf("explain web1 does not say %q:\n%s", want, explained)
		}
	}

	etcdItems := `
items:
  - {type: x509, grant: etcd-peer, key: etcd1-files/peer.key, cert: etcd1-files/peer.crt, chain: etcd1-files/peer-chain.crt, ca: etcd1-files/etcd-ca.crt}
  - {type: x509, grant: web-client, key: etcd1-files/client.key, cert: etcd1-files/client.crt, ca: etcd1-files/web-ca.crt}
  - {type: static, name: bundle, path: etcd1-files/bundle.pem}
`
	// A grant of the other group: refused, and the others still served.
	w.appendTo(etcdCfg, etcdItems+`  - {type: x509, grant: web-server, key: etcd1-files/web.key, cert: etcd1-files/web.crt}
`)
	r := w.cmd("keyclient", "once", "--config", etcdCfg)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, "grant_denied") {
		t.Fatalf("etcd1 asking for web-server: exit %d, want 1 and grant_denied\n%s%s", r.code, r.stdout, r.stderr)
	}
	if w.exists("etcd1-files/web.key") || w.exists("etcd1-files/web.crt") {
		t.Error("a refused grant left files behind")
	}
	for _, f := range []string{"peer.crt", "client.crt", "bundle.pem"} {
		if !w.exists("etcd1-files/" + f) {
			t.Errorf("etcd1-files/%s missing: one refused item stopped the others", f)
		}
	}
	w.setItems(etcdCfg, etcdItems)
	w.must("keyclient", "once", "--config", etcdCfg)

	// A name outside the grant's allow list is refused by name.
	webItem := `  - {type: x509, grant: web-server, key: web1-files/web.key, cert: web1-files/web.crt, fullchain: web1-files/web-full.crt, ca: web1-files/web-ca.crt, dns: [%s], reload: "echo reloaded >> reloads.log"}
  - {type: static, name: bundle, path: web1-files/bundle.pem}
`
	w.setItems(webCfg, "\nitems:\n"+strings.ReplaceAll(webItem, "%s", "evil.example.com"))
	r = w.cmd("keyclient", "once", "--config", webCfg)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, "evil.example.com") || !strings.Contains(r.stdout+r.stderr, "name_not_allowed") {
		t.Fatalf("web1 asking for evil.example.com: exit %d, want 1, name_not_allowed, and the name\n%s%s", r.code, r.stdout, r.stderr)
	}
	w.setItems(webCfg, "\ncheck_interval: 1s\nitems:\n"+strings.ReplaceAll(webItem, "%s", "api.web.internal"))
	w.must("keyclient", "once", "--config", webCfg)
	if n := w.reloads(); n != 1 {
		t.Errorf("reload command ran %d times after the first issue, want 1", n)
	}

	// Each certificate chains to its own authority and carries exactly
	// the names the grant renders.
	clusterRoot := w.cert("srv/authorities/cluster/root.crt")
	webRoot := w.cert("srv/authorities/web/root.crt")
	peer := w.cert("etcd1-files/peer.crt")
	w.verify(peer, w.certs("etcd1-files/peer-chain.crt"), clusterRoot, x509.ExtKeyUsageServerAuth)
	w.verify(peer, w.certs("etcd1-files/peer-chain.crt"), clusterRoot, x509.ExtKeyUsageClientAuth)
	if w.chainsTo(peer, nil, webRoot) {
		t.Error("etcd-peer certificate verifies against the web root")
	}
	wantNames(t, "etcd-peer", peer, "etcd1.example.org", []string{"etcd1.example.org", "etcd1.etcd.internal"}, []string{"127.0.0.1"}, nil)
	if !w.cert("etcd1-files/etcd-ca.crt").Equal(clusterRoot) {
		t.Error("etcd1's ca file is not the etcd authority's root")
	}
	client := w.cert("etcd1-files/client.crt")
	w.verify(client, nil, webRoot, x509.ExtKeyUsageClientAuth)
	wantNames(t, "web-client", client, "client-etcd1", nil, nil, []string{"spiffe://example.org/etcd/etcd1"})
	server := w.cert("web1-files/web.crt")
	full := w.certs("web1-files/web-full.crt")
	if !full[0].Equal(server) {
		t.Error("fullchain does not start with the certificate")
	}
	w.verify(server, full[1:], webRoot, x509.ExtKeyUsageServerAuth)
	wantNames(t, "web-server", server, "web1.example.org", []string{"web1.example.org", "web1.web.internal", "api.web.internal"}, nil, nil)
	if o := server.Subject.Organization; !slices.Equal(o, []string{"example"}) {
		t.Errorf("web-server organization %q", o)
	}
	wantBundle := bundleText + string(authority.EncodePEM(clusterRoot, webRoot))
	for _, f := range []string{"etcd1-files/bundle.pem", "web1-files/bundle.pem"} {
		if got := w.read(f); got != wantBundle {
			t.Errorf("%s:\n%s\nwant\n%s", f, got, wantBundle)
		}
	}
	if fi, err := os.Stat(filepath.Join(w.dir, "web1-files/web.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("web.key: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}

	// web1's server certificate and etcd1's client certificate, each
	// trusting only the web authority, complete a mutual-TLS handshake.
	w.handshake("web1-files/web.key", "web1-files/web-full.crt", "etcd1-files/web-ca.crt",
		"etcd1-files/client.key", "etcd1-files/client.crt", "web1-files/web-ca.crt", "web1.example.org")

	// A bad policy is refused, by reload and by SIGHUP; the old one serves.
	before := w.policyDigest()
	w.write("srv/policy.yaml", strings.Replace(e2ePolicy, "    lifetime: 72h\n    to: {groups: [web]}", "    lifetime: 72h\n    colour: blue\n    to: {groups: [web]}", 1))
	r = w.cmd("keyctl", "policy", "reload")
	if r.code != 1 || !strings.Contains(r.stderr, "policy.yaml:28: unknown key \"colour\"") {
		t.Errorf("reload of a bad policy: exit %d, stderr %q; want 1 and policy.yaml:28: unknown key", r.code, r.stderr)
	}
	if err := w.ks.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	w.waitLog("policy refused", 2)
	if d := w.policyDigest(); d != before {
		t.Errorf("policy digest %s after refused reloads, want %s", d, before)
	}

	// The daemon puts back a removed certificate at its next check, and
	// runs the reload command once for it.
	daemon := w.startClient(webCfg)
	if err := os.Remove(filepath.Join(w.dir, "web1-files/web.crt")); err != nil {
		t.Fatal(err)
	}
	w.waitFor("the removed certificate to come back and the reload command to run", func() bool {
		return w.exists("web1-files/web.crt") && w.reloads() == 2
	})
	got := w.cert("web1-files/web.crt")
	wantNames(t, "recreated web-server", got, "web1.example.org", []string{"web1.example.org", "web1.web.internal", "api.web.internal"}, nil, nil)
	w.waitStatusWrites(webCfg, 3) // a few more checks pass
	if n := w.reloads(); n != 2 {
		t.Errorf("reload command ran %d times, want 2 (the first issue, the recreation)", n)
	}
	daemon.stop()
	if out := w.must("keyclient", "status", "--config", webCfg); !strings.Contains(out, "web-server") || !strings.Contains(out, "bundle") {
		t.Errorf("keyclient status:\n%s", out)
	}
}

func (w *world) write(name, data string) {
	w.t.Helper()
	path := filepath.Join(w.dir, name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) read(name string) string {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.dir, name))
	if err != nil {
		w.t.Fatal(err)
	}
	return string(data)
}

func (w *world) exists(name string) bool {
	_, err := os.Stat(filepath.Join(w.dir, name))
	return err == nil
}

func (w *world) appendTo(path, text string) {
	w.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(path, append(data, text...), 0o600); err != nil {
		w.t.Fatal(err)
	}
}

// setItems replaces everything after the installer's part of a config.
func (w *world) setItems(path, text string) {
	w.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		w.t.Fatal(err)
	}
	if i := bytes.Index(data, []byte("\nitems:")); i >= 0 {
		data = data[:i+1]
	}
	if i := bytes.Index(data, []byte("\ncheck_interval:")); i >= 0 {
		data = data[:i+1]
	}
	if err := os.WriteFile(path, append(data, text...), 0o600); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) reloads() int {
	data, err := os.ReadFile(filepath.Join(w.dir, "reloads.log"))
	if err != nil {
		return 0
	}
	return strings.Count(string(data), "reloaded\n")
}

func (w *world) certs(name string) []*x509.Certificate {
	w.t.Helper()
	out, err := pemutil.ParseCertificateBundle([]byte(w.read(name)))
	if err != nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	return out
}

func (w *world) cert(name string) *x509.Certificate { return w.certs(name)[0] }

func (w *world) chainsTo(leaf *x509.Certificate, inter []*x509.Certificate, root *x509.Certificate, usage ...x509.ExtKeyUsage) bool {
	roots, pool := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range inter {
		pool.AddCert(c)
	}
	if len(usage) == 0 {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: usage})
	return err == nil
}

func (w *world) verify(leaf *x509.Certificate, inter []*x509.Certificate, root *x509.Certificate, usage x509.ExtKeyUsage) {
	w.t.Helper()
	if !w.chainsTo(leaf, inter, root, usage) {
		w.t.Errorf("%s does not chain to %s for %v", leaf.Subject, root.Subject, usage)
	}
}

func wantNames(t *testing.T, what string, c *x509.Certificate, cn string, dns, ips, uris []string) {
	t.Helper()
	var gotIPs, gotURIs []string
	for _, ip := range c.IPAddresses {
		gotIPs = append(gotIPs, ip.String())
	}
	for _, u := range c.URIs {
		gotURIs = append(gotURIs, u.String())
	}
	if c.Subject.CommonName != cn || !slices.Equal(c.DNSNames, dns) || !slices.Equal(gotIPs, ips) || !slices.Equal(gotURIs, uris) || len(c.EmailAddresses) > 0 {
		t.Errorf("%s certificate: CN %q DNS %q IPs %q URIs %q e-mail %q; want CN %q DNS %q IPs %q URIs %q and no e-mail",
			what, c.Subject.CommonName, c.DNSNames, gotIPs, gotURIs, c.EmailAddresses, cn, dns, ips, uris)
	}
}

// handshake runs a TLS server with one node's credential and a client with
// another's, each trusting only the CA file given, requiring client
// certificates, and checks that both sides see each other.
func (w *world) handshake(srvKey, srvCert, srvCA, cliKey, cliCert, cliCA, serverName string) {
	w.t.Helper()
	pair := func(cert, key string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(w.dir, cert), filepath.Join(w.dir, key))
		if err != nil {
			w.t.Fatal(err)
		}
		return c
	}
	pool := func(name string) *x509.CertPool {
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM([]byte(w.read(name))) {
			w.t.Fatalf("%s: no certificates", name)
		}
		return p
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair(srvCert, srvKey)},
		ClientCAs:    pool(srvCA),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	defer l.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			seen <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			seen <- "server handshake: " + err.Error()
			return
		}
		seen <- "client " + tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{pair(cliCert, cliKey)},
		RootCAs:      pool(cliCA),
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		w.t.Fatalf("client handshake: %v", err)
	}
	defer c.Close()
	if err := c.Handshake(); err != nil {
		w.t.Fatalf("client handshake: %v", err)
	}
	if got := c.ConnectionState().PeerCertificates[0].Subject.CommonName; got != serverName {
		w.t.Errorf("client saw server %q, want %q", got, serverName)
	}
	if got := <-seen; got != "client client-etcd1" {
		w.t.Errorf("server: %s, want client client-etcd1", got)
	}
}

func (w *world) policyDigest() string {
	w.t.Helper()
	var st api.PolicyStatus
	if err := json.Unmarshal([]byte(w.must("keyctl", "policy", "status", "--json")), &st); err != nil {
		w.t.Fatal(err)
	}
	return st.Digest
}

// waitLog waits until the keyserver's log says what n times.
func (w *world) waitLog(what string, n int) {
	w.t.Helper()
	w.waitFor("the keyserver to log "+what, func() bool { return strings.Count(w.ksLog.String(), what) >= n })
}

// waitFor polls cond; it bounds how long a broken build may hang, it does
// not measure speed.
func (w *world) waitFor(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("gave up waiting for %s\nkeyserver log:\n%s", what, w.ksLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitStatusWrites waits until the daemon has written its status file n
// more times.
func (w *world) waitStatusWrites(cfg string, n int) {
	w.t.Helper()
	path := filepath.Join(strings.TrimSuffix(cfg, ".yaml")+"-state", "status.json")
	last, count := statStamp(path), 0
	w.waitFor("the daemon's status file to be rewritten", func() bool {
		if s := statStamp(path); s != last {
			last, count = s, count+1
		}
		return count >= n
	})
}

func statStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

type daemon struct {
	w    *world
	cmd  *exec.Cmd
	exit chan error
}

// startClient runs keyclient run on a config until stop.
func (w *world) startClient(cfg string) *daemon {
	w.t.Helper()
	d := &daemon{w: w, cmd: exec.Command(filepath.Join(w.bin, "keyclient"), "run", "--config", cfg), exit: make(chan error, 1)}
	d.cmd.Dir = w.dir
	d.cmd.Stdout, d.cmd.Stderr = &lockedBuffer{}, &lockedBuffer{}
	if err := d.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { d.exit <- d.cmd.Wait() }()
	w.t.Cleanup(func() { d.cmd.Process.Kill() })
	return d
}

func (d *daemon) stop() {
	d.w.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.exit; err != nil {
		d.w.t.Errorf("keyclient run: %v\n%s", err, d.cmd.Stderr.(*lockedBuffer))
	}
}
