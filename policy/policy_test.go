package policy_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keysystem/keysystem/policy"
)

// fullPolicy uses every kind of declaration. Line numbers matter: tests
// below refer to them.
const fullPolicy = `cgc:
  lifetime: 240h
  renew_after_expiry: 2h
defaults:
  lifetime: 100h
  key_types: [ecdsa-p256, ed25519]
limits:
  max_lifetime: 1000h
  max_names: 10
authorities:
  etcd: {}
  web:
    max_lifetime: 720h
groups:
  etcd:
    nodes: [etcd1.dc1.example.org]
    patterns: ["etcd*.dc1.example.org"]
  web:
    patterns: ["web*.dc1.example.org"]
  edge: {}
grants:
  etcd-peer:
    type: x509
    authority: etcd
    usage: both
    subject:
      common_name: "{{.Node}}"
      organization: [example]
      organizational_unit: [etcd]
    dns: ["{{.Node}}", "{{.Short}}.etcd.internal"]
    ips: ["{{.IPs}}"]
    uris: ["spiffe://example.org/etcd/{{.Short}}"]
    allow:
      dns: ["*.etcd.internal"]
      ips: ["10.0.0.0/8", "2001:db8::1"]
      uris: ["spiffe://example.org/etcd/*"]
    key_types: [ecdsa-p256]
    lifetime: 720h
    to:
      groups: [etcd]
      nodes: [etcd9.dc2.example.org]
      patterns: ["etcd*.dc2.example.org"]
      all: false
  web-client:
    type: x509
    authority: web
    usage: client
    to: {groups: [web, edge]}
  trust-bundle:
    type: static
    file: files/bundle.pem
    authorities: [etcd, web]
    to: {all: true}
  motd:
    type: static
    file: motd.txt
    to: {patterns: ["*.dc1.example.org"]}
  roots:
    type: static
    authorities: [web]
    to: {nodes: [etcd1.dc1.example.org]}
`

const fileName = "policy.yaml"

// writePolicy writes a policy and its static files into a fresh
// directory and returns the policy's path.
func writePolicy(t *testing.T, src string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, fileName)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var fullFiles = map[string]string{
	"files/bundle.pem": "-----BEGIN CERTIFICATE-----\nbundle\n-----END CERTIFICATE-----\n",
	"motd.txt":         "hello\n",
}

// readFiles serves static files from a map, as Load would from disk.
func readFiles(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		s, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("open %s: %w", name, os.ErrNotExist)
		}
		return []byte(s), nil
	}
}

func parse(src string) (*policy.Policy, error) {
	return policy.Parse(fileName, []byte(src), readFiles(fullFiles))
}

func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := parse(src)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return p
}

// problemsOf checks that err is a well-formed Errors: every problem has
// the file, and they are sorted by line.
func problemsOf(t *testing.T, err error) policy.Errors {
	t.Helper()
	if err == nil {
		t.Fatal("no error, want problems")
	}
	var errs policy.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v is a %T, not a policy.Errors", err, err)
	}
	if len(errs) == 0 {
		t.Fatal("empty policy.Errors")
	}
	for _, p := range errs {
		if p.File == "" {
			t.Errorf("problem %+v has no file", p)
		}
	}
	if !slices.IsSortedFunc(errs, func(a, b policy.Problem) int { return a.Line - b.Line }) {
		t.Errorf("problems not sorted by line:\n%v", err)
	}
	return errs
}

func TestLoadValid(t *testing.T) {
	path := writePolicy(t, fullPolicy, fullFiles)
	p, err := policy.Load(path)
	if err != nil {
		t.Fatalf("Load:\n%v", err)
	}
	if p.File() != path {
		t.Errorf("File() = %q, want %q", p.File(), path)
	}
	if got, want := p.GrantNames(), []string{"etcd-peer", "motd", "roots", "trust-bundle", "web-client"}; !slices.Equal(got, want) {
		t.Errorf("GrantNames() = %q, want %q", got, want)
	}
	if got, want := p.Groups(), []string{"edge", "etcd", "web"}; !slices.Equal(got, want) {
		t.Errorf("Groups() = %q, want %q", got, want)
	}
	if got, want := p.Authorities(), []string{"etcd", "web"}; !slices.Equal(got, want) {
		t.Errorf("Authorities() = %q, want %q", got, want)
	}
	for _, g := range []string{"edge", "etcd", "web"} {
		if !p.HasGroup(g) {
			t.Errorf("HasGroup(%q) = false", g)
		}
	}
	if p.HasGroup("ops") {
		t.Error(`HasGroup("ops") = true for an undeclared group`)
	}
	if p.Grant("nosuch") != nil {
		t.Error(`Grant("nosuch") != nil`)
	}
	if got, want := p.CGCLifetime(), 240*time.Hour; got != want {
		t.Errorf("CGCLifetime() = %v, want %v", got, want)
	}
	if got, want := p.RenewAfterExpiry(), 2*time.Hour; got != want {
		t.Errorf("RenewAfterExpiry() = %v, want %v", got, want)
	}
	if d := p.Digest(); !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+64 {
		t.Errorf("Digest() = %q, want sha256:<64 hex>", d)
	}

	type want struct {
		typ         string
		authority   string
		usage       policy.Usage
		keyTypes    []string
		lifetime    time.Duration
		content     string
		authorities []string
	}
	for name, w := range map[string]want{
		// Its own key types and lifetime.
		"etcd-peer": {policy.TypeX509, "etcd", policy.UsageBoth, []string{"ecdsa-p256"}, 720 * time.Hour, "", nil},
		// defaults.key_types and defaults.lifetime.
		"web-client":   {policy.TypeX509, "web", policy.UsageClient, []string{"ecdsa-p256", "ed25519"}, 100 * time.Hour, "", nil},
		"trust-bundle": {policy.TypeStatic, "", "", nil, 0, fullFiles["files/bundle.pem"], []string{"etcd", "web"}},
		"motd":         {policy.TypeStatic, "", "", nil, 0, "hello\n", nil},
		"roots":        {policy.TypeStatic, "", "", nil, 0, "", []string{"web"}},
	} {
		g := p.Grant(name)
		if g == nil {
			t.Errorf("Grant(%q) = nil", name)
			continue
		}
		if g.Name != name || g.Type != w.typ || g.Authority != w.authority || g.Usage != w.usage || g.Lifetime != w.lifetime {
			t.Errorf("grant %s = {Name %q Type %q Authority %q Usage %q Lifetime %v}, want {%q %q %q %q %v}",
				name, g.Name, g.Type, g.Authority, g.Usage, g.Lifetime, name, w.typ, w.authority, w.usage, w.lifetime)
		}
		if !slices.Equal(g.KeyTypes, w.keyTypes) {
			t.Errorf("grant %s KeyTypes = %q, want %q", name, g.KeyTypes, w.keyTypes)
		}
		if string(g.Content) != w.content {
			t.Errorf("grant %s Content = %q, want %q", name, g.Content, w.content)
		}
		if !slices.Equal(g.Authorities, w.authorities) {
			t.Errorf("grant %s Authorities = %q, want %q", name, g.Authorities, w.authorities)
		}
	}
}

func TestLoadAbsoluteStaticFile(t *testing.T) {
	abs := filepath.Join(t.TempDir(), "elsewhere.pem")
	if err := os.WriteFile(abs, []byte("far away"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("grants:\n  s:\n    type: static\n    file: %q\n    to: {all: true}\n", abs)
	p, err := policy.Load(writePolicy(t, src, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(p.Grant("s").Content); got != "far away" {
		t.Errorf("Content = %q, want %q", got, "far away")
	}
}

func TestLoadMissingPolicyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := policy.Load(path)
	errs := problemsOf(t, err)
	if len(errs) != 1 || errs[0].File != path || errs[0].Line != 0 || !strings.Contains(errs[0].Msg, "nope.yaml") {
		t.Errorf("Load of a missing file: %#v", errs)
	}
}

func TestDigest(t *testing.T) {
	path := writePolicy(t, fullPolicy, fullFiles)
	load := func() string {
		t.Helper()
		p, err := policy.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		return p.Digest()
	}
	d1 := load()
	if d2 := load(); d2 != d1 {
		t.Errorf("digest of the same files changed: %s then %s", d1, d2)
	}
	// Parse of the same bytes and files gives the same digest as Load.
	if p := mustParse(t, fullPolicy); p.Digest() != d1 {
		t.Errorf("Parse digest %s != Load digest %s", p.Digest(), d1)
	}

	// A static file's content changes, the policy file does not.
	bundle := filepath.Join(filepath.Dir(path), "files", "bundle.pem")
	if err := os.WriteFile(bundle, []byte("another bundle"), 0o644); err != nil {
		t.Fatal(err)
	}
	d3 := load()
	if d3 == d1 {
		t.Error("digest did not change when a static file's content did")
	}
	// Moving bytes between two static files changes it too.
	if err := os.WriteFile(bundle, []byte(fullFiles["files/bundle.pem"]+"h"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "motd.txt"), []byte("ello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d4 := load(); d4 == d1 || d4 == d3 {
		t.Error("digest did not change when a byte moved from one static file to another")
	}

	// The policy file itself changes, even only in a comment.
	if err := os.WriteFile(path, []byte(fullPolicy+"# a comment\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d5 := load(); d5 == d1 || d5 == d3 {
		t.Error("digest did not change with the policy file")
	}
}

func TestEmpty(t *testing.T) {
	p := policy.Empty()
	if n := len(p.GrantNames()) + len(p.Groups()) + len(p.Authorities()); n != 0 {
		t.Errorf("Empty() has %d names, want none", n)
	}
	if p.CGCLifetime() != policy.DefaultCGCLifetime || p.CGCLifetime() != 720*time.Hour {
		t.Errorf("CGCLifetime() = %v, want 720h", p.CGCLifetime())
	}
	if p.RenewAfterExpiry() != 0 {
		t.Errorf("RenewAfterExpiry() = %v, want 0", p.RenewAfterExpiry())
	}
	sum := sha256.Sum256(nil)
	if want := "sha256:" + hex.EncodeToString(sum[:]); p.Digest() != want {
		t.Errorf("Digest() = %q, want %q", p.Digest(), want)
	}
	if _, err := p.Decide("anything", policy.Facts{Node: "a.example.org"}); !errors.Is(err, policy.ErrUnknownGrant) {
		t.Errorf("Decide on Empty() = %v, want ErrUnknownGrant", err)
	}
	// An empty file is refused (an editor caught mid-write would take
	// every grant away); one that says it has no grants has the defaults.
	for _, src := range []string{"", "\n# nothing\n"} {
		if _, err := policy.Parse("policy.yaml", []byte(src), nil); err == nil || !strings.Contains(err.Error(), "policy.yaml: the policy file is empty") {
			t.Errorf("empty file %q: %v, want it refused as empty", src, err)
		}
	}
	q := mustParse(t, "grants: {}\n")
	if q.CGCLifetime() != p.CGCLifetime() || q.RenewAfterExpiry() != 0 || len(q.GrantNames()) != 0 {
		t.Errorf("grants: {}: CGCLifetime %v RenewAfterExpiry %v grants %q", q.CGCLifetime(), q.RenewAfterExpiry(), q.GrantNames())
	}
}

func TestDefaults(t *testing.T) {
	const grant = "grants:\n  g:\n    type: x509\n    authority: a\n    usage: client\n    to: {all: true}\nauthorities:\n  a: {}\n"
	for _, tc := range []struct {
		name     string
		src      string
		cgc      time.Duration
		renew    time.Duration
		lifetime time.Duration
		keyTypes []string
	}{
		{"all defaults", grant, 720 * time.Hour, 0, 168 * time.Hour, policy.DefaultKeyTypes},
		{"explicit cgc", "cgc:\n  lifetime: 24h\n  renew_after_expiry: 30m\n" + grant, 24 * time.Hour, 30 * time.Minute, 168 * time.Hour, policy.DefaultKeyTypes},
		{"cgc zero means default", "cgc:\n  lifetime: 0s\n  renew_after_expiry: 0s\n" + grant, 720 * time.Hour, 0, 168 * time.Hour, policy.DefaultKeyTypes},
		{"cgc bounds", "cgc:\n  lifetime: 8784h\n  renew_after_expiry: 720h\n" + grant, 8784 * time.Hour, 720 * time.Hour, 168 * time.Hour, policy.DefaultKeyTypes},
		{"default lifetime shrinks to limits.max_lifetime", "limits:\n  max_lifetime: 100h\n" + grant, 720 * time.Hour, 0, 100 * time.Hour, policy.DefaultKeyTypes},
		{"defaults", "defaults:\n  lifetime: 1h\n  key_types: [RSA-4096, ' ed25519', ed25519]\n" + grant, 720 * time.Hour, 0, time.Hour, []string{"rsa-4096", "ed25519"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustParse(t, tc.src)
			if p.CGCLifetime() != tc.cgc {
				t.Errorf("CGCLifetime() = %v, want %v", p.CGCLifetime(), tc.cgc)
			}
			if p.RenewAfterExpiry() != tc.renew {
				t.Errorf("RenewAfterExpiry() = %v, want %v", p.RenewAfterExpiry(), tc.renew)
			}
			g := p.Grant("g")
			if g.Lifetime != tc.lifetime {
				t.Errorf("grant Lifetime = %v, want %v", g.Lifetime, tc.lifetime)
			}
			if !slices.Equal(g.KeyTypes, tc.keyTypes) {
				t.Errorf("grant KeyTypes = %q, want %q", g.KeyTypes, tc.keyTypes)
			}
		})
	}
}

// marked returns the number of the line of src that holds "# <-", the
// mark tests put on the line a problem must be reported at.
func marked(t *testing.T, src string) int {
	t.Helper()
	line := 0
	for i, l := range strings.Split(src, "\n") {
		if strings.Contains(l, "# <-") {
			if line != 0 {
				t.Fatalf("two marked lines in\n%s", src)
			}
			line = i + 1
		}
	}
	if line == 0 {
		t.Fatalf("no marked line in\n%s", src)
	}
	return line
}

// pre declares an authority and a group; grants start at line 7.
const pre = `authorities:
  etcd: {}
groups:
  etcd:
    patterns: ["etcd*.example.org"]
grants:
`

// badCase is a policy with exactly one problem, on the line marked "# <-",
// whose message contains every string of want.
type badCase struct {
	name string
	src  string
	want []string
}

var badCases = []badCase{
	// Unknown keys.
	{"unknown top-level key", pre + "  g: {type: static, authorities: [etcd], to: {all: true}}\ncolour: red # <-\n", []string{`unknown key "colour"`}},
	{"unknown key in grant", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    colour: red # <-
    to: {all: true}
`, []string{`unknown key "colour"`}},
	{"unknown key in to", pre + `  g:
    type: static
    authorities: [etcd]
    to:
      all: true
      everyone: true # <-
`, []string{`unknown key "everyone"`}},
	{"unknown key in subject", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    subject:
      cn: x # <-
    to: {all: true}
`, []string{`unknown key "cn"`}},
	{"unknown key in group", pre[:len(pre)-len("grants:\n")] + "    members: [a] # <-\n", []string{`unknown key "members"`}},

	// Duplicates.
	{"duplicate grant", pre + `  g:
    type: static
    authorities: [etcd]
    to: {all: true}
  g: # <-
    type: static
    authorities: [etcd]
    to: {all: true}
`, []string{`"g" already defined at line 7`}},
	{"duplicate key in grant", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    usage: client # <-
    dns: ["{{.Node}}"]
    to: {all: true}
`, []string{`"usage" already defined at line 10`}},
	{"duplicate group", "groups:\n  a: {}\n  b: {}\n  a: {} # <-\n", []string{`"a" already defined at line 2`}},

	// Authorities.
	{"missing authority", pre + `  g:
    type: x509
    authority: nosuch # <-
    usage: server
    dns: ["{{.Node}}"]
    to: {all: true}
`, []string{`grant "g"`, `no authority "nosuch"`}},
	{"no authority", pre + `  g: # <-
    type: x509
    usage: server
    dns: ["{{.Node}}"]
    to: {all: true}
`, []string{`grant "g"`, "authority is required"}},
	{"static grant with missing authority", pre + `  g:
    type: static
    authorities:
      - etcd
      - nosuch # <-
    to: {all: true}
`, []string{`grant "g"`, `no authority "nosuch"`}},
	{"authority max_lifetime over limits", `limits:
  max_lifetime: 100h
authorities:
  a:
    max_lifetime: 200h # <-
`, []string{`authority "a"`, "200h", "100h"}},
	{"bad authority name", "authorities:\n  Etcd: {} # <-\n", []string{`"Etcd"`}},

	// Templates.
	{"template does not parse", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns:
      - "{{.Node}}"
      - "{{.Node" # <-
    to: {all: true}
`, []string{`grant "g"`, `"{{.Node"`, "unclosed action"}},
	{"template with unknown field", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns:
      - "{{.Node}}"
      - "{{.Foo}}.example.org" # <-
    to: {all: true}
`, []string{`grant "g"`, "unknown field .Foo"}},
	{"subject template with unknown field", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    subject:
      common_name: "{{.Node}}"
      organization:
        - "{{.Org}}" # <-
    to: {all: true}
`, []string{`grant "g"`, "unknown field .Org"}},
	{"template with unknown function", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    subject:
      common_name: "{{title .Node}}" # <-
    to: {all: true}
`, []string{`grant "g"`, `function "title" not defined`}},
	{"template misusing a function", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{replace .Node}}"] # <-
    to: {all: true}
`, []string{`grant "g"`, `{{replace .Node}}`, "replace"}},
	{"common name of two words", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    subject:
      common_name: "{{.Short}} {{.Domain}}" # <-
    to: {all: true}
`, []string{`grant "g"`, "common name renders to 2 words"}},
	{"dns template renders no DNS name", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}-"] # <-
    to: {all: true}
`, []string{`grant "g"`, `"node1.example.org-"`, "no DNS name"}},
	{"ips template renders no address", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    ips: ["{{.Short}}"] # <-
    to: {all: true}
`, []string{`grant "g"`, `"node1"`, "no IP address"}},
	{"uris template renders no URI", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    uris: ["{{.Short}}"] # <-
    to: {all: true}
`, []string{`grant "g"`, `"node1"`, "no absolute URI"}},
	{"rendered names over max_names", "limits:\n  max_names: 2\n" + pre + `  g: # <-
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}", "{{.Short}}.internal"]
    ips: ["{{.IPs}}"]
    to: {all: true}
`, []string{`grant "g"`, "4 names", "max_names 2"}},

	// Patterns.
	{"group pattern with empty label", "groups:\n  web:\n    patterns:\n      - web*.example.org\n      - web*..example.org # <-\n", []string{`"web*..example.org"`, "empty label"}},
	{"group pattern with slash", "groups:\n  web:\n    patterns: [web/1] # <-\n", []string{`"web/1"`}},
	{"group pattern with bad glob", "groups:\n  web:\n    patterns: ['web[.example.org'] # <-\n", []string{`"web[.example.org"`, "bad glob"}},
	{"group node invalid", "groups:\n  web:\n    nodes: [Web1.example.org] # <-\n", []string{`"Web1.example.org"`}},
	{"to pattern invalid", pre + `  g:
    type: static
    authorities: [etcd]
    to:
      patterns: ["*.example.org", ""] # <-
`, []string{`pattern ""`, "empty"}},
	{"to node invalid", pre + `  g:
    type: static
    authorities: [etcd]
    to:
      nodes:
        - "node 1" # <-
`, []string{`"node 1"`}},
	{"allow.dns in upper case", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    allow:
      dns:
        - "*.Etcd.internal" # <-
    to: {all: true}
`, []string{`grant "g"`, `"*.Etcd.internal"`, "lower case"}},
	{"allow.dns with empty label", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    allow:
      dns: ["*.etcd..internal"] # <-
    to: {all: true}
`, []string{`grant "g"`, `allow.dns pattern "*.etcd..internal"`, "empty label"}},
	{"allow.ips prefix too long", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    allow:
      ips:
        - 10.0.0.0/8
        - 10.0.0.0/33 # <-
    to: {all: true}
`, []string{`grant "g"`, `allow.ips "10.0.0.0/33"`}},
	{"allow.ips not an address", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    allow:
      ips: [ten.0.0.1] # <-
    to: {all: true}
`, []string{`grant "g"`, `allow.ips "ten.0.0.1"`}},
	{"allow.uris without scheme", pre + `  g:
    type: x509
    authority: etcd
    usage: server
    dns: ["{{.Node}}"]
    allow:
      uris: ["example.org/*"] # <-
    to: {all: true}
`, []string{`grant "g"`, `allow.uris pattern "example.org/*"`, "not a URI pattern"}},

	// Lifetimes.
	{"lifetime over the authority's max_lifetime", `authorities:
  web:
    max_lifetime: 24h
grants:
  g:
    type: x509
    authority: web
    usage: client
    lifetime: 48h # <-
    to: {all: true}
`, []string{`grant "g"`, "lifetime 48h", "24h", `authority "web"`}},
	{"lifetime over limits.max_lifetime", `limits:
  max_lifetime: 100h
authorities:
  web: {}
grants:
  g:
    type: x509
    authority: web
    usage: client
    lifetime: 200h # <-
    to: {all: true}
`, []string{`grant "g"`, "lifetime 200h", "100h"}},
	{"default lifetime over the authority's max_lifetime", `authorities:
  web:
    max_lifetime: 24h
grants:
  g: # <-
    type: x509
    authority: web
    usage: client
    to: {all: true}
`, []string{`grant "g"`, "lifetime 168h", "24h"}},
	{"lifetime too short", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    lifetime: 1m # <-
    to: {all: true}
`, []string{`grant "g"`, "lifetime 1m", "5m"}},
	{"cgc lifetime too short", "cgc:\n  lifetime: 30m # <-\n", []string{"cgc lifetime 30m", "1h", "8784h"}},
	{"cgc lifetime too long", "cgc:\n  lifetime: 9000h # <-\n", []string{"cgc lifetime 9000h"}},
	{"renew_after_expiry too long", "cgc:\n  renew_after_expiry: 721h # <-\n", []string{"renew_after_expiry 721h", "720h"}},
	{"renew_after_expiry negative", "cgc:\n  renew_after_expiry: -1h # <-\n", []string{"renew_after_expiry -1h"}},
	{"renew_after_expiry over the cgc lifetime", "cgc:\n  lifetime: 2h\n  renew_after_expiry: 3h # <-\n", []string{"renew_after_expiry 3h", "2h"}},
	{"limits.max_lifetime too long", "limits:\n  max_lifetime: 100000h # <-\n", []string{"max_lifetime 100000h"}},
	{"limits.max_names too many", "limits:\n  max_names: 1001 # <-\n", []string{"max_names 1001", "1000"}},
	{"limits.max_names negative", "limits:\n  max_names: -1 # <-\n", []string{"max_names -1"}},
	{"defaults.lifetime over limits", "limits:\n  max_lifetime: 10h\ndefaults:\n  lifetime: 11h # <-\n", []string{"default lifetime 11h", "10h"}},

	// Types, usages, key types.
	{"unknown usage", pre + `  g:
    type: x509
    authority: etcd
    usage: peer # <-
    dns: ["{{.Node}}"]
    to: {all: true}
`, []string{`grant "g"`, `unknown usage "peer"`}},
	{"no usage", pre + `  g: # <-
    type: x509
    authority: etcd
    dns: ["{{.Node}}"]
    to: {all: true}
`, []string{`grant "g"`, "usage is required"}},
	{"unknown type", pre + `  g:
    type: ssh # <-
    to: {all: true}
`, []string{`grant "g"`, `unknown type "ssh"`}},
	{"no type", pre + `  g: # <-
    to: {all: true}
`, []string{`grant "g"`, "type is required"}},
	{"empty grant", pre + "  g: # <-\n", []string{`grant "g" is empty`}},
	{"unknown key type", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    key_types:
      - ecdsa-p256
      - dsa-1024 # <-
    to: {all: true}
`, []string{`unknown key type "dsa-1024"`}},
	{"no key types", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    key_types: [] # <-
    to: {all: true}
`, []string{"key_types is empty"}},
	{"unknown default key type", "defaults:\n  key_types: [ecdsa-p521] # <-\n", []string{`unknown key type "ecdsa-p521"`}},

	// Static and x509 fields mixed.
	{"static grant with x509 fields", pre + `  g: # <-
    type: static
    authorities: [etcd]
    usage: server
    to: {all: true}
`, []string{`grant "g"`, "belong to x509 grants"}},
	{"static grant with lifetime", pre + `  g: # <-
    type: static
    authorities: [etcd]
    lifetime: 24h
    to: {all: true}
`, []string{`grant "g"`, "belong to x509 grants"}},
	{"x509 grant with file", pre + `  g: # <-
    type: x509
    authority: etcd
    usage: client
    file: motd.txt
    to: {all: true}
`, []string{`grant "g"`, "belong to static grants"}},
	{"static grant with nothing to serve", pre + `  g: # <-
    type: static
    to: {all: true}
`, []string{`grant "g"`, "needs a file, authorities"}},
	{"static file missing", pre + `  g:
    type: static
    file: files/missing.pem # <-
    to: {all: true}
`, []string{`grant "g"`, "files/missing.pem"}},

	// Audiences.
	{"given to no one", pre + `  g: # <-
    type: static
    authorities: [etcd]
`, []string{`grant "g" is given to no one`}},
	{"to that names no one", pre + `  g:
    type: static
    authorities: [etcd]
    to: {all: false} # <-
`, []string{`grant "g" is given to no one`}},
	{"to.groups names a missing group", pre + `  g:
    type: static
    authorities: [etcd]
    to:
      groups:
        - etcd
        - ghost # <-
`, []string{`grant "g"`, `no group "ghost"`}},
	{"server grant with no names", pre + `  g: # <-
    type: x509
    authority: etcd
    usage: server
    to: {all: true}
`, []string{`grant "g"`, "needs names"}},
	{"both grant with no names", pre + `  g: # <-
    type: x509
    authority: etcd
    usage: both
    subject: {common_name: "{{.Node}}"}
    to: {all: true}
`, []string{`grant "g"`, "needs names"}},

	// Names.
	{"bad grant name", pre + "  Web: # <-\n    type: static\n    authorities: [etcd]\n    to: {all: true}\n", []string{`grant name "Web"`}},
	{"bad group name", "groups:\n  -web: {} # <-\n", []string{`group name "-web"`}},

	// Values of the wrong type.
	{"string for a duration", pre + `  g:
    type: x509
    authority: etcd
    usage: client
    lifetime: abc # <-
    to: {all: true}
`, []string{`"abc" is not a duration such as 720h or 30m`}},
	{"number for a duration", "cgc:\n  lifetime: 720 # <-\n", []string{`"720" is not a duration such as 720h or 30m`}},
	{"string for a number", "limits:\n  max_names: many # <-\n", []string{`"many" is not a whole number`}},
	{"string for a bool", pre + "  g:\n    type: static\n    authorities: [etcd]\n    to: {all: maybe} # <-\n", []string{`"maybe" is not true or false`}},
	{"string for a list", pre + "  g:\n    type: static\n    authorities: etcd # <-\n    to: {all: true}\n", []string{`"etcd" is not a list`}},
	{"list for a mapping", pre + "  g:\n    type: static\n    authorities: [etcd]\n    to: [etcd] # <-\n", []string{"found a list, want a mapping"}},
	{"mapping for a list", pre + "  g:\n    type: x509\n    dns: {a: b} # <-\n", []string{"found a mapping (key: value), want a list"}},
	{"string for grants", "grants: none # <-\n", []string{`"none" is not a mapping`}},

	// YAML.
	{"YAML syntax", "cgc:\n  lifetime: 1h\n  renew_after_expiry: [1h # <-\n", []string{"did not find expected"}},
	{"YAML unclosed flow mapping", "cgc:\n  lifetime: 1h\ngrants:\n  g: {type: x509 # <-\n", []string{"did not find expected ',' or '}'"}},
	{"YAML undefined tag handle", "cgc:\n  lifetime: 1h\n  x: !foo!bar 1 # <-\n", []string{"undefined tag handle"}},
	{"YAML key out of place", "cgc:\n  lifetime: 1h\n lifetime: 2h # <-\n", []string{"did not find expected key"}},
	{"second document", "cgc: {lifetime: 1h}\n--- # <-\ngrants: {}\n", []string{"second YAML document"}},
}

func TestParseProblems(t *testing.T) {
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			line := marked(t, tc.src)
			_, err := parse(tc.src)
			errs := problemsOf(t, err)
			if len(errs) != 1 {
				t.Fatalf("%d problems, want 1:\n%v", len(errs), err)
			}
			p := errs[0]
			if p.File != fileName {
				t.Errorf("File = %q, want %q", p.File, fileName)
			}
			if p.Line != line {
				t.Errorf("line %d, want %d: %v", p.Line, line, p)
			}
			for _, w := range tc.want {
				if !strings.Contains(p.Msg, w) {
					t.Errorf("message %q does not contain %q", p.Msg, w)
				}
			}
			if got, want := p.String(), fmt.Sprintf("%s:%d: %s", fileName, line, p.Msg); got != want || err.Error() != want {
				t.Errorf("String() = %q, Error() = %q, want %q", got, err.Error(), want)
			}
		})
	}
}

// Every built-in authority is refused in a grant and in authorities:.
func TestBuiltInAuthorities(t *testing.T) {
	for _, name := range []string{"keygranting", "server", "admin"} {
		t.Run(name+" in a grant", func(t *testing.T) {
			src := pre + fmt.Sprintf(`  g:
    type: x509
    authority: %s # <-
    usage: client
    to: {all: true}
`, name)
			errs := problemsOf(t, func() error { _, err := parse(src); return err }())
			if len(errs) != 1 || errs[0].Line != marked(t, src) ||
				!strings.Contains(errs[0].Msg, fmt.Sprintf("authority %q is the keyserver's own", name)) {
				t.Errorf("got %v", errs)
			}
		})
		t.Run(name+" declared", func(t *testing.T) {
			src := fmt.Sprintf("authorities:\n  etcd: {}\n  %s: {} # <-\n", name)
			errs := problemsOf(t, func() error { _, err := parse(src); return err }())
			if len(errs) != 1 || errs[0].Line != 3 || !strings.Contains(errs[0].Msg, fmt.Sprintf("authority %q is the keyserver's own", name)) {
				t.Errorf("got %v", errs)
			}
		})
		t.Run(name+" declared and used", func(t *testing.T) {
			src := fmt.Sprintf("authorities:\n  %[1]s: {}\ngrants:\n  g:\n    type: x509\n    authority: %[1]s\n    usage: client\n    to: {all: true}\n", name)
			errs := problemsOf(t, func() error { _, err := parse(src); return err }())
			if len(errs) != 2 || errs[0].Line != 2 || errs[1].Line != 6 {
				t.Errorf("want problems at lines 2 and 6, got\n%v", errs)
			}
		})
	}
}

func TestStaticFileTooLarge(t *testing.T) {
	src := pre + `  big:
    type: static
    file: big.bin # <-
    to: {all: true}
  fits:
    type: static
    file: fits.bin
    to: {all: true}
`
	path := writePolicy(t, src, map[string]string{
		"big.bin":  strings.Repeat("x", policy.MaxStaticBytes+1),
		"fits.bin": strings.Repeat("x", policy.MaxStaticBytes),
	})
	_, err := policy.Load(path)
	errs := problemsOf(t, err)
	if len(errs) != 1 {
		t.Fatalf("want 1 problem, got\n%v", err)
	}
	if errs[0].File != path || errs[0].Line != marked(t, src) {
		t.Errorf("problem at %s:%d, want %s:%d", errs[0].File, errs[0].Line, path, marked(t, src))
	}
	for _, w := range []string{`grant "big"`, "big.bin", "over the limit", fmt.Sprint(policy.MaxStaticBytes)} {
		if !strings.Contains(errs[0].Msg, w) {
			t.Errorf("message %q does not contain %q", errs[0].Msg, w)
		}
	}

	// Exactly the limit loads.
	src = strings.Replace(src, "big.bin", "fits.bin", 1)
	p, err := policy.Load(writePolicy(t, src, map[string]string{"fits.bin": strings.Repeat("x", policy.MaxStaticBytes)}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.Grant("big").Content); n != policy.MaxStaticBytes {
		t.Errorf("content of %d bytes, want %d", n, policy.MaxStaticBytes)
	}
}

func TestStaticFileNotRegular(t *testing.T) {
	src := pre + "  d:\n    type: static\n    file: adir # <-\n    to: {all: true}\n"
	path := writePolicy(t, src, map[string]string{"adir/x": "x"})
	errs := problemsOf(t, func() error { _, err := policy.Load(path); return err }())
	if len(errs) != 1 || errs[0].Line != marked(t, src) || !strings.Contains(errs[0].Msg, "not a regular file") {
		t.Errorf("got %v", errs)
	}
}

func TestStaticFileMissingOnDisk(t *testing.T) {
	src := pre + "  s:\n    type: static\n    file: files/missing.pem # <-\n    to: {all: true}\n"
	path := writePolicy(t, src, nil)
	errs := problemsOf(t, func() error { _, err := policy.Load(path); return err }())
	if len(errs) != 1 || errs[0].Line != marked(t, src) || !strings.Contains(errs[0].Msg, "missing.pem") {
		t.Errorf("got %v", errs)
	}
	if !strings.HasPrefix(errs[0].String(), path+":") {
		t.Errorf("problem %q does not start with the policy's path", errs[0])
	}
}

// Several problems in different places are all reported, in file order,
// although grants are checked in name order.
func TestParseManyProblems(t *testing.T) {
	const src = `cgc:
  lifetime: 10m
authorities:
  server: {}
groups:
  web:
    patterns: ["web..x"]
grants:
  zeta:
    type: static
    file: nope.pem
    to: {all: true}
  alpha:
    type: x509
    authority: nosuch
    usage: server
    dns: ["{{.Node}}"]
    to: {groups: [ghost]}
`
	_, err := parse(src)
	errs := problemsOf(t, err)
	want := []struct {
		line int
		msg  string
	}{
		{2, "cgc lifetime 10m"},
		{4, `authority "server"`},
		{7, `pattern "web..x"`},
		{11, "nope.pem"},
		{15, `no authority "nosuch"`},
		{18, `no group "ghost"`},
	}
	if len(errs) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		if errs[i].Line != w.line || !strings.Contains(errs[i].Msg, w.msg) {
			t.Errorf("problem %d = %v, want line %d with %q", i, errs[i], w.line, w.msg)
		}
	}
	lines := errs.Lines()
	if len(lines) != len(want) || lines[0] != "policy.yaml:2: "+errs[0].Msg {
		t.Errorf("Lines() = %q", lines)
	}
	if got := err.Error(); got != strings.Join(lines, "\n") {
		t.Errorf("Error() = %q, want the lines joined", got)
	}
}

// YAML type errors are all reported together, each at its line.
func TestParseManyTypeErrors(t *testing.T) {
	const src = `cgc:
  lifetime: soon
limits:
  max_names: lots
grants:
  g:
    type: static
    colour: red
    to: {all: yes please}
`
	errs := problemsOf(t, func() error { _, err := parse(src); return err }())
	want := []struct {
		line int
		msg  string
	}{
		{2, `"soon" is not a duration such as 720h or 30m`},
		{4, `"lots" is not a whole number`},
		{8, `unknown key "colour"`},
		{9, `"yes please" is not true or false`},
	}
	if len(errs) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(errs), len(want), errs)
	}
	for i, w := range want {
		if errs[i].Line != w.line || errs[i].Msg != w.msg {
			t.Errorf("problem %d = %v, want line %d: %s", i, errs[i], w.line, w.msg)
		}
	}
}

func TestProblems(t *testing.T) {
	e := policy.Errors{{File: "a.yaml", Line: 3, Msg: "x"}, {File: "a.yaml", Msg: "y"}}
	if got := policy.Problems("b.yaml", fmt.Errorf("wrapped: %w", e)); !slices.Equal(got, e) {
		t.Errorf("Problems of a wrapped Errors = %v", got)
	}
	got := policy.Problems("b.yaml", errors.New("boom"))
	if len(got) != 1 || got[0] != (policy.Problem{File: "b.yaml", Msg: "boom"}) {
		t.Errorf("Problems of a plain error = %#v", got)
	}
	if s := e.Error(); s != "a.yaml:3: x\na.yaml: y" {
		t.Errorf("Error() = %q", s)
	}
}

func TestCheckAuthorities(t *testing.T) {
	const src = `authorities:
  etcd: {}
  web: {}
  short: {}
grants:
  long:
    type: x509
    authority: web
    usage: client
    lifetime: 720h
    to: {all: true}
  defaulted:
    type: x509
    authority: short
    usage: client
    to: {all: true}
  fine:
    type: x509
    authority: short
    usage: client
    lifetime: 24h
    to: {all: true}
  on-etcd:
    type: x509
    authority: etcd
    usage: client
    lifetime: 2000h
    to: {all: true}
  bundle:
    type: static
    authorities: [short]
    to: {all: true}
`
	p := mustParse(t, src)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var asked []string
	span := func(nb, na time.Time) *x509.Certificate { return &x509.Certificate{NotBefore: nb, NotAfter: na} }
	load := func(name string) (*x509.Certificate, error) {
		asked = append(asked, name)
		switch name {
		case "etcd":
			return nil, errors.New("open /authorities/etcd/root.crt: no such file or directory")
		case "web":
			return span(t0, t0.Add(100*time.Hour)), nil
		case "short":
			return span(t0, t0.Add(100*time.Hour)), nil
		}
		t.Errorf("load(%q) of an authority the policy does not name", name)
		return nil, errors.New("unknown")
	}
	errs := problemsOf(t, p.CheckAuthorities(t0, load))
	if !slices.Equal(asked, []string{"etcd", "short", "web"}) {
		t.Errorf("loaded %q, want every authority once", asked)
	}
	want := []struct {
		line int
		msg  []string
	}{
		{2, []string{`authority "etcd"`, "no such file or directory"}},
		{10, []string{`grant "long"`, "lifetime 720h", `authority "web"`, "100h"}},
		{12, []string{`grant "defaulted"`, "lifetime 168h", `authority "short"`}},
	}
	if len(errs) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(errs), len(want), errs)
	}
	for i, w := range want {
		if errs[i].File != fileName || errs[i].Line != w.line {
			t.Errorf("problem %d at %s:%d, want %s:%d (%s)", i, errs[i].File, errs[i].Line, fileName, w.line, errs[i].Msg)
		}
		for _, m := range w.msg {
			if !strings.Contains(errs[i].Msg, m) {
				t.Errorf("problem %d %q does not contain %q", i, errs[i].Msg, m)
			}
		}
	}

	// Authorities that load and live long enough: no problem.
	long := func(string) (*x509.Certificate, error) { return span(t0, t0.Add(5*365*24*time.Hour)), nil }
	if err := p.CheckAuthorities(t0, long); err != nil {
		t.Errorf("CheckAuthorities with long-lived authorities: %v", err)
	}
	// A grant exactly as long as its issuer is fine.
	err := p.CheckAuthorities(t0, func(string) (*x509.Certificate, error) { return span(t0, t0.Add(2000*time.Hour)), nil })
	if err != nil {
		t.Errorf("CheckAuthorities with issuers exactly as long as the longest grant: %v", err)
	}
	// An authority that has expired can sign nothing: every one is refused.
	errs = problemsOf(t, p.CheckAuthorities(t0.Add(5*365*24*time.Hour), long))
	if len(errs) != 3 || !strings.Contains(errs[0].Msg, "expired on") {
		t.Errorf("CheckAuthorities after every authority expired: %v, want 3 problems (one per authority) saying expired", errs)
	}
	if err := policy.Empty().CheckAuthorities(t0, load); err != nil {
		t.Errorf("Empty().CheckAuthorities: %v", err)
	}
}

// Problems found by Load carry the path Load was given, and Parse the
// name it was given.
func TestProblemFile(t *testing.T) {
	src := "cgc:\n  lifetime: 1m\n"
	path := writePolicy(t, src, nil)
	_, err := policy.Load(path)
	errs := problemsOf(t, err)
	if errs[0].File != path {
		t.Errorf("File = %q, want %q", errs[0].File, path)
	}
	_, err = policy.Parse("other.yaml", []byte(src), readFiles(nil))
	if errs := problemsOf(t, err); errs[0].File != "other.yaml" {
		t.Errorf("File = %q, want other.yaml", errs[0].File)
	}
	if !bytes.HasPrefix([]byte(err.Error()), []byte("other.yaml:2: ")) {
		t.Errorf("Error() = %q", err)
	}
}
