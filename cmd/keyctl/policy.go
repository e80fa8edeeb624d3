package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
)

// errPolicyRefused means problems were printed already; exit 1.
var errPolicyRefused = errors.New("policy refused")

func cmdPolicyCheck(e *env, args []string) error {
	fs := e.flags("policy check")
	auths := fs.String("authorities", "", "directory of the named authorities (default: authorities/ next to FILE, when it exists)")
	rest, err := parse(fs, args, 1, "one policy FILE")
	if err != nil {
		return err
	}
	file := rest[0]
	p, err := policy.Load(file)
	dir := policyAuthorities(file, *auths)
	if err == nil && dir != "" {
		err = p.CheckAuthorities(time.Now(), issuerOf(dir))
	}
	if err == nil {
		// The settings of the DNS providers keyctl knows; the others
		// are for the keyserver to judge (keyserver-alldns links all).
		err = acme.CheckDNSSettings(p)
	}
	if err != nil {
		probs := policy.Problems(file, err)
		for _, pr := range probs {
			fmt.Fprintln(e.stderr, pr)
		}
		return fmt.Errorf("%s: %w with %d problem(s)", file, errPolicyRefused, len(probs))
	}
	fmt.Fprintf(e.stdout, "%s: ok: %d authorities, %d groups, %d grants, %d acme certificates (%s)\n", file,
		len(p.Authorities()), len(p.Groups()), len(p.GrantNames()), len(p.ACMELabels()), p.Digest())
	for _, name := range p.ACMEAccounts() {
		if d := p.ACMEAccount(name).DNS; d != nil && !slices.Contains(acme.DNSProviders(), d.Name) {
			fmt.Fprintf(e.stderr, "note: acme account %q: dns provider %q is not linked into the keyserver (linked: %s), only into keyserver-alldns, which checks its settings when it loads the policy\n",
				name, d.Name, strings.Join(acme.DNSProviders(), ", "))
		}
	}
	if dir == "" && len(p.Authorities()) > 0 {
		fmt.Fprintf(e.stderr, "note: the authorities were not checked (no %s/ next to %s; give --authorities DIR)\n", keyserver.AuthoritiesDir, file)
	}
	return nil
}

// policyAuthorities is where a policy file's named authorities are: flag
// when given, else authorities/ next to the file when there is one.
func policyAuthorities(file, flag string) string {
	if flag != "" {
		return flag
	}
	d := filepath.Join(filepath.Dir(file), keyserver.AuthoritiesDir)
	if fi, err := os.Stat(d); err == nil && fi.IsDir() {
		return d
	}
	return ""
}

// readRoots reads the root certificates of a policy's authorities, for
// an offline explanation; those that cannot be read are left out.
func readRoots(dir string, names []string) map[string]*x509.Certificate {
	roots := map[string]*x509.Certificate{}
	if dir == "" {
		return roots
	}
	for _, n := range names {
		if root, _, err := authority.ReadCertificates(filepath.Join(dir, n)); err == nil {
			roots[n] = root
		}
	}
	return roots
}

// issuerOf reads an authority's issuing certificate (not its key: keyctl
// need not be able to read keys to check a policy).
func issuerOf(dir string) func(string) (*x509.Certificate, error) {
	return func(name string) (*x509.Certificate, error) {
		base := filepath.Join(dir, name)
		_, issuer, err := authority.ReadCertificates(base)
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("no authority in %s (create it with keyctl authority create %s)", base, name)
		}
		return issuer, err
	}
}

func cmdPolicyExplain(e *env, args []string) error {
	fs := e.flags("policy explain")
	node := fs.String("node", "", "node name (required)")
	grant := fs.String("grant", "", "only this grant")
	auths := fs.String("authorities", "", "with FILE: directory of the named authorities, for root pins and static content (default: authorities/ next to FILE, when it exists)")
	asJSON := fs.Bool("json", false, "print JSON")
	var groups, ips multi
	fs.Var(&groups, "group", "a group the node's token gives it (repeatable)")
	fs.Var(&ips, "ip", "an address its token records (repeatable)")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, `Usage: keyctl policy explain --node NAME [--grant G] [--group G ...] [--ip ADDR ...] [--json] [--authorities DIR] [FILE]

With FILE, evaluates that policy file here, before it is deployed; --group
and --ip say what the node's token would record. Without FILE, asks the
keyserver, which evaluates its running policy with what the node's token
recorded (plus any --group and --ip given).

Flags:
`)
		fs.PrintDefaults()
	}
	files, err := positional(fs, args)
	if err != nil {
		return err
	}
	if *node == "" || len(files) > 1 {
		fs.Usage()
		return usageError{errors.New("policy explain: --node NAME and at most one FILE")}
	}
	var list api.GrantList
	if len(files) == 1 {
		file := files[0]
		p, err := policy.Load(file)
		if err != nil {
			for _, pr := range policy.Problems(file, err) {
				fmt.Fprintln(e.stderr, pr)
			}
			return fmt.Errorf("%s: %w", file, errPolicyRefused)
		}
		if *grant != "" && p.Grant(*grant) == nil {
			return fmt.Errorf("no grant %q in %s", *grant, file)
		}
		roots := readRoots(policyAuthorities(file, *auths), p.Authorities())
		list = keyserver.ExplainPolicy(p, policy.Facts{Node: *node, Groups: groups, IPs: ips}, *grant, roots)
	} else {
		c, err := e.client()
		if err != nil {
			return err
		}
		req := api.ExplainRequest{Node: *node, Grant: *grant, Groups: groups, IPs: ips}
		if err := c.do(e, "POST", api.PathPolicyExplain, req, &list); err != nil {
			return err
		}
	}
	if *asJSON {
		return printJSON(e, list)
	}
	printExplanation(e.stdout, list)
	return nil
}

func printExplanation(w io.Writer, l api.GrantList) {
	fmt.Fprintf(w, "node %s\ngroups: %s\n", l.Node, none(l.Groups))
	if l.Policy != "" {
		fmt.Fprintf(w, "policy: %s\n", l.Policy)
	}
	for _, g := range l.Grants {
		fmt.Fprintf(w, "\n%s (%s, via %s)\n", g.Name, g.Type, g.Via)
		tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
		if g.Error != "" {
			fmt.Fprintf(tw, "  CANNOT RENDER:\t%s\n", g.Error)
		}
		if g.Type == policy.TypeStatic {
			fmt.Fprintf(tw, "  content:\t%d bytes, %s\n", g.Size, g.Digest)
			tw.Flush()
			continue
		}
		auth := g.Authority
		if g.RootPin != "" {
			auth += " (root " + g.RootPin + ")"
		}
		fmt.Fprintf(tw, "  authority:\t%s\n", auth)
		fmt.Fprintf(tw, "  usage:\t%s\n", g.Usage)
		fmt.Fprintf(tw, "  subject:\t%s\n", g.Subject)
		fmt.Fprintf(tw, "  dns:\t%s\n", none(g.DNSNames))
		fmt.Fprintf(tw, "  ips:\t%s\n", none(g.IPAddresses))
		fmt.Fprintf(tw, "  uris:\t%s\n", none(g.URIs))
		if len(g.AllowDNS)+len(g.AllowIPs)+len(g.AllowURIs) > 0 {
			fmt.Fprintf(tw, "  a CSR may add:\tdns %s; ips %s; uris %s\n", none(g.AllowDNS), none(g.AllowIPs), none(g.AllowURIs))
		}
		fmt.Fprintf(tw, "  key types:\t%s\n", none(g.KeyTypes))
		fmt.Fprintf(tw, "  lifetime:\t%s\n", g.Lifetime.Std())
		tw.Flush()
	}
	if len(l.Grants) == 0 {
		fmt.Fprintln(w, "\nno grants")
	}
	if len(l.NotGranted) > 0 {
		fmt.Fprintf(w, "\nnot granted: %s\n", strings.Join(l.NotGranted, ", "))
	}
}

func cmdPolicyReload(e *env, args []string) error {
	fs := e.flags("policy reload")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	var st api.PolicyStatus
	if err := c.do(e, "POST", api.PathPolicyReload, nil, &st); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			for _, d := range ae.Details {
				fmt.Fprintln(e.stderr, d)
			}
		}
		return err
	}
	fmt.Fprintf(e.stdout, "policy %s loaded: %s\n", st.File, st.Digest)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	printPolicyStatus(tw, &st)
	return tw.Flush()
}

func cmdPolicyStatus(e *env, args []string) error {
	var st api.PolicyStatus
	return listCommand(e, "policy status", args, api.PathPolicy, &st, func(w io.Writer) {
		fmt.Fprintf(w, "file:\t%s\ndigest:\t%s\nloaded:\t%s\n", st.File, st.Digest, st.LoadedAt.Local().Format(time.RFC3339))
		printPolicyStatus(w, &st)
	})
}

func printPolicyStatus(w io.Writer, st *api.PolicyStatus) {
	fmt.Fprintf(w, "authorities:\t%s\ngroups:\t%s\ngrants:\t%s\n", none(st.Authorities), none(st.Groups), none(st.Grants))
}

// none lists s, or says "-" when it is empty.
func none(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}
