package main

// keyctl init and keyctl authority, run in-process on temporary
// directories: they only write files, so no keyserver is needed.

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
)

// keyctl runs the command in-process and returns its exit code and output.
func keyctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// initDir writes a keyserver directory with keyctl init and returns it.
func initDir(t *testing.T, extra ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "srv")
	if code, out, errs := keyctl(t, append([]string{"init", "--dir", dir, "--listen", "127.0.0.1:8443"}, extra...)...); code != 0 {
		t.Fatalf("keyctl init: exit %d\n%s%s", code, out, errs)
	}
	return dir
}

// TestInitWritesPolicy: init writes the example policy, names it in
// keyserver.yaml, and creates the authority it uses, of the same kind as
// the built-ins.
func TestInitWritesPolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flags []string
		inter bool
		kt    string
	}{
		{"default", nil, false, "ecdsa-p256"},
		{"intermediate ed25519", []string{"--intermediate", "--key-type", "ed25519"}, true, "ed25519"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "srv")
			code, out, errs := keyctl(t, append([]string{"init", "--dir", dir, "--listen", "127.0.0.1:8443"}, tc.flags...)...)
			if code != 0 {
				t.Fatalf("keyctl init: exit %d\n%s%s", code, out, errs)
			}
			if !strings.Contains(out, keyserver.PolicyFile) || !strings.Contains(out, "keyctl policy reload") {
				t.Errorf("init output does not mention the policy:\n%s", out)
			}
			conf, err := os.ReadFile(filepath.Join(dir, keyserver.ConfigFile))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(conf), "\npolicy: "+keyserver.PolicyFile+"\n") {
				t.Errorf("%s does not name the policy:\n%s", keyserver.ConfigFile, conf)
			}
			if strings.Contains(string(conf), "cgc_lifetime") {
				t.Errorf("%s still sets cgc_lifetime (it moved into the policy):\n%s", keyserver.ConfigFile, conf)
			}
			pol, err := os.ReadFile(filepath.Join(dir, keyserver.PolicyFile))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"cgc:\n  lifetime: 720h", "renew_after_expiry: 0s",
				"authorities:\n  internal: {}", "groups:\n  all-web:",
				"  node-tls:", "authority: internal", "usage: both", `common_name: "{{.Node}}"`,
				`dns: ["{{.Node}}"]`, `ips: ["{{.IPs}}"]`, "lifetime: 168h",
				"  internal-ca:", "type: static", "authorities: [internal]", "to: {all: true}",
			} {
				if !strings.Contains(string(pol), want) {
					t.Errorf("%s lacks %q", keyserver.PolicyFile, want)
				}
			}
			for _, name := range []string{keyserver.ExampleAuthority, authority.KeyGranting} {
				a, err := authority.Load(filepath.Join(dir, keyserver.AuthoritiesDir, name), name, authority.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if got := len(a.Chain()) > 0; got != tc.inter {
					t.Errorf("%s: intermediate %v, want %v", name, got, tc.inter)
				}
				if got := authority.KeyTypeOf(a.Root().PublicKey); got != tc.kt {
					t.Errorf("%s: key type %s, want %s", name, got, tc.kt)
				}
			}
		})
	}
}

// TestAuthorityCreateAndList: a shared root with two intermediates under
// it, a root with its own intermediate and a plain root; each loads, the
// intermediates chain to the shared root without holding its key, and the
// list says what each is.
func TestAuthorityCreateAndList(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	adir := filepath.Join(dir, keyserver.AuthoritiesDir)
	for _, args := range [][]string{
		{"cluster", "--dir", dir, "--shared-root"},
		{"etcd", "--dir", dir, "--parent", "cluster"},
		{"--dir", dir, "--parent", "cluster", "--key-type", "ed25519", "kube.api"}, // flags first
		{"solo", "--dir", dir, "--intermediate", "--key-type", "rsa-3072"},
		{"plain", "--dir", dir},
	} {
		code, out, errs := keyctl(t, append([]string{"authority", "create"}, args...)...)
		if code != 0 {
			t.Fatalf("authority create %q: exit %d\n%s%s", args, code, out, errs)
		}
		name := args[0]
		if name == "--dir" {
			name = args[len(args)-1]
		}
		if !strings.Contains(out, "    "+name+": {}\n") || !strings.Contains(out, "keyctl policy reload") {
			t.Errorf("authority create %s: output lacks the next step:\n%s", name, out)
		}
	}

	load := func(name string) *authority.Authority {
		t.Helper()
		a, err := authority.Load(filepath.Join(adir, name), name, authority.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	cluster := load("cluster")
	if cluster.Root().MaxPathLen != 1 || len(cluster.Chain()) != 0 {
		t.Errorf("cluster: path length %d, chain %d; want a shared root (1, none)", cluster.Root().MaxPathLen, len(cluster.Chain()))
	}
	for _, tc := range []struct{ name, kt string }{{"etcd", "ecdsa-p256"}, {"kube.api", "ed25519"}} {
		a := load(tc.name)
		if !a.Root().Equal(cluster.Root()) || len(a.Chain()) != 1 {
			t.Fatalf("%s is not an intermediate under cluster", tc.name)
		}
		if err := a.Chain()[0].CheckSignatureFrom(cluster.Root()); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if got := authority.KeyTypeOf(a.Chain()[0].PublicKey); got != tc.kt {
			t.Errorf("%s: key type %s, want %s", tc.name, got, tc.kt)
		}
		if _, err := os.Stat(filepath.Join(adir, tc.name, authority.RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s holds a root key (%v)", tc.name, err)
		}
		k, _ := authority.GenerateKey(authority.ECDSAP256)
		leaf, err := a.Sign(authority.Request{PublicKey: k.Public(), CommonName: "n1", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Verify(leaf, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("%s: leaf does not verify: %v", tc.name, err)
		}
	}
	if solo := load("solo"); len(solo.Chain()) != 1 || authority.KeyTypeOf(solo.Root().PublicKey) != "rsa-3072" {
		t.Error("solo: want an RSA root with its own intermediate")
	}

	code, out, errs := keyctl(t, "authority", "list", "--dir", dir)
	if code != 0 {
		t.Fatalf("authority list: exit %d\n%s%s", code, out, errs)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		name, rest, _ := strings.Cut(line, " ")
		rows[name] = strings.TrimSpace(rest)
	}
	pin := authority.SPKIPin(cluster.Root())
	for name, want := range map[string][]string{
		"cluster":                  {"shared root ", "ecdsa-p256", pin},
		"etcd":                     {"intermediate under cluster ", "ecdsa-p256", pin},
		"kube.api":                 {"intermediate under cluster ", "ed25519", pin},
		"solo":                     {"intermediate under own root ", "rsa-3072"},
		"plain":                    {"root ", "ecdsa-p256"},
		keyserver.ExampleAuthority: {"root "},
		authority.KeyGranting:      {"root "},
		authority.Server:           {"root "},
		authority.Admin:            {"root "},
	} {
		row, ok := rows[name]
		if !ok {
			t.Errorf("authority list lacks %s:\n%s", name, out)
			continue
		}
		if !strings.HasPrefix(row, want[0]) {
			t.Errorf("%s: kind in %q, want %q", name, row, want[0])
		}
		for _, w := range want[1:] {
			if !strings.Contains(row, w) {
				t.Errorf("%s: %q lacks %q", name, row, w)
			}
		}
	}
	if len(rows) != 9 {
		t.Errorf("authority list shows %d authorities, want 9:\n%s", len(rows), out)
	}

	// A directory that is not an authority is reported, and the rest
	// still listed.
	if err := os.Mkdir(filepath.Join(adir, "broken"), 0o700); err != nil {
		t.Fatal(err)
	}
	code, out, errs = keyctl(t, "authority", "list", "--dir", dir)
	if code != 1 || !strings.Contains(errs, "broken") || !strings.Contains(out, "\netcd ") {
		t.Errorf("list with a broken authority: exit %d, stdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

// TestAuthorityCreateRefuses: bad usage exits 2, refusals exit 1, and
// neither writes anything.
func TestAuthorityCreateRefuses(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	adir := filepath.Join(dir, keyserver.AuthoritiesDir)
	for _, args := range [][]string{
		{"cluster", "--dir", dir, "--shared-root"},
		{"etcd", "--dir", dir, "--parent", "cluster"},
		{"solo", "--dir", dir, "--intermediate"},
	} {
		if code, out, errs := keyctl(t, append([]string{"authority", "create"}, args...)...); code != 0 {
			t.Fatalf("authority create %q: exit %d\n%s%s", args, code, out, errs)
		}
	}
	entries := func() []string {
		t.Helper()
		var names []string
		err := filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
			names = append(names, path)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	before := entries()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"exists", []string{"etcd", "--dir", dir}, 1, "already exists"},
		{"the example exists", []string{keyserver.ExampleAuthority, "--dir", dir}, 1, "already exists"},
		{"built-in name", []string{authority.KeyGranting, "--dir", dir}, 2, "built-in"},
		{"bad name", []string{"Etcd", "--dir", dir}, 2, "bad authority name"},
		{"path as name", []string{"../evil", "--dir", dir}, 2, "bad authority name"},
		{"no name", []string{"--dir", dir}, 2, "want one authority name"},
		{"two names", []string{"a", "b", "--dir", dir}, 2, "want one authority name"},
		{"no dir", []string{"x"}, 2, "--dir is required"},
		{"not a keyserver dir", []string{"x", "--dir", adir}, 2, "not a keyserver directory"},
		{"bad key type", []string{"x", "--dir", dir, "--key-type", "dsa"}, 2, "unknown key type"},
		{"shared root with parent", []string{"x", "--dir", dir, "--shared-root", "--parent", "cluster"}, 2, "exclude each other"},
		{"shared root with intermediate", []string{"x", "--dir", dir, "--shared-root", "--intermediate"}, 2, "exclude each other"},
		{"unknown parent", []string{"x", "--dir", dir, "--parent", "nope"}, 2, "no such authority"},
		{"bad parent name", []string{"x", "--dir", dir, "--parent", "../srv/authorities/cluster"}, 2, "bad authority name"},
		{"built-in parent", []string{"x", "--dir", dir, "--parent", authority.KeyGranting}, 2, "cannot be a parent"},
		{"parent of path length 0", []string{"x", "--dir", dir, "--parent", keyserver.ExampleAuthority}, 1, "path length 0"},
		{"parent with an intermediate", []string{"x", "--dir", dir, "--parent", "solo"}, 1, "--shared-root"},
		{"parent is itself under a root", []string{"x", "--dir", dir, "--parent", "etcd"}, 1, "cannot be a parent"},
		{"unknown flag", []string{"x", "--dir", dir, "--bogus"}, 2, "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := keyctl(t, append([]string{"authority", "create"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errs, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q (stdout %q)", code, errs, tc.code, tc.want, out)
			}
			if after := entries(); !slices.Equal(after, before) {
				t.Errorf("the refused command changed the directory: %q, was %q", after, before)
			}
		})
	}
	if code, _, errs := keyctl(t, "authority", "list", "--dir", filepath.Dir(dir)); code != 2 || !strings.Contains(errs, "not a keyserver directory") {
		t.Errorf("authority list on a non-keyserver directory: exit %d, %s", code, errs)
	}
	if code, _, _ := keyctl(t, "authority", "list", "--dir", dir, "extra"); code != 2 {
		t.Errorf("authority list with an argument: exit %d, want 2", code)
	}
}
