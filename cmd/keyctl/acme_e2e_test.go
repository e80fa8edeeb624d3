package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keysystem/keysystem/keyserver/acme/pebbletest"
	"github.com/keysystem/keysystem/keyserver/api"
)

// TestACMEEndToEnd: a directory from keyctl init, its keyserver.yaml's
// acme section switched on, a policy with a label, and a real Pebble: the
// keyserver refuses the label until it has an http-01 listener, then
// obtains it; keyctl acme status shows it and keyctl acme renew orders a
// new version and waits for it.
func TestACMEEndToEnd(t *testing.T) {
	w := newWorld(t)
	w.must("keyctl", "init", "--dir", "srv", "--listen", w.addr)
	if fi, err := os.Stat(filepath.Join(w.dir, "srv", "acme.kek")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyctl init's acme.kek: %v, %v", fi, err)
	}
	w.refused(1, "already has acme.kek", "keyctl", "acme", "kek", "--dir", "srv")

	// The http-01 port stays taken while Pebble picks its own ports, and
	// is let go just before the keyserver listens on it.
	reserved, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	http01 := reserved.Addr().String()
	_, port, _ := net.SplitHostPort(http01)
	httpPort, _ := strconv.Atoi(port)
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: httpPort})
	w.write("srv/pebble-tls.pem", string(pb.RootsPEM))
	w.appendTo(filepath.Join(w.dir, "srv", "policy.yaml"), `
acme:
  accounts:
    pebble: {directory: "`+pb.Directory+`", ca_file: pebble-tls.pem}
  certificates:
    www:
      sni: [www.example.test]
      key_types: [ecdsa-p256]
      to: {groups: [all-web]}
`)
	if out := w.must("keyctl", "policy", "check", "srv/policy.yaml"); !strings.Contains(out, "1 acme certificates") {
		t.Errorf("policy check: %q", out)
	}
	w.write("bad-policy.yaml", "groups: {}\nacme:\n  accounts:\n    ca:\n      directory: letsencrypt\n      dns: {provider: nosuch}\n  certificates:\n    www: {sni: [\"*.example.org\"], challenge: dns-01, to: {all: true}}\n")
	// keyctl leaves providers it does not link to the keyserver, which
	// may be keyserver-alldns, and says so; their settings it checks.
	if r := w.cmd("keyctl", "policy", "check", "bad-policy.yaml"); r.code != 0 || !strings.Contains(r.stderr, `note: acme account "ca": dns provider "nosuch" is not linked into the keyserver`) {
		t.Errorf("policy check with an unlinked provider: exit %d, %s", r.code, r.stderr)
	}
	w.write("bad-policy.yaml", strings.Replace(w.read("bad-policy.yaml"), "provider: nosuch", "provider: rfc2136", 1))
	w.refused(1, `bad-policy.yaml:4: acme account "ca": `, "keyctl", "policy", "check", "bad-policy.yaml")
	w.refused(1, `RFC2136_NAMESERVER`, "keyctl", "policy", "check", "bad-policy.yaml")
	// Without an http-01 listener, the label cannot be obtained: refused
	// at start, with its line.
	w.refused(2, "policy.yaml:", "keyserver", "--config", "srv/keyserver.yaml")
	w.refused(2, "http01_listen", "keyserver", "--config", "srv/keyserver.yaml")

	conf := w.read("srv/keyserver.yaml")
	if !strings.Contains(conf, `  # http01_listen: "0.0.0.0:8080"`) {
		t.Fatalf("keyserver.yaml from keyctl init has no http01_listen line to uncomment:\n%s", conf)
	}
	w.write("srv/keyserver.yaml", strings.Replace(conf, `  # http01_listen: "0.0.0.0:8080"`, `  http01_listen: "`+http01+`"`, 1))
	reserved.Close()
	w.startKeyserver("--config", "srv/keyserver.yaml")

	out := w.must("keyctl", "acme", "status")
	if !strings.Contains(out, "LABEL") || !strings.Contains(out, "www") {
		t.Errorf("acme status:\n%s", out)
	}
	var s api.ACMEStatus
	w.waitFor("the first certificate", func() bool {
		if err := json.Unmarshal([]byte(w.must("keyctl", "acme", "status", "www", "--json")), &s); err != nil {
			t.Fatal(err)
		}
		if s.LastError != "" {
			t.Fatalf("the order failed: %s\n%s", s.LastError, w.ksLog)
		}
		return s.Next != nil
	})
	if s.Next.Number != 1 || !s.Placeholder || s.OrdersToday != 1 {
		t.Errorf("status after the first order: %+v", s)
	}
	out = w.must("keyctl", "acme", "status", "www")
	for _, want := range []string{"www.example.test", "next:", "version 1", "placeholder:", "1 in the last 24 hours (at most 10)", "no node has fetched"} {
		if !strings.Contains(out, want) {
			t.Errorf("acme status www does not say %q:\n%s", want, out)
		}
	}

	out = w.must("keyctl", "acme", "renew", "www", "--wait", "2m")
	if !strings.Contains(out, "www: version 2 obtained") {
		t.Errorf("acme renew: %q", out)
	}
	w.refused(1, "nosuch", "keyctl", "acme", "renew", "nosuch")
	w.refused(2, "one label", "keyctl", "acme", "renew")
	if !strings.Contains(w.ksLog.String(), "acme certificate obtained") {
		t.Errorf("the keyserver's log does not say a certificate was obtained:\n%s", w.ksLog)
	}
	w.stopKeyserver()
	if got := auditEvents(t, filepath.Join(w.dir, "srv", "audit.log")); got["acme.renew"] != 1 {
		t.Errorf("audit events %v, want one acme.renew", got)
	}
}
