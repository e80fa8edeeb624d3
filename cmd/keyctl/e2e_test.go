package main

// End to end: the three binaries, built fresh, run as real processes that
// talk TLS over loopback.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
	"go.step.sm/crypto/pemutil"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds keyserver, keyclient and keyctl once per test binary.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "keysystem-e2e-bin")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-race", "-o", binDir+"/", "../keyserver", "../keyclient", ".")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type world struct {
	t     *testing.T
	bin   string
	dir   string
	addr  string
	ks    *exec.Cmd
	ksLog *lockedBuffer
	exit  chan error
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, bin: binaries(t), dir: t.TempDir(), addr: freeAddr(t)}
	t.Cleanup(func() {
		if w.ks != nil {
			w.ks.Process.Kill()
			<-w.exit
		}
	})
	return w
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// result of one command.
type result struct {
	code           int
	stdout, stderr string
}

func (w *world) cmd(name string, args ...string) result {
	w.t.Helper()
	cmd := exec.Command(filepath.Join(w.bin, name), args...)
	cmd.Dir = w.dir
	cmd.Env = append(os.Environ(), "KEYCTL_CONFIG="+filepath.Join(w.dir, "srv", "keyctl.yaml"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatalf("%s %v: %v", name, args, err)
	}
	return r
}

// must runs a command that has to succeed.
func (w *world) must(name string, args ...string) string {
	w.t.Helper()
	r := w.cmd(name, args...)
	if r.code != 0 {
		w.t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// refused runs a command that has to fail with code and mention want.
func (w *world) refused(code int, want string, name string, args ...string) {
	w.t.Helper()
	r := w.cmd(name, args...)
	if r.code != code || !strings.Contains(r.stderr, want) {
		w.t.Fatalf("%s %s: exit %d (want %d), stderr %q (want it to mention %q)", name, strings.Join(args, " "), r.code, code, r.stderr, want)
	}
}

func (w *world) startKeyserver(args ...string) {
	w.t.Helper()
	w.ks = exec.Command(filepath.Join(w.bin, "keyserver"), args...)
	w.ks.Dir = w.dir
	w.ksLog = &lockedBuffer{}
	w.ks.Stdout, w.ks.Stderr = w.ksLog, w.ksLog
	if err := w.ks.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.exit = make(chan error, 1)
	go func() { w.exit <- w.ks.Wait() }()
	for range 200 {
		c, err := net.Dial("tcp", w.addr)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-w.exit:
			w.ks = nil
			w.t.Fatalf("keyserver exited: %v\n%s", err, w.ksLog)
		case <-time.After(50 * time.Millisecond):
		}
	}
	w.t.Fatalf("keyserver did not listen on %s\n%s", w.addr, w.ksLog)
}

// stopKeyserver sends SIGTERM and wants a clean exit.
func (w *world) stopKeyserver() {
	w.t.Helper()
	if err := w.ks.Process.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatal(err)
	}
	if err := <-w.exit; err != nil {
		w.t.Fatalf("keyserver did not exit cleanly on SIGTERM: %v\n%s", err, w.ksLog)
	}
	w.ks = nil
}

// installer writes a keyclient config for node into name.yaml.
func (w *world) installer(node, name string, extra ...string) string {
	w.t.Helper()
	out := w.must("keyctl", append([]string{"installer", "--node", node, "--state-dir", name + "-state"}, extra...)...)
	path := filepath.Join(w.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return path
}

// rewrite replaces a top-level key in a keyclient config.
func (w *world) rewrite(src, dst, key, value string) string {
	w.t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		w.t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + key + `: .*$`)
	data = re.ReplaceAll(data, []byte(key+": "+value))
	path := filepath.Join(w.dir, dst)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		w.t.Fatal(err)
	}
	return path
}

// cgcSerial reads the serial of the CGC a node holds.
func (w *world) cgcSerial(stateDir string) string {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.dir, stateDir, "cgc.pem"))
	if err != nil {
		w.t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(w.dir, stateDir, "cgc.pem"))
	if fi.Mode().Perm() != 0o600 {
		w.t.Errorf("cgc.pem mode %v, want 0600", fi.Mode().Perm())
	}
	certs, err := pemutil.ParseCertificateBundle(data)
	if err != nil {
		w.t.Fatalf("cgc.pem: %v", err)
	}
	return fmt.Sprintf("%x", certs[0].SerialNumber)
}

func (w *world) nodes() map[string]api.NodeInfo {
	w.t.Helper()
	var list api.NodeList
	if err := json.Unmarshal([]byte(w.must("keyctl", "node", "list", "--json")), &list); err != nil {
		w.t.Fatal(err)
	}
	m := map[string]api.NodeInfo{}
	for _, n := range list.Nodes {
		m[n.Name] = n
	}
	return m
}

func (w *world) tokens() map[string]api.TokenInfo {
	w.t.Helper()
	var list api.TokenList
	if err := json.Unmarshal([]byte(w.must("keyctl", "token", "list", "--json")), &list); err != nil {
		w.t.Fatal(err)
	}
	m := map[string]api.TokenInfo{}
	for _, tk := range list.Tokens {
		m[tk.ID] = tk
	}
	return m
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newWorld(t)
	w.must("keyctl", "init", "--dir", "srv", "--listen", w.addr)
	w.refused(1, "already holds a keyserver", "keyctl", "init", "--dir", "srv", "--listen", w.addr)
	w.startKeyserver("--config", "srv/keyserver.yaml")

	// Admit web1 with a token from the installer.
	web1 := w.installer("web1", "web1")
	out := w.must("keyclient", "once", "--config", web1)
	if !strings.Contains(out, "admitted") {
		t.Fatalf("first pass did not admit: %s", out)
	}
	first := w.cgcSerial("web1-state")
	if n := w.nodes()["web1"]; n.Serial != first {
		t.Fatalf("keyserver holds serial %s for web1, node holds %s", n.Serial, first)
	}

	// A second pass has nothing to do; a forced one renews with a new key.
	if out := w.must("keyclient", "once", "--config", web1); !strings.Contains(out, "nothing to do") {
		t.Errorf("second pass: %s", out)
	}
	w.must("keyclient", "once", "--config", web1, "--renew")
	second := w.cgcSerial("web1-state")
	if second == first {
		t.Fatal("renewal kept the serial")
	}
	if n := w.nodes()["web1"]; n.Serial != second || n.PreviousSerial != first || n.Renewals != 1 {
		t.Fatalf("after renewal the keyserver has %+v, want current serial %s", n, second)
	}

	// The spent token, on a fresh node with a fresh key: refused.
	replay := w.rewrite(web1, "replay.yaml", "state_dir", "replay-state")
	w.refused(1, "token_invalid", "keyclient", "once", "--config", replay)

	// A keyclient whose pin does not match refuses the keyserver before
	// sending its token: the same token then still works with the right pin.
	web2 := w.installer("web2", "web2")
	badPin := w.rewrite(web2, "web2-badpin.yaml", "trust_anchor", "sha256:"+strings.Repeat("ab", 32))
	w.refused(1, "does not match the pinned trust anchor", "keyclient", "once", "--config", badPin)
	w.must("keyclient", "once", "--config", web2)

	// Bad usage and bad configuration exit 2.
	w.refused(2, "trust_anchor", "keyclient", "once", "--config", w.rewrite(web2, "broken.yaml", "trust_anchor", "md5:00"))
	w.refused(2, "unknown command", "keyctl", "frobnicate")
	w.refused(2, "--node is required", "keyctl", "token", "issue")

	// A pending token and the nodes survive a restart of the keyserver.
	tok := strings.TrimSpace(w.must("keyctl", "token", "issue", "--node", "web3", "--ttl", "10m"))
	if !strings.HasPrefix(tok, "ks1_") || strings.Contains(tok, "\n") {
		t.Fatalf("token issue printed %q, want the token alone", tok)
	}
	w.stopKeyserver()
	w.startKeyserver("--config", "srv/keyserver.yaml")
	if n := w.nodes(); n["web1"].Serial != second || n["web2"].Serial != w.cgcSerial("web2-state") {
		t.Fatalf("nodes after restart: %+v", n)
	}
	pending := 0
	for _, tk := range w.tokens() {
		if tk.Node == "web3" && tk.State == "pending" {
			pending++
		}
	}
	if pending != 1 {
		t.Fatalf("web3's pending token did not survive the restart: %+v", w.tokens())
	}
	web3 := w.rewrite(w.installer("web2", "unused"), "web3.yaml", "node", "web3")
	web3 = w.rewrite(web3, "web3.yaml", "token", tok)
	web3 = w.rewrite(web3, "web3.yaml", "state_dir", "web3-state")
	w.must("keyclient", "once", "--config", web3)

	// A crash (SIGKILL, no chance to flush anything) loses nothing either:
	// a committed write is on disk before the client hears of it.
	w.ks.Process.Kill()
	<-w.exit
	w.ks = nil
	w.startKeyserver("--config", "srv/keyserver.yaml")
	if n := w.nodes()["web3"]; n.Serial != w.cgcSerial("web3-state") {
		t.Fatalf("web3 lost in the crash: %+v", n)
	}

	// The daemon: it starts, has nothing due, sleeps, and stops on SIGTERM.
	daemon := exec.Command(filepath.Join(w.bin, "keyclient"), "run", "--config", web2)
	daemon.Dir = w.dir
	dlog := &lockedBuffer{}
	daemon.Stderr = dlog
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; !strings.Contains(dlog.String(), "keyclient running"); i++ {
		if i == 200 {
			t.Fatalf("keyclient run did not start:\n%s", dlog)
		}
		time.Sleep(50 * time.Millisecond)
	}
	daemon.Process.Signal(syscall.SIGTERM)
	if err := daemon.Wait(); err != nil {
		t.Fatalf("keyclient run did not stop cleanly on SIGTERM: %v\n%s", err, dlog)
	}

	// Revoke web1: its CGC stops working at once.
	w.must("keyctl", "node", "revoke", "web1")
	w.refused(1, "node_revoked", "keyclient", "once", "--config", web1, "--renew")
	if n := w.nodes()["web1"]; !n.Revoked {
		t.Fatalf("web1 not revoked: %+v", n)
	}

	w.stopKeyserver()
	events := auditEvents(t, filepath.Join(w.dir, "srv", "audit.log"))
	for _, want := range []string{"token.issue", "admit", "renew", "admit.deny", "node.revoke", "auth.deny"} {
		if events[want] == 0 {
			t.Errorf("audit log has no %q event (has %v)", want, events)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(w.dir, "srv", "audit.log"))
	if strings.Contains(string(audit), tok) || strings.Contains(w.ksLog.String(), tok) {
		t.Error("a token's secret reached the audit log or the server log")
	}
}

func auditEvents(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	events := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e struct{ Event string }
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		events[e.Event]++
	}
	return events
}

// TestDevMode: `keyserver --dev` needs no set-up at all, and its first
// token admits a node.
func TestDevMode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newWorld(t)
	w.startKeyserver("--dev", "--listen", w.addr, "--dir", "srv")
	var tok string
	for range 100 {
		if m := regexp.MustCompile(`First token, for node dev1 \(valid 1h\): (\S+)`).FindStringSubmatch(w.ksLog.String()); m != nil {
			tok = m[1]
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if tok == "" {
		t.Fatalf("keyserver --dev printed no token:\n%s", w.ksLog)
	}
	out := w.must("keyctl", "installer", "--node", "dev1", "--token", tok, "--state-dir", "dev1-state")
	path := filepath.Join(w.dir, "dev1.yaml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	w.must("keyclient", "once", "--config", path)
	if n := w.nodes()["dev1"]; n.Serial != w.cgcSerial("dev1-state") {
		t.Fatalf("dev1 not admitted: %+v", n)
	}
	w.stopKeyserver()
}
