package keyclient

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/authority/keyfile"
	"github.com/keysystem/keysystem/policy"
)

// Item types.
const (
	TypeX509   = "x509"
	TypeStatic = "static"
	TypeACME   = "acme"
)

// Defaults of the item settings.
const (
	defaultCheckInterval = time.Minute
	defaultReloadTimeout = 30 * time.Second
	defaultRefresh       = time.Hour
	defaultKeyMode       = 0o600
	defaultStaticMode    = 0o644
	certMode             = 0o644 // certificates, chains and roots are public

	// defaultACMERefresh is how often an acme item asks the keyserver
	// whether its label has a new version (a conditional request: a 304
	// when nothing changed). The keyserver renews ACME certificates
	// weeks ahead and holds a new one back for its staging time, so any
	// interval would do for renewals; 15 minutes bounds how long a fleet
	// takes to follow a replacement forced by `keyctl acme renew` (a
	// compromised key, a certificate the CA revokes), at the cost of one
	// empty answer per node every quarter of an hour.
	defaultACMERefresh = 15 * time.Minute
)

// settings is a checked configuration in the form the client runs on.
type settings struct {
	checkInterval time.Duration
	items         []*itemSpec
}

// itemSpec is one checked item: paths absolute, durations, mode and owner
// resolved.
type itemSpec struct {
	index int    // position in the config, for messages
	typ   string // TypeX509, TypeStatic or TypeACME
	name  string // the grant (x509), the static grant's name, or the ACME label
	// id names the item in the status file and in logs: its name, with
	// "#2", "#3"... for further x509 items of the same grant (or acme
	// items of the same label), in the order of the config.
	id string

	// x509
	key, cert, chain, fullchain, ca string
	keyType                         authority.KeyType
	dns                             []string
	ips                             []netip.Addr
	uris                            []*url.URL

	// static
	path string

	// acme: the key type family asked for ("ecdsa" or "rsa"); "" takes
	// the label's first key type.
	family string

	owner         keyfile.Owner
	mode          os.FileMode // the key's (x509, acme) or the file's (static)
	reload        string
	reloadTimeout time.Duration
	refresh       time.Duration
}

// label names the item in messages, as the operator wrote it.
func (s *itemSpec) label() string {
	return itemLabel(s.index, s.typ, s.name)
}

func itemLabel(i int, typ, name string) string {
	switch {
	case typ == "":
		return fmt.Sprintf("items[%d]", i)
	case name == "":
		return fmt.Sprintf("items[%d] (%s)", i, typ)
	}
	return fmt.Sprintf("items[%d] (%s %s)", i, typ, name)
}

// files are the paths the item writes.
func (s *itemSpec) files() []string {
	if s.typ == TypeStatic {
		return []string{s.path}
	}
	var out []string
	for _, p := range []string{s.key, s.cert, s.chain, s.fullchain, s.ca} { // ca is always "" for acme
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// dnsName accepts host names and a leading wildcard label; whether the
// grant allows a name is the keyserver's decision.
var dnsName = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// resolveItems checks every item and returns them resolved, with one
// error per problem, each naming its item.
func (c *Config) resolveItems() ([]*itemSpec, []error) {
	var (
		specs []*itemSpec
		errs  []error
	)
	paths := c.reservedPaths()
	names := map[string]*itemSpec{} // grant or static name -> its first item
	count := map[string]int{}       // x509 items per grant so far
	ids := acmeIDs(c.Items)
	for i := range c.Items {
		spec, problems := resolveItem(i, &c.Items[i])
		label := itemLabel(i, c.Items[i].Type, itemName(&c.Items[i]))
		for _, p := range problems {
			errs = append(errs, fmt.Errorf("%s: %w", label, p))
		}
		if spec == nil {
			continue
		}
		// Two x509 items may share a grant, with their own files (the
		// path check below sees to that): one certificate per key type,
		// say, for a server that offers both. A static file is kept once,
		// and a name is either a grant or a static file, never both.
		spec.id = spec.name
		first, dup := names[spec.name]
		switch {
		case spec.typ == TypeACME:
			// Labels are a name space of their own. Two items of one
			// label are one per key type, or one service's copy and
			// another's, each with its own files.
			spec.id = ids[i]
		case spec.name == "":
		case !dup:
			names[spec.name] = spec
			count[spec.name] = 1
		case spec.typ == TypeX509 && first.typ == TypeX509:
			count[spec.name]++
			spec.id = fmt.Sprintf("%s#%d", spec.name, count[spec.name])
		default:
			errs = append(errs, fmt.Errorf("%s: %q is already kept by %s", label, spec.name, first.label()))
		}
		for _, p := range spec.files() {
			if first, dup := paths[p]; dup {
				errs = append(errs, fmt.Errorf("%s: path %s is already used by %s", label, p, first))
			} else {
				paths[p] = label
			}
		}
		specs = append(specs, spec)
	}
	return specs, errs
}

func itemName(it *Item) string {
	switch it.Type {
	case TypeStatic:
		return it.Name
	case TypeACME:
		return it.Label
	}
	return it.Grant
}

// acmeIDs are the ids of the config's acme items, by index: the label,
// and "label#2", "label#3"... for further items of the same label.
func acmeIDs(items []Item) map[int]string {
	ids := map[int]string{}
	count := map[string]int{}
	for i, it := range items {
		if it.Type != TypeACME || it.Label == "" {
			continue
		}
		count[it.Label]++
		ids[i] = it.Label
		if n := count[it.Label]; n > 1 {
			ids[i] = fmt.Sprintf("%s#%d", it.Label, n)
		}
	}
	return ids
}

// reservedPaths are the files the keyclient itself keeps, which no item
// may write over.
func (c *Config) reservedPaths() map[string]string {
	m := map[string]string{}
	if c.StateDir != "" {
		dir := filepath.Clean(c.StateDir)
		for _, f := range []string{CGCFile, AnchorFile, AdmissionKeyFile, RenewalKeyFile, StatusFile, LockFile} {
			m[filepath.Join(dir, f)] = "the state directory"
		}
		for _, it := range c.Items {
			if it.Type == TypeStatic && it.Name != "" {
				m[staticCopyPath(dir, it.Name)] = "the state directory"
			}
		}
		for _, id := range acmeIDs(c.Items) {
			m[acmeCopyPath(dir, id)] = "the state directory"
		}
	}
	if c.TokenFile != "" {
		m[filepath.Clean(c.TokenFile)] = "token_file"
	}
	return m
}

// resolveItem checks one item on its own; it returns nil when the item's
// type is unknown, since then nothing else about it can be judged.
func resolveItem(i int, it *Item) (*itemSpec, []error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	spec := &itemSpec{index: i, typ: it.Type, name: itemName(it), owner: keyfile.NoOwner}
	switch it.Type {
	case TypeX509:
		resolveX509(it, spec, add)
	case TypeStatic:
		resolveStatic(it, spec, add)
	case TypeACME:
		resolveACME(it, spec, add)
	case "":
		add("type: required (x509, static or acme)")
		return nil, errs
	default:
		add("type %q: unknown item type (want x509, static or acme)", it.Type)
		return nil, errs
	}
	// The policy's rule for grant names and ACME labels; it also keeps
	// odd characters out of request paths and of the state directory.
	if spec.name != "" {
		if err := policy.ValidName(spec.name); err != nil {
			if spec.typ == TypeACME {
				add("not an acme label: %w", err)
			} else {
				add("not a grant name: %w", err)
			}
		}
	}
	for _, p := range spec.files() {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			add("path %s is a directory", p)
		}
	}
	var err error
	if spec.owner.UID, err = lookupID(it.Owner, userID); err != nil {
		add("owner %q: %w", it.Owner, err)
	}
	if spec.owner.GID, err = lookupID(it.Group, groupID); err != nil {
		add("group %q: %w", it.Group, err)
	}
	if spec.reloadTimeout, err = durationOr(it.ReloadTimeout, defaultReloadTimeout, time.Second, time.Hour); err != nil {
		add("reload_timeout: %w", err)
	}
	refresh := defaultRefresh
	if spec.typ == TypeACME {
		refresh = defaultACMERefresh
	}
	if spec.refresh, err = durationOr(it.Refresh, refresh, time.Minute, 30*24*time.Hour); err != nil {
		add("refresh: %w", err)
	}
	spec.reload = strings.TrimSpace(it.Reload)
	return spec, errs
}

func resolveX509(it *Item, spec *itemSpec, add func(string, ...any)) {
	if it.Grant == "" {
		add("grant: required")
	}
	if it.Name != "" || it.Path != "" || it.Label != "" {
		add("name and path are for static items, label for acme items; an x509 item has grant, key, cert, chain, fullchain and ca")
	}
	if it.Key == "" {
		add("key: a path is required")
	}
	if it.Cert == "" {
		add("cert: a path is required")
	}
	spec.key, spec.cert = clean(it.Key), clean(it.Cert)
	spec.chain, spec.fullchain, spec.ca = clean(it.Chain), clean(it.FullChain), clean(it.CA)
	kt, err := authority.ParseKeyType(it.KeyType)
	if err != nil {
		add("key_type: %w", err)
	}
	spec.keyType = kt
	for _, n := range it.DNS {
		if !dnsName.MatchString(n) {
			add("dns: %q is not a DNS name", n)
		}
		spec.dns = append(spec.dns, n)
	}
	for _, s := range it.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			add("ips: %q is not an IP address", s)
			continue
		}
		spec.ips = append(spec.ips, a.Unmap())
	}
	for _, s := range it.URIs {
		u, err := url.Parse(s)
		if err != nil || !u.IsAbs() || u.Host == "" && u.Opaque == "" && u.Path == "" {
			add("uris: %q is not an absolute URI", s)
			continue
		}
		spec.uris = append(spec.uris, u)
	}
	spec.mode = keyMode(it.Mode, add)
}

// keyMode is the mode of an item's private key: as configured, with no
// access for others, or defaultKeyMode.
func keyMode(s string, add func(string, ...any)) os.FileMode {
	if s == "" {
		return defaultKeyMode
	}
	m, err := parseMode(s)
	switch {
	case err != nil:
		add("mode: %w", err)
	case m&0o007 != 0:
		add("mode %04o: would let every user on the node use the private key (give others no access)", m)
	default:
		return m
	}
	return defaultKeyMode
}

func resolveStatic(it *Item, spec *itemSpec, add func(string, ...any)) {
	if it.Name == "" {
		add("name: required")
	}
	if it.Grant != "" || it.Key != "" || it.Cert != "" || it.Chain != "" || it.FullChain != "" || it.CA != "" ||
		it.KeyType != "" || len(it.DNS)+len(it.IPs)+len(it.URIs) > 0 || it.Label != "" {
		add("grant, key, cert, chain, fullchain, ca, key_type, dns, ips and uris are for x509 items, label for acme items; a static item has name and path")
	}
	if it.Path == "" {
		add("path: required")
	}
	spec.path = clean(it.Path)
	spec.mode = defaultStaticMode
	if it.Mode != "" {
		m, err := parseMode(it.Mode)
		if err != nil {
			add("mode: %w", err)
		} else {
			spec.mode = m
		}
	}
}

// ACME key type families, as the keyserver's per-key-type paths name them.
const (
	familyECDSA = "ecdsa"
	familyRSA   = "rsa"
)

func resolveACME(it *Item, spec *itemSpec, add func(string, ...any)) {
	if it.Label == "" {
		add("label: required (the policy's acme certificate)")
	}
	if it.Grant != "" || it.Name != "" || it.Path != "" || it.CA != "" || len(it.DNS)+len(it.IPs)+len(it.URIs) > 0 {
		add("grant, name, path, ca, dns, ips and uris are not for acme items; an acme item has label, key_type, key, cert, chain and fullchain (the CA's root is in every client already, and the policy decides the names)")
	}
	switch kt := strings.ToLower(it.KeyType); {
	case kt == "" || kt == familyECDSA || kt == familyRSA:
		spec.family = kt
	case strings.HasPrefix(kt, familyECDSA+"-") || strings.HasPrefix(kt, familyRSA+"-"):
		add("key_type %q: an acme item names the family, %s or %s; the label's key_types in the policy decide the curve or size", it.KeyType, familyECDSA, familyRSA)
	default:
		add("key_type %q: unknown (want %s or %s, or none for the label's first key type)", it.KeyType, familyECDSA, familyRSA)
	}
	if it.Key == "" {
		add("key: a path is required")
	}
	if it.Cert == "" && it.FullChain == "" {
		add("cert or fullchain: a path is required for at least one (most servers want fullchain)")
	}
	spec.key, spec.cert, spec.chain, spec.fullchain = clean(it.Key), clean(it.Cert), clean(it.Chain), clean(it.FullChain)
	spec.mode = keyMode(it.Mode, add)
}

func clean(p string) string {
	if p == "" {
		return ""
	}
	return filepath.Clean(p)
}

// parseMode reads an octal permission such as "0640" (or 640, 0o640).
// Special bits are refused, and so is a mode its owner cannot read, which
// is always a slip.
func parseMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O"), 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("%q is not an octal permission such as \"0640\"", s)
	}
	if v&0o400 == 0 {
		return 0, fmt.Errorf("%q: the owner could not read the file", s)
	}
	return os.FileMode(v), nil
}

// parseDuration reads a duration within [lo, hi].
func parseDuration(s string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as \"30s\" or \"1h\"", s)
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("%s is outside %v..%v", s, lo, hi)
	}
	return d, nil
}

func durationOr(s string, def, lo, hi time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	return parseDuration(s, lo, hi)
}

type idKind int

const (
	userID idKind = iota
	groupID
)

// lookupID resolves a user or group name, or takes a number as it is (a
// uid need not have a name, in containers it often has none); "" is -1,
// which keeps the keyclient's own.
func lookupID(s string, kind idKind) (int, error) {
	if s == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, errors.New("a negative id")
		}
		return n, nil
	}
	var id string
	if kind == userID {
		u, err := user.Lookup(s)
		if err != nil {
			return 0, unknownID("user", err)
		}
		id = u.Uid
	} else {
		g, err := user.LookupGroup(s)
		if err != nil {
			return 0, unknownID("group", err)
		}
		id = g.Gid
	}
	n, err := strconv.Atoi(id)
	if err != nil {
		return 0, fmt.Errorf("id %q is not numeric", id)
	}
	return n, nil
}

func unknownID(what string, err error) error {
	var ue user.UnknownUserError
	var ge user.UnknownGroupError
	if errors.As(err, &ue) || errors.As(err, &ge) {
		return fmt.Errorf("unknown %s", what)
	}
	return fmt.Errorf("looking up the %s: %w", what, err)
}
