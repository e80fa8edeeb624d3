package keyserver_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/api"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	const valid = "listen: 127.0.0.1:8443\nnames: [ks.example.com]\nauthorities: auth\nstore: {type: bolt, path: data/ks.db}\naudit_log: /var/log/ks/audit.log\npolicy: policy.yaml\n"
	for _, tc := range []struct {
		name, body string
		want       []string // substrings of the error; none for success
	}{
		{"valid", valid, nil},
		{"unknown key", valid + "admin_password: x\n", []string{"field admin_password not found"}},
		{"every problem at once", "listen: nowhere\nauthorities: auth\nstore: {type: etcd, path: x}\nlog_level: loud\n",
			[]string{"listen:", "names:", "store.type:", "log_level:"}},
		{"nothing at all", "{}\n", []string{"listen:", "names:", "authorities:", "store.path:"}},
		{"empty file", "", []string{"empty file"}},
		{"acme", valid + "acme:\n  http01_listen: :8080\n  dns: {listen: \":53\", zone: acme.example.org, nameservers: [ks1.example.org], resolvers: [\"127.0.0.1:53\"]}\n", nil},
		{"bad acme", valid + "acme:\n  http01_listen: nowhere\n  http01_probe: nohost\n  staging_time: -1h\n  dns: {zone: acme.example.org, resolvers: [x]}\n",
			[]string{"acme.http01_listen:", "acme.http01_probe:", "acme.staging_time", "acme.dns: the keyserver's own DNS server needs listen, zone and nameservers together", "acme.dns.resolvers:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeFile(t, dir, "keyserver.yaml", tc.body)
			c, err := keyserver.LoadConfig(path)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range [][2]string{
					{c.Authorities, filepath.Join(dir, "auth")},
					{c.Store.Path, filepath.Join(dir, "data", "ks.db")},
					{c.AuditLog, "/var/log/ks/audit.log"}, // absolute: kept
					{c.Policy, filepath.Join(dir, "policy.yaml")},
				} {
					if p[0] != p[1] {
						t.Errorf("path %q, want %q (relative paths are relative to the config's directory)", p[0], p[1])
					}
				}
				if c.Level() != slog.LevelInfo {
					t.Errorf("level %v", c.Level())
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded %+v, want an error", c)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestInitThenOpen: Init writes a keyserver directory that loads, opens and
// serves, and whose administrator credential the server accepts; a second
// Init on it is refused and changes nothing.
func TestInitThenOpen(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ks")
	opts := keyserver.InitOptions{Dir: dir, Listen: "127.0.0.1:8443"}
	if err := keyserver.Init(opts); err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, keyserver.AdminDir, "admin.key")
	checkMode := func(path string, want os.FileMode) {
		t.Helper()
		if fi, err := os.Stat(path); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	checkMode(filepath.Join(dir, keyserver.ConfigFile), 0o600)
	checkMode(filepath.Join(dir, keyserver.AdminConfigFile), 0o600)
	checkMode(keyPath, 0o600)
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyserver.Init(opts); err == nil || !strings.Contains(err.Error(), "already holds a keyserver") {
		t.Errorf("second Init: %v, want a refusal", err)
	}
	if again, _ := os.ReadFile(keyPath); !bytes.Equal(again, key) {
		t.Error("the refused second Init replaced the admin key")
	}

	fc, err := keyserver.LoadConfig(filepath.Join(dir, keyserver.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.Names) != 1 || fc.Names[0] != "127.0.0.1" || fc.Store.Path != filepath.Join(dir, keyserver.StoreFile) {
		t.Errorf("config names %q, store %q", fc.Names, fc.Store.Path)
	}
	srv, closer, err := keyserver.Open(fc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	checkMode(fc.Store.Path, 0o600)
	checkMode(fc.AuditLog, 0o600)
	defer func() {
		if err := closer.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	ac, err := keyserver.LoadAdminConfig(filepath.Join(dir, keyserver.AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if ac.Key != keyPath {
		t.Errorf("keyctl key %q, want %q", ac.Key, keyPath)
	}
	anchor, err := authority.Load(filepath.Join(dir, keyserver.AuthoritiesDir, authority.Server), authority.Server, authority.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if root, err := ac.ServerRoot(); err != nil || !root.Equal(anchor.Root()) {
		t.Errorf("keyctl's server_ca is not the server authority's root (%v)", err)
	}
	tlsCfg, err := ac.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + l.Addr().String() + api.PathNodes)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s with Init's admin credential: %s", api.PathNodes, resp.Status)
	}
}
