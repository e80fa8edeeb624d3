package policy_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/policy"
)

func selfSignedPEM(t *testing.T) string {
	t.Helper()
	a, err := authority.Generate(authority.Config{Name: "acme test"})
	if err != nil {
		t.Fatal(err)
	}
	return string(authority.EncodePEM(a.Root()))
}

const acmeGroups = `groups:
  frontends:
    nodes: [cp1.example, cp2.example]
`

func acmeFiles(t *testing.T) map[string]string {
	files := maps.Clone(fullFiles)
	files["pebble.pem"] = selfSignedPEM(t)
	files["eab.key"] = "c2VjcmV0LWhtYWMta2V5\n"
	files["rfc2136.env"] = "# TSIG\nRFC2136_TSIG_SECRET=c2VjcmV0\n\nRFC2136_TSIG_KEY=acme\n"
	return files
}

func TestACME(t *testing.T) {
	src := acmeGroups + `acme:
  accounts:
    le:
      directory: letsencrypt
      staging_directory: letsencrypt-staging
      email: hostmaster@example.org
    pebble:
      directory: https://127.0.0.1:14000/dir
      ca_file: pebble.pem
      eab: {kid: kid-1, hmac_file: eab.key}
      dns:
        provider: rfc2136
        env_file: rfc2136.env
        env: {RFC2136_NAMESERVER: "127.0.0.1:5353", RFC2136_TSIG_KEY: override}
  certificates:
    icinga:
      account: le
      sni: [Icinga.Example.org, icinga2.example.org]
      to: {nodes: [mon1.example]}
    wikibase:
      account: pebble
      cn: wikiba.se
      sni: ['*.wikiba.se', wikiba.se]
      challenge: dns-01
      key_types: [rsa-3072]
      to: {groups: [frontends]}
`
	p, err := policy.Parse(fileName, []byte(src), readFiles(acmeFiles(t)))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	if got := p.ACMEAccounts(); !slices.Equal(got, []string{"le", "pebble"}) {
		t.Errorf("ACMEAccounts() = %q", got)
	}
	le := p.ACMEAccount("le")
	if le.Directory != policy.LetsEncrypt || le.StagingDirectory != policy.LetsEncryptStaging || le.Email != "hostmaster@example.org" || le.Roots != nil || le.DNS != nil || le.EAB != nil {
		t.Errorf("account le = %+v", le)
	}
	pb := p.ACMEAccount("pebble")
	if pb.Directory != "https://127.0.0.1:14000/dir" || len(pb.Roots) != 1 || !strings.Contains(pb.Roots[0].Subject.CommonName, "acme test") {
		t.Errorf("account pebble = %+v", pb)
	}
	if pb.EAB == nil || pb.EAB.KeyID != "kid-1" || string(pb.EAB.HMAC) != "secret-hmac-key" {
		t.Errorf("EAB = %s with the key expected", pb.EAB)
	}
	wantEnv := map[string]string{"RFC2136_TSIG_SECRET": "c2VjcmV0", "RFC2136_TSIG_KEY": "override", "RFC2136_NAMESERVER": "127.0.0.1:5353"}
	if pb.DNS == nil || pb.DNS.Name != "rfc2136" || !maps.Equal(pb.DNS.Env, wantEnv) {
		t.Errorf("DNS = %s, want rfc2136 with the settings expected (env: over env_file)", pb.DNS)
	}
	// Printed or logged, neither shows its secrets.
	for _, shown := range []string{fmt.Sprint(pb.EAB), fmt.Sprintf("%+v", *pb.EAB), fmt.Sprint(pb.DNS), fmt.Sprintf("%v", *pb.DNS)} {
		if strings.Contains(shown, "secret-hmac-key") || strings.Contains(shown, "c2VjcmV0") || strings.Contains(shown, fmt.Sprint(pb.EAB.HMAC)) {
			t.Errorf("printed with its secret: %s", shown)
		}
	}

	if got := p.ACMELabels(); !slices.Equal(got, []string{"icinga", "wikibase"}) {
		t.Errorf("ACMELabels() = %q", got)
	}
	ic := p.ACMECert("icinga")
	if ic.CommonName != "icinga.example.org" || !slices.Equal(ic.Names, []string{"icinga.example.org", "icinga2.example.org"}) ||
		ic.Challenge != policy.ChallengeHTTP01 || !slices.Equal(ic.KeyTypes, policy.DefaultACMEKeyTypes) || ic.Wildcard() {
		t.Errorf("icinga = %+v: want lower-cased names, cn the first, http-01 and both key types by default", ic)
	}
	wb := p.ACMECert("wikibase")
	if wb.CommonName != "wikiba.se" || wb.Account != "pebble" || wb.Challenge != policy.ChallengeDNS01 || !slices.Equal(wb.KeyTypes, []string{"rsa-3072"}) || !wb.Wildcard() {
		t.Errorf("wikibase = %+v", wb)
	}

	for _, tc := range []struct {
		label, node string
		groups      []string
		via         string
	}{
		{"icinga", "mon1.example", nil, "node mon1.example"},
		{"icinga", "cp1.example", nil, ""},
		{"wikibase", "cp2.example", nil, "group frontends"},
		{"wikibase", "new.example", []string{"frontends"}, "group frontends"},
		{"wikibase", "mon1.example", []string{"nosuch"}, ""},
	} {
		via, err := p.ACMEFor(p.ACMECert(tc.label), policy.Facts{Node: tc.node, Groups: tc.groups})
		if via != tc.via || (err == nil) != (tc.via != "") || (err != nil && !errors.Is(err, policy.ErrNotGranted)) {
			t.Errorf("ACMEFor(%s, %s) = %q, %v; want %q", tc.label, tc.node, via, err, tc.via)
		}
	}
	if p.ACMECert("nosuch") != nil || p.ACMEAccount("nosuch") != nil {
		t.Error("unknown label or account is not nil")
	}
}

// The files an account names count in the policy's digest, as static
// files do: a new CA bundle or TSIG secret is a new policy.
func TestACMEDigest(t *testing.T) {
	src := `acme:
  accounts:
    a:
      directory: letsencrypt
      ca_file: pebble.pem
      eab: {kid: k, hmac_file: eab.key}
`
	files := acmeFiles(t)
	digest := func() string {
		t.Helper()
		p, err := policy.Parse(fileName, []byte(src), readFiles(files))
		if err != nil {
			t.Fatal(err)
		}
		return p.Digest()
	}
	d1 := digest()
	files["eab.key"] = "b3RoZXIta2V5\n"
	if digest() != d1 {
		t.Error("digest changed with a secret file: it would let anyone who sees it test guesses")
	}
	files["pebble.pem"] = selfSignedPEM(t)
	if digest() == d1 {
		t.Error("digest unchanged when ca_file changed")
	}
}

func TestACMEProblems(t *testing.T) {
	const acct = "acme:\n  accounts:\n    le: {directory: letsencrypt}\n"
	cert := func(body string) string {
		return acmeGroups + acct + "  certificates:\n    web:\n" + body
	}
	for _, tc := range []struct {
		name, src, want string
	}{
		{"no directory", "acme:\n  accounts:\n    le: {email: a@example.org} # <-\n", "directory is required"},
		{"empty account", "acme:\n  accounts:\n    le: # <-\n", "is empty"},
		{"http directory", "acme:\n  accounts:\n    le:\n      directory: http://ca.example/dir # <-\n", "not an https:// URL"},
		{"directory not a URL", "acme:\n  accounts:\n    le:\n      directory: letsencrypt-prod # <-\n", "not an https:// URL"},
		{"bad email", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      email: 'Ops <ops@example.org>' # <-\n", "not a plain e-mail address"},
		{"eab without key", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      eab: {kid: k} # <-\n", "needs both kid and hmac_file"},
		{"eab key not base64url", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      eab:\n        kid: k\n        hmac_file: motd.txt # <-\n", "base64url"},
		{"ca_file missing", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      ca_file: nosuch.pem # <-\n", "nosuch.pem"},
		{"ca_file without certificates", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      ca_file: motd.txt # <-\n", "no PEM certificate"},
		{"bad provider name", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      dns: # <-\n        provider: RFC 2136\n", "not a lego DNS provider name"},
		{"bad env name", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      dns:\n        provider: rfc2136\n        env:\n          lower: x # <-\n", "not an environment variable name"},
		{"bad env file", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      dns:\n        provider: rfc2136\n        env_file: motd.txt # <-\n", "line 1 is not NAME=value"},
		{"unknown key", "acme:\n  accounts:\n    le:\n      directory: letsencrypt\n      contact: a@b.example # <-\n", `unknown key "contact"`},

		{"no account at all", acmeGroups + "acme:\n  certificates:\n    web: # <-\n      sni: [www.example.org]\n      to: {all: true}\n", "no account"},
		{"account needed among several", acmeGroups + "acme:\n  accounts:\n    a: {directory: letsencrypt}\n    b: {directory: letsencrypt-staging}\n  certificates:\n    web: # <-\n      sni: [www.example.org]\n      to: {all: true}\n", "account is required when there are several (a, b)"},
		{"unknown account", cert("      account: other # <-\n      sni: [www.example.org]\n      to: {all: true}\n"), `no account "other"`},
		{"no sni", cert("      cn: www.example.org\n      to: {all: true}\n"), "sni is required"},
		{"wildcard with http-01", cert("      sni: ['*.example.org']\n      challenge: http-01 # <-\n      to: {all: true}\n"), "http-01 cannot prove a wildcard"},
		{"wildcard with no challenge", cert("      sni: ['*.example.org']\n      to: {all: true}\n"), "add challenge: dns-01"},
		{"unknown challenge", cert("      sni: [www.example.org]\n      challenge: tls-alpn-01 # <-\n      to: {all: true}\n"), `unknown challenge "tls-alpn-01"`},
		{"IP address", cert("      sni:\n        - 192.0.2.1 # <-\n      to: {all: true}\n"), "an IP address"},
		{"one label", cert("      sni:\n        - localhost # <-\n      to: {all: true}\n"), "at least two labels"},
		{"underscore", cert("      sni:\n        - a_b.example.org # <-\n      to: {all: true}\n"), "underscores"},
		{"wildcard inside", cert("      sni:\n        - a.*.example.org # <-\n      challenge: dns-01\n      to: {all: true}\n"), "not a DNS name"},
		{"trailing dot", cert("      sni:\n        - www.example.org. # <-\n      to: {all: true}\n"), "trailing dot"},
		{"space", cert("      sni:\n        - 'www example.org' # <-\n      to: {all: true}\n"), "not a DNS name"},
		{"twice", cert("      sni:\n        - www.example.org\n        - WWW.example.org # <-\n      to: {all: true}\n"), "listed twice"},
		{"cn not in sni", cert("      cn: other.example.org # <-\n      sni: [www.example.org]\n      to: {all: true}\n"), "not one of the sni names"},
		{"unknown key type", cert("      sni: [www.example.org]\n      key_types:\n        - ed25519 # <-\n      to: {all: true}\n"), `unknown key type "ed25519"`},
		{"two ecdsa key types", cert("      sni: [www.example.org]\n      key_types:\n        - ecdsa-p256\n        - ecdsa-p384 # <-\n      to: {all: true}\n"), "one ecdsa key type at most"},
		{"no one", cert("      sni: [www.example.org]\n"), "given to no one"},
		{"unknown group", cert("      sni: [www.example.org]\n      to:\n        groups: [nosuch] # <-\n"), `no group "nosuch"`},
		{"bad label", acmeGroups + acct + "  certificates:\n    'web site': # <-\n      sni: [www.example.org]\n      to: {all: true}\n", "label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := 0
			if strings.Contains(tc.src, "# <-") {
				line = marked(t, tc.src)
			}
			_, err := policy.Parse(fileName, []byte(tc.src), readFiles(acmeFiles(t)))
			errs := problemsOf(t, err)
			if len(errs) != 1 {
				t.Fatalf("%d problems, want 1:\n%v", len(errs), err)
			}
			if !strings.Contains(errs[0].Msg, tc.want) {
				t.Errorf("problem %q does not say %q", errs[0], tc.want)
			}
			if line != 0 && errs[0].Line != line {
				t.Errorf("problem at line %d, want %d: %v", errs[0].Line, line, errs[0])
			}
		})
	}
	// Many names: one problem, at sni.
	names := make([]string, 101)
	for i := range names {
		names[i] = "n" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + ".example.org"
	}
	_, err := policy.Parse(fileName, []byte(cert("      sni: ["+strings.Join(names, ", ")+"]\n      to: {all: true}\n")), readFiles(acmeFiles(t)))
	if errs := problemsOf(t, err); !strings.Contains(errs[0].Msg, "at most 100") {
		t.Errorf("101 names: %v", err)
	}
}
