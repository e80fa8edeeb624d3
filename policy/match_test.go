package policy

import (
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"text/template"
	"time"
)

func TestMatchName(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*.etcd.internal", "a.etcd.internal", true},
		{"*.etcd.internal", "a-b_c.etcd.internal", true},
		{"*.etcd.internal", "a.b.etcd.internal", false}, // * never crosses a dot
		{"*.etcd.internal", "etcd.internal", false},     // nor matches no label
		{"*.etcd.internal", "a.etcd.internal.evil", false},
		{"*.etcd.internal", "a.etcd.internalx", false},
		{"*.etcd.internal", "a.xetcd.internal", false},
		{"etcd*.dc1.example.org", "etcd1.dc1.example.org", true},
		{"etcd*.dc1.example.org", "etcd.dc1.example.org", true},
		{"etcd*.dc1.example.org", "etcd1.x.dc1.example.org", false},
		{"etcd*.dc1.example.org", "xetcd1.dc1.example.org", false},
		{"etcd*.dc1.example.org", "etcd1.dc1.example.org.evil.com", false},
		{"etcd?.x", "etcd1.x", true},
		{"etcd?.x", "etcd12.x", false},
		{"etcd?.x", "etcd.x", false},
		{"etcd[0-9].x", "etcd7.x", true},
		{"etcd[0-9].x", "etcda.x", false},
		{"etcd[^0-9].x", "etcda.x", true},
		{"*", "solo", true},
		{"*", "a.b", false},
		{"*.*.x", "a.b.x", true},
		{"*.*.x", "a.x", false},
		{"a.b", "a.b", true},
		{"a.b", "A.b", false}, // names are lower case; so are patterns
		{"a.b", "a.b.", false},
		{"[.x", "[.x", false}, // a broken pattern matches nothing
	} {
		if got := matchName(tc.pattern, tc.name); got != tc.want {
			t.Errorf("matchName(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestMatchDNS(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*.x.internal", "a.x.internal", true},
		{"*.x.internal", "*.x.internal", true}, // every name under x.internal: what * allows
		{"?.x.internal", "a.x.internal", true},
		{"?.x.internal", "*.x.internal", false}, // more than one-letter names
		{"[*a].x.internal", "*.x.internal", false},
		{"a*.x.internal", "*.x.internal", false},
		{"*.x.internal", "*.y.x.internal", false},
		{"*.*.internal", "*.x.internal", true},
	} {
		if got := matchDNS(tc.pattern, tc.name); got != tc.want {
			t.Errorf("matchDNS(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestCheckDNSName(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"a.example.org", true},
		{"*.example.org", true},
		{"a_b.example.org", true},
		{"xn--bcher-kva.example", true},
		{"1.2.3.4", true},
		{"a-b.c", true},
		{long + ".org", true},
		{strings.Repeat(long+".", 3) + strings.Repeat("a", 61), true},  // 253
		{strings.Repeat(long+".", 3) + strings.Repeat("a", 62), false}, // 254
		{long + "a.org", false},
		{"", false},
		{"*", false},
		{"a.*.org", false},
		{"*.*.org", false},
		{"a*.org", false},
		{"a..org", false},
		{".a.org", false},
		{"a.org.", false},
		{"-a.org", false},
		{"a-.org", false},
		{"A.org", false},
		{"a b.org", false},
		{"ä.org", false},
		{"a.org:443", false},
		{"a/b.org", false},
	} {
		err := checkDNSName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("checkDNSName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestCheckPatterns(t *testing.T) {
	for _, tc := range []struct {
		pat     string
		ok      bool
		wantMsg string
	}{
		{"etcd*.dc1.example.org", true, ""},
		{"*", true, ""},
		{"[a-c]?.x", true, ""},
		{"Web*.x", false, "lower case"},
		{"", false, "empty"},
		{"a..b", false, "empty label"},
		{".a", false, "empty label"},
		{"a.", false, "empty label"},
		{"a/b", false, "'/'"},
		{`a\.b`, false, `'\'`},
		{"a b", false, "spaces"},
		{"[.x", false, "bad glob"},
	} {
		// Node patterns and allow.dns patterns follow this one rule.
		err := checkNamePattern(tc.pat)
		if (err == nil) != tc.ok {
			t.Errorf("checkNamePattern(%q) = %v, want ok %v", tc.pat, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("checkNamePattern(%q) = %q, want it to say %q", tc.pat, err, tc.wantMsg)
		}
	}
	for _, tc := range []struct {
		pat string
		ok  bool
	}{
		{"spiffe://example.org/etcd/*", true},
		{"urn:example:*", true},
		{"https://example.org/[a-z]", true},
		{"example.org/*", false},
		{"spiffe://example.org/[", false},
	} {
		if err := checkURIPattern(tc.pat); (err == nil) != tc.ok {
			t.Errorf("checkURIPattern(%q) = %v, want ok %v", tc.pat, err, tc.ok)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" for an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"10.1.2.3", "10.1.2.3/32"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::1/32", "2001:db8::/32"},
		{"::ffff:10.1.2.3", "10.1.2.3/32"},
		{"10.0.0.0/33", ""},
		{"10.0.0.0/", ""},
		{"ten", ""},
		{"", ""},
		{"10.0.0.0/8/8", ""},
	} {
		p, err := parsePrefix(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("parsePrefix(%q) = %v, want an error", tc.in, p)
		case tc.want != "" && (err != nil || p != netip.MustParsePrefix(tc.want)):
			t.Errorf("parsePrefix(%q) = %v, %v, want %s", tc.in, p, err, tc.want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"0", true},
		{"etcd-peer", true},
		{"a.b_c-d", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"A", false},
		{"-a", false},
		{"a-", false},
		{".a", false},
		{"a_", false},
		{"a/b", false},
		{"a b", false},
		{"é", false},
		{"aé", false},
	} {
		if err := ValidName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		720 * time.Hour:                   "720h",
		30 * time.Minute:                  "30m",
		90 * time.Second:                  "1m30s",
		time.Hour + 30*time.Minute:        "1h30m",
		time.Hour + time.Second:           "1h0m1s",
		0:                                 "0s",
		-time.Hour:                        "-1h",
		5 * time.Minute:                   "5m",
		10*time.Hour + 5*time.Millisecond: "10h0m0.005s",
	} {
		if got := dur(d); got != want {
			t.Errorf("dur(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestTemplateMessage(t *testing.T) {
	const name = "grants/g/dns/0"
	for _, tc := range []struct {
		src  string
		want string
	}{
		{"{{.Node", "unclosed action"},
		{"{{foo .Node}}", `function "foo" not defined`},
		{"{{.Foo}}", "unknown field .Foo (known: " + knownFields + ")"},
		{"{{replace .Node}}", "wrong number of args for replace: want 3 got 1"},
		{`{{.Node ": " }}`, "Node has arguments but cannot be invoked as function"},
		{"{{template \"x\"}}", `template "x" not defined`},
	} {
		tm, err := template.New(name).Funcs(funcs).Parse(tc.src)
		if err == nil {
			err = tm.Execute(new(strings.Builder), templateData{Node: "n.example.org"})
		}
		if err == nil {
			t.Errorf("%s: no error", tc.src)
			continue
		}
		if got := templateMessage(name, err); got != tc.want {
			t.Errorf("templateMessage(%s) = %q, want %q (from %q)", tc.src, got, tc.want, err)
		}
	}
	// Messages of another shape pass through whole.
	if got := templateMessage(name, errors.New("boom: bang")); got != "boom: bang" {
		t.Errorf("templateMessage(plain) = %q", got)
	}
	if got := templateMessage(name, errors.New("can't evaluate field ")); got != "can't evaluate field " {
		t.Errorf("templateMessage(truncated) = %q", got)
	}
}

func TestSampleFacts(t *testing.T) {
	g := &Grant{to: audience{groups: []string{"b", "a"}}}
	f := sampleFacts(g)
	if f.Node == "" || len(f.IPs) == 0 || len(f.Groups) != 1 || f.Groups[0] != "b" {
		t.Errorf("sampleFacts = %+v, want a node in the grant's first group, with addresses", f)
	}
	if g.to.firstGroup([]string{"a", "b"}) != "b" {
		t.Error("firstGroup does not follow the grant's order")
	}
	if g.to.firstGroup([]string{"c"}) != "" {
		t.Error("firstGroup of a node in none of the grant's groups is not empty")
	}
}

func TestPlainURI(t *testing.T) {
	for _, tc := range []struct {
		uri string
		ok  bool
	}{
		{"spiffe://example.org/etcd/a", true},
		{"spiffe://example.org/etcd/a.b/c..d", true},
		{"urn:example:a", true},
		{"https://example.org:8443/x", true},
		{"spiffe://example.org/etcd/a%2Fb", false},
		{"spiffe://example.org/etcd/%61", false},
		{"spiffe://example.org/etcd/..", false},
		{"spiffe://example.org/etcd/../x", false},
		{"spiffe://example.org/./etcd", false},
		{"spiffe://example.org/etcd/a?b", false},
		{"spiffe://example.org/etcd/a?", false},
		{"spiffe://example.org/etcd/a#b", false},
		{"spiffe://u:p@example.org/etcd/a", false},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := plainURI(u); got != tc.ok {
			t.Errorf("plainURI(%s) = %v, want %v", tc.uri, got, tc.ok)
		}
	}
}
