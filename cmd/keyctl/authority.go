package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
)

// The authority commands work locally, on the files of a keyserver
// directory that keyctl init wrote; they never call a keyserver. A running
// keyserver picks a new authority up when the policy that names it is
// reloaded.

// authoritiesDir checks that dir is a keyserver directory and returns its
// authorities directory, DIR/authorities.
func authoritiesDir(cmd, dir string) (string, error) {
	if dir == "" {
		return "", usageError{fmt.Errorf("%s: --dir is required", cmd)}
	}
	adir := filepath.Join(dir, keyserver.AuthoritiesDir)
	_, cerr := os.Stat(filepath.Join(dir, keyserver.ConfigFile))
	fi, aerr := os.Stat(adir)
	if cerr != nil || aerr != nil || !fi.IsDir() {
		return "", usageError{fmt.Errorf("%s: %s is not a keyserver directory (want %s and %s/ in it, as keyctl init writes)", cmd, dir, keyserver.ConfigFile, keyserver.AuthoritiesDir)}
	}
	return adir, nil
}

func cmdAuthorityCreate(e *env, args []string) error {
	fs := e.flags("authority create")
	dir := fs.String("dir", "", "keyserver directory that keyctl init wrote (required)")
	parent := fs.String("parent", "", "make an intermediate under this existing shared root authority")
	shared := fs.Bool("shared-root", false, "make a root that other authorities go under (--parent); it signs with its root key")
	keyType := fs.String("key-type", "ecdsa-p256", "key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072 or rsa-4096")
	inter := fs.Bool("intermediate", false, "sign with an intermediate under a root of its own, so the root key can be moved offline")
	rest, err := parse(fs, args, 1, "one authority name")
	if err != nil {
		return err
	}
	name := rest[0]
	if err := authority.CheckName(name); err != nil {
		return usageError{err}
	}
	switch {
	case *shared && *parent != "":
		return usageError{errors.New("authority create: --shared-root and --parent exclude each other")}
	case *shared && *inter:
		return usageError{errors.New("authority create: a shared root signs with its root key: --shared-root and --intermediate exclude each other")}
	}
	kt, err := authority.ParseKeyType(*keyType)
	if err != nil {
		return usageError{err}
	}
	adir, err := authoritiesDir("authority create", *dir)
	if err != nil {
		return err
	}
	target := filepath.Join(adir, name)
	if _, err := os.Lstat(target); err == nil {
		return fmt.Errorf("authority create: %s already exists; refusing to overwrite it", target)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	cfg := authority.Config{Name: "keysystem " + name, KeyType: kt, Intermediate: *inter, Shared: *shared}
	var a *authority.Authority
	kind := "a root"
	switch {
	case *parent != "":
		p, err := loadParent(adir, *parent)
		if err != nil {
			return err
		}
		if a, err = authority.GenerateUnder(p, cfg); errors.Is(err, authority.ErrNotParent) {
			return fmt.Errorf("authority create: %s cannot be a parent: %w (make parents with keyctl authority create NAME --shared-root)", *parent, err)
		} else if err != nil {
			return err
		}
		kind = "an intermediate under " + *parent
	default:
		if a, err = authority.Generate(cfg); err != nil {
			return err
		}
		if *shared {
			kind = "a shared root"
		} else if *inter {
			kind = "a root with an intermediate"
		}
	}
	if err := a.Save(target); err != nil {
		return err
	}

	issuer := a.Issuer()
	fmt.Fprintf(e.stdout, "Created authority %s in %s: %s.\n  key type  %s\n  expires   %s\n  root pin  %s\n",
		name, target, kind, authority.KeyTypeOf(issuer.PublicKey), issuer.NotAfter.Local().Format(time.RFC3339), authority.SPKIPin(a.Root()))
	switch {
	case *parent != "":
		fmt.Fprintf(e.stdout, "  Its root is %s's; the root key stays there.\n", *parent)
	case *inter:
		fmt.Fprintf(e.stdout, "  The intermediate signs; %s may be moved offline.\n", filepath.Join(target, authority.RootKeyFile))
	case *shared:
		fmt.Fprintf(e.stdout, "  Put authorities under it: keyctl authority create NAME --parent %s --dir %s\n", name, *dir)
	}
	fmt.Fprintf(e.stdout, `
Next: declare it in the policy (%s), under authorities:
    %s: {}
then run: keyctl policy reload
`, keyserver.PolicyFile, name)
	return nil
}

// loadParent loads the authority that --parent names, with its root key.
func loadParent(adir, name string) (*authority.Authority, error) {
	if authority.Builtin(name) {
		return nil, usageError{fmt.Errorf("authority create: --parent %s: a built-in authority signs for the keysystem alone and cannot be a parent", name)}
	}
	if err := authority.CheckName(name); err != nil {
		return nil, usageError{fmt.Errorf("authority create: --parent: %w", err)}
	}
	dir := filepath.Join(adir, name)
	if _, err := os.Stat(filepath.Join(dir, authority.RootCertFile)); err != nil {
		return nil, usageError{fmt.Errorf("authority create: --parent %s: no such authority in %s", name, adir)}
	}
	return authority.Load(dir, name, authority.Options{})
}

// authorityInfo is what authority list shows of one authority directory.
type authorityInfo struct {
	name         string
	root, issuer *x509.Certificate
	intermediate bool
	rootKey      bool // root.key is in the directory
}

func readAuthority(adir, name string) (*authorityInfo, error) {
	dir := filepath.Join(adir, name)
	root, issuer, err := authority.ReadCertificates(dir)
	if err != nil {
		return nil, err
	}
	ai := &authorityInfo{name: name, root: root, issuer: issuer, intermediate: issuer != root}
	_, err = os.Stat(filepath.Join(dir, authority.RootKeyFile))
	ai.rootKey = err == nil
	return ai, nil
}

// kind says how an authority signs: "root" (with its root key), "shared
// root" (with its root key, and may have intermediates of other
// authorities under it), "intermediate under NAME" (under another
// authority's root), "intermediate under own root".
func (ai *authorityInfo) kind(all []*authorityInfo) string {
	if !ai.intermediate {
		k := "root"
		if ai.root.MaxPathLen != 0 {
			k = "shared root"
		}
		if !ai.rootKey {
			k += " (no root key)"
		}
		return k
	}
	for _, o := range all {
		if o != ai && !o.intermediate && o.root.Equal(ai.root) {
			return "intermediate under " + o.name
		}
	}
	if ai.rootKey {
		return "intermediate under own root"
	}
	return "intermediate under " + strconv.Quote(ai.root.Subject.CommonName)
}

func cmdAuthorityList(e *env, args []string) error {
	fs := e.flags("authority list")
	dir := fs.String("dir", "", "keyserver directory that keyctl init wrote (required)")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	adir, err := authoritiesDir("authority list", *dir)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(adir)
	if err != nil {
		return err
	}
	var (
		all  []*authorityInfo
		errs []error
	)
	for _, de := range entries {
		if !de.IsDir() {
			continue
		}
		ai, err := readAuthority(adir, de.Name())
		if err != nil {
			errs = append(errs, fmt.Errorf("authority list: %s: %w", de.Name(), err))
			continue
		}
		all = append(all, ai)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tKEY\tEXPIRES\tROOT PIN")
	for _, ai := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ai.name, ai.kind(all), authority.KeyTypeOf(ai.issuer.PublicKey),
			ai.issuer.NotAfter.Local().Format(time.RFC3339), authority.SPKIPin(ai.root))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return errors.Join(errs...)
}
