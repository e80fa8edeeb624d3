package keyclient

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const configHead = "node: web1\nservers: [https://127.0.0.1:8443]\ntrust_anchor: " + pin + "\nstate_dir: state\n"

func TestLoadConfigItems(t *testing.T) {
	path := writeConfig(t, configHead+`check_interval: 2m
items:
  - type: x509
    grant: web-server
    key: tls/web.key
    cert: /etc/tls/web.crt
    chain: tls/chain.crt
    fullchain: tls/full.crt
    ca: tls/ca.crt
    key_type: ed25519
    dns: [extra.web.internal]
    ips: ["10.1.2.3", "::ffff:10.1.2.4"]
    uris: ["spiffe://example.org/web"]
    mode: 0640
    reload: systemctl reload nginx
  - type: static
    name: trust-bundle
    path: bundle.pem
    owner: "0"
    group: "0"
    refresh: 30m
    reload_timeout: 5s
`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.settings()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Dir(path)
	if set.checkInterval != 2*time.Minute {
		t.Errorf("check_interval %v", set.checkInterval)
	}
	x, s := set.items[0], set.items[1]
	for got, want := range map[string]string{
		x.key: filepath.Join(base, "tls/web.key"), x.cert: "/etc/tls/web.crt", x.ca: filepath.Join(base, "tls/ca.crt"),
		s.path: filepath.Join(base, "bundle.pem"),
	} {
		if got != want {
			t.Errorf("path %q, want %q (relative to the config)", got, want)
		}
	}
	if x.mode != 0o640 || x.keyType != "ed25519" || x.reloadTimeout != 30*time.Second || x.refresh != time.Hour {
		t.Errorf("x509 item resolved to mode %o, key type %s, reload_timeout %v, refresh %v", x.mode, x.keyType, x.reloadTimeout, x.refresh)
	}
	if x.owner.UID != -1 || x.owner.GID != -1 {
		t.Errorf("no owner given: %+v, want -1/-1 (unchanged)", x.owner)
	}
	if len(x.ips) != 2 || x.ips[1].String() != "10.1.2.4" {
		t.Errorf("ips %v: a v4-mapped address is taken as IPv4", x.ips)
	}
	if s.mode != 0o644 || s.owner.UID != 0 || s.owner.GID != 0 || s.refresh != 30*time.Minute || s.reloadTimeout != 5*time.Second {
		t.Errorf("static item resolved to %+v", s)
	}
}

// Every bad item setting is reported, all at once, each naming its item,
// and loading the config writes nothing.
func TestLoadConfigItemProblems(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, items string
		want        []string
	}{
		{"unknown type", "  - type: ssh\n    grant: a\n", []string{`items[0] (ssh a): type "ssh": unknown item type`}},
		{"no type", "  - grant: a\n", []string{"items[0]: type: required"}},
		{"x509 without paths", "  - type: x509\n    grant: a\n    key: \"\"\n", []string{
			"items[0] (x509 a): key: a path is required", "items[0] (x509 a): cert: a path is required"}},
		{"x509 without grant", "  - {type: x509, key: k, cert: c}\n", []string{"items[0] (x509): grant: required"}},
		{"static without name or path", "  - type: static\n", []string{"items[0] (static): name: required", "items[0] (static): path: required"}},
		{"path is a directory", "  - {type: static, name: b, path: adir}\n", []string{"items[0] (static b): path " + filepath.Join(dir, "adir") + " is a directory"}},
		{"same path twice", "  - {type: x509, grant: a, key: k, cert: c}\n  - {type: static, name: b, path: k}\n",
			[]string{"items[1] (static b): path " + filepath.Join(dir, "k") + " is already used by items[0] (x509 a)"}},
		{"same path in one item", "  - {type: x509, grant: a, key: k, cert: k}\n", []string{"items[0] (x509 a): path " + filepath.Join(dir, "k") + " is already used by items[0] (x509 a)"}},
		{"path of the state directory", "  - {type: static, name: b, path: state/cgc.pem}\n", []string{"items[0] (static b): path " + filepath.Join(dir, "state/cgc.pem") + " is already used by the state directory"}},
		{"status file", "  - {type: static, name: b, path: state/status.json}\n", []string{"items[0] (static b): path", "the state directory"}},
		{"unknown owner", "  - {type: static, name: b, path: p, owner: nosuch-user-kc}\n", []string{`items[0] (static b): owner "nosuch-user-kc": unknown user`}},
		{"unknown group", "  - {type: x509, grant: web-server, key: k, cert: c, group: nosuch-group-kc}\n", []string{`items[0] (x509 web-server): group "nosuch-group-kc": unknown group`}},
		{"negative uid", "  - {type: static, name: b, path: p, owner: \"-3\"}\n", []string{`items[0] (static b): owner "-3": a negative id`}},
		{"bad mode", "  - {type: static, name: b, path: p, mode: \"0999\"}\n", []string{`items[0] (static b): mode: "0999" is not an octal permission`}},
		{"mode too wide", "  - {type: static, name: b, path: p, mode: \"01644\"}\n", []string{`items[0] (static b): mode: "01644" is not an octal permission`}},
		{"owner cannot read", "  - {type: static, name: b, path: p, mode: \"0244\"}\n", []string{`items[0] (static b): mode: "0244": the owner could not read`}},
		{"key readable by all", "  - {type: x509, grant: a, key: k, cert: c, mode: \"0644\"}\n", []string{"items[0] (x509 a): mode 0644: would let every user"}},
		{"bad key type", "  - {type: x509, grant: a, key: k, cert: c, key_type: dsa}\n", []string{`items[0] (x509 a): key_type: authority: unknown key type "dsa"`}},
		{"bad durations", "  - {type: static, name: b, path: p, reload_timeout: 3x, refresh: 1s}\n", []string{
			`items[0] (static b): reload_timeout: "3x" is not a duration`, "items[0] (static b): refresh: 1s is outside 1m0s"}},
		{"zero timeout", "  - {type: static, name: b, path: p, reload_timeout: 0s}\n", []string{"items[0] (static b): reload_timeout: 0s is outside"}},
		{"negative refresh", "  - {type: static, name: b, path: p, refresh: -1h}\n", []string{"items[0] (static b): refresh: -1h is outside"}},
		{"same static twice", "  - {type: static, name: a, path: p1}\n  - {type: static, name: a, path: p2}\n",
			[]string{`items[1] (static a): "a" is already kept by items[0] (static a)`}},
		{"grant named like a static", "  - {type: static, name: a, path: p}\n  - {type: x509, grant: a, key: k1, cert: c1}\n",
			[]string{`items[1] (x509 a): "a" is already kept by items[0] (static a)`}},
		{"same grant twice, same key", "  - {type: x509, grant: a, key: k1, cert: c1}\n  - {type: x509, grant: a, key: k1, cert: c2}\n",
			[]string{"items[1] (x509 a): path " + filepath.Join(dir, "k1") + " is already used by items[0] (x509 a)"}},
		{"static named like a grant", "  - {type: x509, grant: a, key: k1, cert: c1}\n  - {type: static, name: a, path: p}\n",
			[]string{`items[1] (static a): "a" is already kept by items[0] (x509 a)`}},
		{"fields of the other type", "  - {type: static, name: b, path: p, key: k}\n  - {type: x509, grant: a, key: k1, cert: c1, path: p2}\n",
			[]string{"items[0] (static b): grant, key,", "items[1] (x509 a): name and path are for static items"}},
		{"bad names", "  - {type: x509, grant: a, key: k, cert: c, dns: [\"bad name\"], ips: [10.0.0.300], uris: [\"relative/x\"]}\n", []string{
			`items[0] (x509 a): dns: "bad name" is not a DNS name`, `items[0] (x509 a): ips: "10.0.0.300" is not an IP address`, `items[0] (x509 a): uris: "relative/x" is not an absolute URI`}},
		{"bad grant name", "  - {type: x509, grant: Web/1, key: k, cert: c}\n", []string{`items[0] (x509 Web/1): not a grant name: name "Web/1": use lower-case letters`}},
		{"check interval", "  - {type: static, name: b, path: p}\ncheck_interval: 10ms\n", []string{"check_interval: 10ms is outside"}},
		{"acme without anything", "  - type: acme\n", []string{"items[0] (acme): label: required", "items[0] (acme): key: a path is required",
			"items[0] (acme): cert or fullchain: a path is required for at least one"}},
		{"acme key type of x509", "  - {type: acme, label: www, key: k, fullchain: f, key_type: ecdsa-p256}\n", []string{
			`items[0] (acme www): key_type "ecdsa-p256": an acme item names the family, ecdsa or rsa`}},
		{"acme unknown key type", "  - {type: acme, label: www, key: k, fullchain: f, key_type: dsa}\n", []string{`items[0] (acme www): key_type "dsa": unknown (want ecdsa or rsa`}},
		{"acme fields of x509 and static", "  - {type: acme, label: www, key: k, cert: c, ca: r, dns: [x.example], grant: g}\n", []string{
			"items[0] (acme www): grant, name, path, ca, dns, ips and uris are not for acme items"}},
		{"acme bad label", "  - {type: acme, label: WWW, key: k, cert: c}\n", []string{`items[0] (acme WWW): not an acme label: name "WWW"`}},
		{"acme key readable by all", "  - {type: acme, label: www, key: k, cert: c, mode: \"0604\"}\n", []string{"items[0] (acme www): mode 0604: would let every user"}},
		{"acme same key twice", "  - {type: acme, label: www, key: k, fullchain: f1}\n  - {type: acme, label: www, key_type: rsa, key: k, fullchain: f2}\n",
			[]string{"items[1] (acme www): path " + filepath.Join(dir, "k") + " is already used by items[0] (acme www)"}},
		{"acme cert is another item's key", "  - {type: x509, grant: a, key: k, cert: c}\n  - {type: acme, label: www, key: k2, cert: k}\n",
			[]string{"items[1] (acme www): path " + filepath.Join(dir, "k") + " is already used by items[0] (x509 a)"}},
		{"acme copy in the state directory", "  - {type: acme, label: www, key: k, cert: c}\n  - {type: acme, label: www, key: k2, cert: state/acme/www#2.json}\n",
			[]string{"items[1] (acme www): path " + filepath.Join(dir, "state/acme/www#2.json") + " is already used by the state directory"}},
		{"label on other types", "  - {type: static, name: b, path: p, label: www}\n  - {type: x509, grant: a, key: k1, cert: c1, label: www}\n",
			[]string{"items[0] (static b): grant, key, cert, chain, fullchain, ca, key_type, dns, ips and uris are for x509 items, label for acme items",
				"items[1] (x509 a): name and path are for static items, label for acme items"}},
		{"unknown item key", "  - {type: static, name: b, path: p, refesh: 1h}\n", []string{"field refesh not found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "node.yaml")
			if err := os.WriteFile(path, []byte(configHead+"items:\n"+tc.items), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%s\ndoes not say %q", err, w)
				}
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 2 { // node.yaml and adir
				t.Errorf("loading a config wrote something: %v", entries)
			}
		})
	}
}

func TestLoadConfigACMEItems(t *testing.T) {
	path := writeConfig(t, configHead+`items:
  - type: acme
    label: www
    key: tls/www.key
    fullchain: tls/www.pem
    reload: systemctl reload nginx
  - type: acme
    label: www
    key_type: RSA
    key: tls/www-rsa.key
    cert: tls/www-rsa.crt
    chain: tls/www-rsa-chain.crt
    mode: "0640"
    group: "0"
    refresh: 1h
  - {type: x509, grant: www, key: tls/x.key, cert: tls/x.crt}
`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := cfg.settings()
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Dir(path)
	a, b, x := set.items[0], set.items[1], set.items[2]
	if a.typ != TypeACME || a.id != "www" || a.name != "www" || a.family != "" || a.mode != 0o600 || a.refresh != 15*time.Minute ||
		a.key != filepath.Join(base, "tls/www.key") || a.fullchain != filepath.Join(base, "tls/www.pem") || a.cert != "" {
		t.Errorf("first acme item resolved to %+v", a)
	}
	if b.id != "www#2" || b.family != familyRSA || b.mode != 0o640 || b.owner.GID != 0 || b.refresh != time.Hour || b.chain != filepath.Join(base, "tls/www-rsa-chain.crt") {
		t.Errorf("second acme item resolved to %+v", b)
	}
	// An x509 grant of the same name is another name space.
	if x.id != "www" || x.typ != TypeX509 {
		t.Errorf("x509 item resolved to %+v", x)
	}
	if got := len(a.files()); got != 2 {
		t.Errorf("first acme item has %d files, want 2", got)
	}
}

func TestLoadConfigReportsEveryItemProblemAtOnce(t *testing.T) {
	path := writeConfig(t, configHead+`items:
  - {type: bogus}
  - {type: x509, grant: a, key: k, cert: c, owner: nosuch-user-kc, mode: "0666", key_type: dsa}
  - {type: static, name: b, path: k, reload_timeout: soon}
`)
	_, err := LoadConfig(path)
	if err == nil {
		t.Fatal("config accepted")
	}
	for _, w := range []string{"items[0] (bogus)", `items[1] (x509 a): owner "nosuch-user-kc"`, "items[1] (x509 a): mode 0666",
		"items[1] (x509 a): key_type", "items[2] (static b): path", "already used by items[1]", "items[2] (static b): reload_timeout"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error\n%s\ndoes not say %q", err, w)
		}
	}
}

func TestLookupID(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skip("no current user:", err)
	}
	uid, _ := strconv.Atoi(me.Uid)
	gid, _ := strconv.Atoi(me.Gid)
	grp, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Skip("current group has no name:", err)
	}
	for _, tc := range []struct {
		in   string
		kind idKind
		want int
		err  string
	}{
		{"", userID, -1, ""},
		{"", groupID, -1, ""},
		{me.Username, userID, uid, ""},
		{grp.Name, groupID, gid, ""},
		{"4242", userID, 4242, ""}, // a number need not have a name
		{"4242", groupID, 4242, ""},
		{"-1", userID, 0, "negative"},
		{"nosuch-user-kc", userID, 0, "unknown user"},
		{"nosuch-group-kc", groupID, 0, "unknown group"},
	} {
		got, err := lookupID(tc.in, tc.kind)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("lookupID(%q, %d) = %d, %v; want %d", tc.in, tc.kind, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("lookupID(%q, %d) = %d, %v; want an error saying %q", tc.in, tc.kind, got, err, tc.err)
		}
	}
}

// An installer config (no items) is unchanged by the items support: it
// marshals without the new keys.
func TestMarshalWithoutItems(t *testing.T) {
	c := &Config{Node: "web1", Servers: []string{"https://k:1"}, TrustAnchor: pin, StateDir: "/var/lib/keyclient"}
	out, err := c.Marshal("x")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "items") || strings.Contains(string(out), "check_interval") {
		t.Errorf("marshalled config mentions item settings:\n%s", out)
	}
}
