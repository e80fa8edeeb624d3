package acme

// dns-01: which provider answers a label's challenges (the keyserver's
// own zone, or a lego DNS provider named by the account), and our own
// check that the answer is served before lego tells the CA, in place of
// lego's, which asks its package-global resolvers.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/lego"
	legoexec "github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/httpreq"
	"github.com/go-acme/lego/v4/providers/dns/rfc2136"
	"github.com/miekg/dns"

	"github.com/keysystem/keysystem/keyserver/acme/zone"
	"github.com/keysystem/keysystem/policy"
)

// dnsProviders are the lego DNS providers linked in, by the names lego
// gives them, each made from an account's settings alone
// (policy.DNSProvider.Env), never the process environment: the few that
// need nothing beyond lego's core. Linking all of lego's (providers/dns)
// would put some 180 more modules into every build and download, for
// providers each site needs one of; cmd/keyserver/alldns is the keyserver
// with all of them (SetDNSProvidersByName).
var dnsProviders = map[string]func(env map[string]string) (challenge.Provider, error){
	"rfc2136":   newRFC2136,
	"dnsupdate": newRFC2136, // lego's other name for it
	"httpreq":   newHTTPReq,
	"exec":      newExec,
}

// DNSProviders returns the names of the lego DNS providers this
// keyserver links, sorted.
func DNSProviders() []string {
	return slices.Sorted(maps.Keys(dnsProviders))
}

// byName makes the providers not linked here, in a keyserver built with
// more of them (SetDNSProvidersByName); nil in the default build.
var byName func(name string, env map[string]string) (challenge.Provider, error)

// SetDNSProvidersByName lets the policy's accounts name any DNS provider
// build knows, besides the ones linked here: cmd/keyserver/alldns passes
// LegoByName(dns.NewDNSChallengeProviderByName), which links all of
// lego's. Call it once, before the keyserver starts.
func SetDNSProvidersByName(build func(name string, env map[string]string) (challenge.Provider, error)) {
	byName = build
}

// CheckPolicy reports, at each account's line, every account whose DNS
// provider this keyserver does not link, or whose settings the provider
// refuses: each is made once, which checks its settings and nothing
// else (no provider asks the network when it is made). It returns
// policy.Errors, or nil.
func CheckPolicy(p *policy.Policy) error { return checkPolicy(p, true) }

// CheckDNSSettings is CheckPolicy for a program that is not the
// keyserver (keyctl policy check): a provider this build does not link
// may be linked into the keyserver that loads the policy
// (keyserver-alldns), so it is left for that one to judge.
func CheckDNSSettings(p *policy.Policy) error { return checkPolicy(p, false) }

func checkPolicy(p *policy.Policy, unlinked bool) error {
	var probs policy.Errors
	for _, name := range p.ACMEAccounts() {
		a := p.ACMEAccount(name)
		if a.DNS == nil || !unlinked && !linked(a.DNS.Name) {
			continue
		}
		if _, err := newDNSProvider(a.DNS); err != nil {
			probs = append(probs, policy.Problem{File: p.File(), Line: a.Line, Msg: fmt.Sprintf("acme account %q: %v", name, err)})
		}
	}
	if len(probs) > 0 {
		return probs
	}
	return nil
}

// linked reports whether this build makes the provider name.
func linked(name string) bool {
	_, ok := dnsProviders[name]
	return ok || byName != nil
}

func notLinked(name string) error {
	return fmt.Errorf("dns provider %q is not linked into this keyserver (linked: %s; keyserver-alldns links every lego DNS provider)", name, strings.Join(DNSProviders(), ", "))
}

// newDNSProvider makes the account's lego DNS provider.
func newDNSProvider(d *policy.DNSProvider) (challenge.Provider, error) {
	f, ok := dnsProviders[d.Name]
	switch {
	case ok:
		return f(d.Env)
	case byName != nil:
		return byName(d.Name, d.Env)
	}
	return nil, notLinked(d.Name)
}

// dns01 returns what sets a lego client up to answer the label's dns-01
// challenges: through the account's lego DNS provider, or the keyserver's
// own zone, each with our pre-check, which lego runs until the provider's
// timeout before it tells the CA to look. The pre-check ends with ctx.
func (m *Manager) dns01(ctx context.Context, lc *policy.ACMECert, acct *policy.ACMEAccount) (func(*lego.Client) error, error) {
	var p challenge.Provider
	var check dns01.WrapPreCheckFunc
	if acct.DNS == nil {
		if m.cfg.DNSZone == "" {
			return nil, fmt.Errorf("acme: %s: dns-01 through the keyserver's own DNS server needs its zone, and none is set: "+
				"set acme.dns.zone in keyserver.yaml (and delegate that zone to the keyservers), or give account %q a dns provider in the policy",
				lc.Label, acct.Name)
		}
		p = &zone.Provider{Store: m.cfg.Store, Zone: m.cfg.DNSZone, Now: m.cfg.Now}
		// Every keyserver's zone server answers from the store, so a
		// value in the store is served.
		check = func(domain, _, value string, _ dns01.PreCheckFunc) (bool, error) {
			name := zone.Name(m.cfg.DNSZone, domain)
			values, err := zone.Values(ctx, m.cfg.Store, name)
			if err != nil {
				return ctx.Err() != nil, err
			}
			if !slices.Contains(values, value) {
				return false, fmt.Errorf("acme: dns-01 for %s: the answer is not in the store at %s", domain, name)
			}
			return true, nil
		}
	} else {
		var err error
		if p, err = newDNSProvider(acct.DNS); err != nil {
			return nil, fmt.Errorf("acme: %s: account %s: %w", lc.Label, acct.Name, err)
		}
		look := dnsLookup{resolvers: m.cfg.DNSResolvers, port: strconv.Itoa(m.cfg.DNSAuthPort)}
		// lego's own check is never called: it would ask lego's global
		// resolvers, and then the zone's servers on port 53.
		check = func(domain, fqdn, value string, _ dns01.PreCheckFunc) (bool, error) {
			if err := look.served(ctx, fqdn, value); err != nil {
				// Done (with the error) once the order is over;
				// otherwise lego asks again until the provider's
				// timeout.
				return ctx.Err() != nil, fmt.Errorf("acme: dns-01 for %s: %w", domain, err)
			}
			m.cfg.Log.Debug("acme dns-01 answer served by every authoritative server", "domain", domain, "name", fqdn)
			return true, nil
		}
	}
	return func(c *lego.Client) error {
		// lego would pick http-01 where the CA offers both.
		c.Challenge.Remove(challenge.HTTP01)
		if err := c.Challenge.SetDNS01Provider(p, dns01.WrapPreCheck(check)); err != nil {
			return fmt.Errorf("acme: %s: %w", lc.Label, err)
		}
		return nil
	}, nil
}

var legoCNAMEsOnce sync.Once

// disableLegoCNAMEs stops lego from following CNAMEs at a challenge name.
// lego does so in dns01.GetChallengeInfo, which its dns-01 solver and
// most providers call for every challenge, through its package-global
// resolvers (read from /etc/resolv.conf when the package loads); its only
// switch is the process environment variable LEGO_DISABLE_CNAME_SUPPORT,
// read on every call. So it is set, once, for the whole process. Our
// pre-check follows CNAMEs itself, through Config.DNSResolvers, and the
// built-in zone's provider needs no lookup. The cost: a lego provider
// writes at _acme-challenge.<name> itself, never at a CNAME's target
// (providers that write elsewhere on their own, as acme-dns does, work).
func disableLegoCNAMEs() {
	legoCNAMEsOnce.Do(func() { os.Setenv("LEGO_DISABLE_CNAME_SUPPORT", "true") })
}

// systemResolvers are the name servers of /etc/resolv.conf, or none.
func systemResolvers() []string {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// withDNSPort adds port 53 to the addresses that lack a port.
func withDNSPort(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(strings.Trim(a, "[]"), "53")
		}
		out[i] = a
	}
	return out
}

// The pre-check for lego providers: what the CA will see.

const (
	// dnsQueryTimeout bounds one query: a server that does not answer
	// costs this much of the provider's propagation timeout each time
	// lego polls.
	dnsQueryTimeout = 3 * time.Second
	// maxCNAMEs: a chain longer than this is a loop or a mistake.
	maxCNAMEs = 8
	// ednsSize is the UDP reply size asked for (DNS Flag Day 2020);
	// larger replies come truncated and are asked again over TCP.
	ednsSize = 1232
)

// dnsLookup asks recursive resolvers where a challenge name leads, and
// that name's authoritative servers, directly, what they serve there.
type dnsLookup struct {
	resolvers []string // host:port
	port      string   // of the authoritative servers
}

// served reports (as an error) unless every authoritative server of the
// name fqdn leads to, through its CNAMEs, serves the TXT value there.
// A CA asks any one of them, through resolvers that cache, so one that
// lags behind could fail the validation.
func (l dnsLookup) served(ctx context.Context, fqdn, value string) error {
	name, err := l.follow(ctx, dns.CanonicalName(fqdn))
	if err != nil {
		return err
	}
	zoneName, err := l.zoneOf(ctx, name)
	if err != nil {
		return err
	}
	servers, err := l.nameservers(ctx, zoneName)
	if err != nil {
		return err
	}
	where := name
	if name != dns.CanonicalName(fqdn) {
		where = fmt.Sprintf("%s (CNAME from %s)", name, fqdn)
	}
	for _, ns := range servers {
		if err := l.servedBy(ctx, ns, name, value); err != nil {
			return fmt.Errorf("TXT at %s, zone %s: %w", where, zoneName, err)
		}
	}
	return nil
}

// exchange asks server one question, over UDP and then TCP if the reply
// was truncated.
func (l dnsLookup) exchange(ctx context.Context, server, name string, qtype uint16, recurse bool) (*dns.Msg, error) {
	q := new(dns.Msg).SetQuestion(name, qtype)
	q.RecursionDesired = recurse
	q.SetEdns0(ednsSize, false)
	c := &dns.Client{Net: "udp", Timeout: dnsQueryTimeout, UDPSize: ednsSize}
	r, _, err := c.ExchangeContext(ctx, q, server)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, q, server)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s at %s: %w", dns.TypeToString[qtype], name, server, err)
	}
	return r, nil
}

// recursive asks the resolvers in turn until one gives an answer, which
// may be NXDOMAIN.
func (l dnsLookup) recursive(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	if len(l.resolvers) == 0 {
		return nil, errors.New("no recursive DNS resolvers: none in /etc/resolv.conf, and none configured")
	}
	var errs []error
	for _, s := range l.resolvers {
		r, err := l.exchange(ctx, s, name, qtype, true)
		if err == nil && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("%s %s at %s: %s", dns.TypeToString[qtype], name, s, dns.RcodeToString[r.Rcode])
		}
		if err == nil {
			return r, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// follow returns where name's CNAMEs lead, or name itself.
func (l dnsLookup) follow(ctx context.Context, start string) (string, error) {
	name, seen := start, map[string]bool{start: true}
	for range maxCNAMEs {
		r, err := l.recursive(ctx, name, dns.TypeCNAME)
		if err != nil {
			return "", err
		}
		target := ""
		for _, rr := range r.Answer {
			if c, ok := rr.(*dns.CNAME); ok && dns.CanonicalName(c.Hdr.Name) == name {
				target = dns.CanonicalName(c.Target)
			}
		}
		if target == "" {
			return name, nil
		}
		if seen[target] {
			return "", fmt.Errorf("CNAME loop at %s", target)
		}
		seen[target], name = true, target
	}
	return "", fmt.Errorf("more than %d CNAMEs from %s", maxCNAMEs, start)
}

// zoneOf finds the zone name belongs to: the owner of the SOA record a
// resolver gives for it or, when the name is not a zone's apex, with its
// negative answer; else the same for its parent, and so on.
func (l dnsLookup) zoneOf(ctx context.Context, name string) (string, error) {
	for cand := name; ; {
		r, err := l.recursive(ctx, cand, dns.TypeSOA)
		if err != nil {
			return "", err
		}
		for _, rr := range slices.Concat(r.Answer, r.Ns) {
			if soa, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(soa.Hdr.Name, name) {
				return dns.CanonicalName(soa.Hdr.Name), nil
			}
		}
		off, end := dns.NextLabel(cand, 0)
		if end {
			return "", fmt.Errorf("no zone found for %s", name)
		}
		cand = cand[off:]
	}
}

// nameserver is one of a zone's NS hosts and its addresses (host:port).
type nameserver struct {
	host  string
	addrs []string
}

// nameservers returns the zone's NS hosts and their addresses, as the
// resolvers see them.
func (l dnsLookup) nameservers(ctx context.Context, zoneName string) ([]nameserver, error) {
	r, err := l.recursive(ctx, zoneName, dns.TypeNS)
	if err != nil {
		return nil, err
	}
	var out []nameserver
	for _, rr := range r.Answer {
		ns, ok := rr.(*dns.NS)
		if !ok || dns.CanonicalName(ns.Hdr.Name) != zoneName {
			continue
		}
		s := nameserver{host: dns.CanonicalName(ns.Ns)}
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			r, err := l.recursive(ctx, s.host, qtype)
			if err != nil {
				return nil, fmt.Errorf("zone %s: name server %s: %w", zoneName, s.host, err)
			}
			for _, rr := range r.Answer {
				switch a := rr.(type) {
				case *dns.A:
					s.addrs = append(s.addrs, net.JoinHostPort(a.A.String(), l.port))
				case *dns.AAAA:
					s.addrs = append(s.addrs, net.JoinHostPort(a.AAAA.String(), l.port))
				}
			}
		}
		if len(s.addrs) == 0 {
			return nil, fmt.Errorf("zone %s: name server %s has no address", zoneName, s.host)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("zone %s has no NS records", zoneName)
	}
	return out, nil
}

// servedBy reports (as an error) unless the server serves value at name.
// Its first address that answers decides, as a resolver's would: one it
// cannot reach (an IPv6 address from a host without IPv6) is no verdict.
func (l dnsLookup) servedBy(ctx context.Context, ns nameserver, name, value string) error {
	var errs []error
	for _, addr := range ns.addrs {
		r, err := l.exchange(ctx, addr, name, dns.TypeTXT, false)
		switch {
		case err != nil:
			errs = append(errs, err)
			continue
		case r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError:
			return fmt.Errorf("%s (%s) answers %s", ns.host, addr, dns.RcodeToString[r.Rcode])
		case !r.Authoritative:
			return fmt.Errorf("%s (%s) is not authoritative for it", ns.host, addr)
		}
		var values []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok && dns.CanonicalName(txt.Hdr.Name) == name {
				values = append(values, strings.Join(txt.Txt, ""))
			}
		}
		if slices.Contains(values, value) {
			return nil
		}
		if len(values) == 0 {
			return fmt.Errorf("%s (%s) does not serve the value yet (no TXT value there)", ns.host, addr)
		}
		return fmt.Errorf("%s (%s) does not serve the value yet (%d other TXT values there)", ns.host, addr, len(values))
	}
	return fmt.Errorf("%s: no address answered: %w", ns.host, errors.Join(errs...))
}

// The providers made here, from the account's settings alone.

// providerEnv reads a provider's settings from an account's map, never
// from the process environment, and gathers every problem, each naming
// its variable. Values are not quoted in errors where they may be
// secret.
type providerEnv struct {
	provider string
	env      map[string]string
	prefixes []string // of the variables' names, in the order looked up
	known    map[string]bool
	read     map[string][2]string // setting: value, variable
	errs     []string
}

func newProviderEnv(provider string, env map[string]string, prefixes ...string) *providerEnv {
	return &providerEnv{provider: provider, env: env, prefixes: prefixes, known: map[string]bool{}, read: map[string][2]string{}}
}

func (e *providerEnv) errorf(format string, args ...any) {
	e.errs = append(e.errs, fmt.Sprintf(format, args...))
}

// get returns a setting and the variable it was read from (the first
// prefix's when it is not set).
func (e *providerEnv) get(setting string) (value, name string) {
	if r, ok := e.read[setting]; ok {
		return r[0], r[1]
	}
	name = e.prefixes[0] + setting
	found := false
	for _, p := range e.prefixes {
		e.known[p+setting] = true
		v, ok := e.env[p+setting]
		switch {
		case !ok:
		case !found:
			value, name, found = v, p+setting, true
		case v != value:
			e.errorf("%s and %s are both set, differently: set one", name, p+setting)
		}
	}
	e.read[setting] = [2]string{value, name}
	return value, name
}

func (e *providerEnv) str(setting string) string {
	v, _ := e.get(setting)
	return v
}

func (e *providerEnv) required(setting string) string {
	v, name := e.get(setting)
	if v == "" {
		e.errorf("%s is required", name)
	}
	return v
}

// duration reads a time in whole seconds, as lego documents them, or as
// a Go duration ("500ms"); at least least.
func (e *providerEnv) duration(setting string, def, least time.Duration) time.Duration {
	v, name := e.get(setting)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if n, nerr := strconv.Atoi(v); nerr == nil {
		d, err = time.Duration(n)*time.Second, nil
	}
	if err != nil || d < least {
		e.errorf("%s %q: want a number of seconds, or a duration such as 500ms, of at least %v", name, v, least)
		return def
	}
	return d
}

func (e *providerEnv) integer(setting string, def, least, most int) int {
	v, name := e.get(setting)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < least || n > most {
		e.errorf("%s %q: want a whole number from %d to %d", name, v, least, most)
		return def
	}
	return n
}

func (e *providerEnv) mode(setting string) string {
	v, name := e.get(setting)
	if v != "" && v != "RAW" {
		e.errorf("%s %q: want RAW or nothing", name, v)
	}
	return v
}

// err is every problem found, and every variable that is not a setting
// of the provider (a misspelt name would otherwise be a default taken in
// silence).
func (e *providerEnv) err() error {
	for _, k := range slices.Sorted(maps.Keys(e.env)) {
		if !e.known[k] {
			e.errorf("%s is not a setting of %s (known: %s)", k, e.provider, strings.Join(slices.Sorted(maps.Keys(e.known)), ", "))
		}
	}
	if len(e.errs) == 0 {
		return nil
	}
	// One line, as it may end up in a policy problem or a label's status.
	return fmt.Errorf("dns provider %s: %s", e.provider, strings.Join(e.errs, "; "))
}

// tsigAlgorithms are the TSIG algorithms lego's rfc2136 provider signs
// with (GSS-TSIG, which needs Kerberos settings, is not offered here).
var tsigAlgorithms = []string{dns.HmacSHA1, dns.HmacSHA224, dns.HmacSHA256, dns.HmacSHA384, dns.HmacSHA512}

// newRFC2136 makes lego's RFC 2136 provider. The variables are lego's,
// under either of its prefixes: RFC2136_ (lego's documented names until
// v4.26) or DNSUPDATE_. Its defaults are lego's.
func newRFC2136(env map[string]string) (challenge.Provider, error) {
	e := newProviderEnv("rfc2136", env, "RFC2136_", "DNSUPDATE_")
	cfg := &rfc2136.Config{
		Nameserver:         e.required("NAMESERVER"),
		TSIGFile:           e.str("TSIG_FILE"),
		TSIGKey:            e.str("TSIG_KEY"),
		TSIGSecret:         e.str("TSIG_SECRET"),
		TSIGAlgorithm:      e.str("TSIG_ALGORITHM"),
		TTL:                e.integer("TTL", dns01.DefaultTTL, 1, math.MaxInt32),
		DNSTimeout:         e.duration("DNS_TIMEOUT", 10*time.Second, time.Millisecond),
		PropagationTimeout: e.duration("PROPAGATION_TIMEOUT", dns01.DefaultPropagationTimeout, time.Millisecond),
		PollingInterval:    e.duration("POLLING_INTERVAL", dns01.DefaultPollingInterval, time.Millisecond),
		SequenceInterval:   e.duration("SEQUENCE_INTERVAL", dns01.DefaultPropagationTimeout, 0),
	}
	if zones, name := e.get("ZONES"); zones != "" {
		for z := range strings.SplitSeq(zones, ",") {
			z = strings.TrimSpace(z)
			if _, ok := dns.IsDomainName(z); !ok || z == "" {
				e.errorf("%s: %q is not a zone name", name, z)
				continue
			}
			cfg.Zones = append(cfg.Zones, dns.Fqdn(z))
		}
	}
	if ns := cfg.Nameserver; ns != "" {
		// lego adds port 53 to a bare host.
		host, _, err := net.SplitHostPort(ns)
		if err != nil && strings.Contains(err.Error(), "missing port") {
			host, err = ns, nil
		}
		if _, ok := dns.IsDomainName(host); err != nil || host == "" || !ok || strings.ContainsAny(host, "/ ") {
			_, name := e.get("NAMESERVER")
			e.errorf("%s %q: want host or host:port", name, ns)
		}
	}
	// lego signs nothing, silently, when one of key and secret is
	// missing: refuse that rather than send unsigned updates.
	_, keyName := e.get("TSIG_KEY")
	_, secretName := e.get("TSIG_SECRET")
	switch {
	case (cfg.TSIGKey == "") != (cfg.TSIGSecret == ""):
		e.errorf("%s and %s go together: set both, or neither for unsigned updates", keyName, secretName)
	case cfg.TSIGFile != "" && cfg.TSIGKey != "":
		_, fileName := e.get("TSIG_FILE")
		e.errorf("%s and %s: set one", fileName, keyName)
	}
	if cfg.TSIGSecret != "" {
		if _, err := base64.StdEncoding.DecodeString(cfg.TSIGSecret); err != nil {
			e.errorf("%s is not base64", secretName)
		}
	}
	if a := cfg.TSIGAlgorithm; a != "" {
		cfg.TSIGAlgorithm = dns.CanonicalName(a) // as lego compares them
		if !slices.Contains(tsigAlgorithms, cfg.TSIGAlgorithm) {
			_, name := e.get("TSIG_ALGORITHM")
			e.errorf("%s %q: want one of %s", name, a, strings.Join(tsigAlgorithms, ", "))
		}
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	p, err := rfc2136.NewDNSProviderConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dns provider rfc2136: %w", err)
	}
	// lego has read the TSIG file into cfg: one without a usable key and
	// secret would, again, silently mean unsigned updates.
	if cfg.TSIGFile != "" {
		_, fileName := e.get("TSIG_FILE")
		if cfg.TSIGKey == "" || cfg.TSIGSecret == "" {
			return nil, fmt.Errorf("dns provider rfc2136: %s %s holds no usable key name and secret", fileName, cfg.TSIGFile)
		}
		if _, err := base64.StdEncoding.DecodeString(cfg.TSIGSecret); err != nil {
			return nil, fmt.Errorf("dns provider rfc2136: %s %s: its secret is not base64", fileName, cfg.TSIGFile)
		}
	}
	return p, nil
}

// newHTTPReq makes lego's httpreq provider, which posts each answer to
// an HTTP endpoint.
func newHTTPReq(env map[string]string) (challenge.Provider, error) {
	e := newProviderEnv("httpreq", env, "HTTPREQ_")
	cfg := &httpreq.Config{
		Mode:               e.mode("MODE"),
		Username:           e.str("USERNAME"),
		Password:           e.str("PASSWORD"),
		PropagationTimeout: e.duration("PROPAGATION_TIMEOUT", dns01.DefaultPropagationTimeout, time.Millisecond),
		PollingInterval:    e.duration("POLLING_INTERVAL", dns01.DefaultPollingInterval, time.Millisecond),
		HTTPClient:         &http.Client{Timeout: e.duration("HTTP_TIMEOUT", 30*time.Second, time.Millisecond)},
	}
	if raw, name := e.required("ENDPOINT"), "HTTPREQ_ENDPOINT"; raw != "" {
		// Not quoted: it may carry credentials.
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			e.errorf("%s is not an http:// or https:// URL", name)
		}
		cfg.Endpoint = u
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		e.errorf("HTTPREQ_USERNAME and HTTPREQ_PASSWORD go together: set both, or neither")
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	p, err := httpreq.NewDNSProviderConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dns provider httpreq: %w", err)
	}
	return p, nil
}

// newExec makes lego's exec provider, which runs a program to add and
// remove each answer.
func newExec(env map[string]string) (challenge.Provider, error) {
	e := newProviderEnv("exec", env, "EXEC_")
	cfg := &legoexec.Config{
		Program:            e.required("PATH"),
		Mode:               e.mode("MODE"),
		PropagationTimeout: e.duration("PROPAGATION_TIMEOUT", dns01.DefaultPropagationTimeout, time.Millisecond),
		PollingInterval:    e.duration("POLLING_INTERVAL", dns01.DefaultPollingInterval, time.Millisecond),
		SequenceInterval:   e.duration("SEQUENCE_INTERVAL", dns01.DefaultPropagationTimeout, 0),
	}
	// A bare name would be looked up in the keyserver's $PATH, a
	// relative one from its working directory: neither is what an
	// operator reading the policy expects.
	if p := cfg.Program; p != "" && !filepath.IsAbs(p) {
		e.errorf("EXEC_PATH %q: want an absolute path", p)
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	p, err := legoexec.NewDNSProviderConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dns provider exec: %w", err)
	}
	return p, nil
}
