package main

import (
	"strings"
	"testing"

	"github.com/go-acme/lego/v4/providers/dns"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/policy"
)

// TestEveryLegoProvider: with lego's providers linked, an account may
// name any of them; lego checks the settings when the policy is loaded,
// and a name lego does not know is refused.
func TestEveryLegoProvider(t *testing.T) {
	acme.SetDNSProvidersByName(acme.LegoByName(dns.NewDNSChallengeProviderByName))
	for src, want := range map[string]string{
		"dns: {provider: cloudflare, env: {CLOUDFLARE_DNS_API_TOKEN: t0ken}}":                                    "",
		"dns: {provider: route53, env: {AWS_REGION: eu-west-1, AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: b}}": "",
		"dns: {provider: cloudflare}":                                           "cloudflare: some credentials information are missing",
		"dns: {provider: nosuchdns}":                                            "unrecognized DNS provider: nosuchdns",
		"dns: {provider: rfc2136, env: {RFC2136_NAMESERVER: \"127.0.0.1:53\"}}": "",
	} {
		pol, err := policy.Parse("policy.yaml", []byte("groups: {}\nacme:\n  accounts:\n    ca:\n      directory: letsencrypt\n      "+src+"\n  certificates:\n    w: {sni: [\"*.example.org\"], challenge: dns-01, to: {all: true}}\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = acme.CheckPolicy(pol)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: CheckPolicy = %v, want %q", src, err, want)
		}
	}
}
