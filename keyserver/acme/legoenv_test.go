package acme_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/go-acme/lego/v4/challenge"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/policy"
)

type envProvider struct{ token string }

func (envProvider) Present(string, string, string) error { return nil }
func (envProvider) CleanUp(string, string, string) error { return nil }

// TestLegoByName: a constructor reading the process environment sees the
// account's settings while it runs, and the environment is as it was
// afterwards; a keyserver built with it takes provider names it does not
// link itself, and CheckPolicy reports the constructor's refusals.
func TestLegoByName(t *testing.T) {
	t.Setenv("EXAMPLEDNS_KEEP", "the keyserver's")
	t.Setenv("EXAMPLEDNS_TOKEN", "") // restored after the test
	os.Unsetenv("EXAMPLEDNS_TOKEN")
	byName := acme.LegoByName(func(name string) (challenge.Provider, error) {
		if name != "exampledns" {
			return nil, errors.New("unrecognized DNS provider: " + name)
		}
		tok := os.Getenv("EXAMPLEDNS_TOKEN")
		if tok == "" {
			return nil, errors.New("exampledns: some credentials information are missing: EXAMPLEDNS_TOKEN")
		}
		if tok == "wr0ng-t0ken" {
			return nil, errors.New("exampledns: token " + tok + " refused") // a provider quoting a secret
		}
		return envProvider{tok}, nil
	})
	p, err := byName("exampledns", map[string]string{"EXAMPLEDNS_TOKEN": "s3cret", "EXAMPLEDNS_KEEP": "the account's"})
	if err != nil || p.(envProvider).token != "s3cret" {
		t.Fatalf("byName = %v, %v", p, err)
	}
	if _, set := os.LookupEnv("EXAMPLEDNS_TOKEN"); set || os.Getenv("EXAMPLEDNS_KEEP") != "the keyserver's" {
		t.Errorf("environment after: TOKEN set %v, KEEP %q; want it as it was", set, os.Getenv("EXAMPLEDNS_KEEP"))
	}

	acme.SetDNSProvidersByName(byName)
	defer acme.SetDNSProvidersByName(nil)
	for src, want := range map[string]string{
		"dns: {provider: exampledns, env: {EXAMPLEDNS_TOKEN: x}}":                        "",
		"dns: {provider: exampledns}":                                                    `policy.yaml:4: acme account "ca": exampledns: some credentials information are missing: EXAMPLEDNS_TOKEN`,
		"dns: {provider: nosuch}":                                                        `policy.yaml:4: acme account "ca": unrecognized DNS provider: nosuch`,
		"dns: {provider: rfc2136}":                                                       `RFC2136_NAMESERVER`,
		"dns: {provider: exampledns, env: {EXAMPLEDNS_TOKEN: wr0ng-t0ken}}":              `exampledns: token <EXAMPLEDNS_TOKEN> refused`,
		"dns: {provider: exampledns, env: {EXAMPLEDNS_TOKEN: x, LEGO_DISABLE_CP: true}}": `LEGO_DISABLE_CP is lego's own setting`,
	} {
		pol, err := policy.Parse("policy.yaml", []byte("groups: {}\nacme:\n  accounts:\n    ca:\n      directory: letsencrypt\n      "+src+"\n  certificates:\n    w: {sni: [\"*.example.org\"], challenge: dns-01, to: {all: true}}\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = acme.CheckPolicy(pol)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: CheckPolicy = %v, want %q", src, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "wr0ng-t0ken") {
			t.Errorf("%s: the error quotes the account's secret: %v", src, err)
		}
	}
}
