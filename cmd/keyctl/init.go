package main

import (
	"fmt"
	"path/filepath"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyserver"
)

func cmdInit(e *env, args []string) error {
	fs := e.flags("init")
	dir := fs.String("dir", "", "directory to create (required)")
	listen := fs.String("listen", "127.0.0.1:8443", "address the keyserver will listen on")
	var names multi
	fs.Var(&names, "name", "DNS name or IP address nodes use to reach the keyserver (repeatable)")
	keyType := fs.String("key-type", "ecdsa-p256", "authority key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072 or rsa-4096")
	inter := fs.Bool("intermediate", false, "sign with intermediates, so each root key can be moved offline")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{fmt.Errorf("init: --dir is required")}
	}
	kt, err := authority.ParseKeyType(*keyType)
	if err != nil {
		return usageError{err}
	}
	if err := keyserver.Init(keyserver.InitOptions{Dir: *dir, Listen: *listen, Names: names, KeyType: kt, Intermediate: *inter}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, `Wrote a keyserver directory in %s:
  %-20s keyserver configuration
  %-20s example policy: which nodes may get what (edit it for your cluster)
  %-20s keyctl configuration and admin credential (keep it secret)
  %-20s the keygranting, server and admin authorities, and %s (used by the policy)

Start it:   keyserver --config %s
Then:       export KEYCTL_CONFIG=%s
            keyctl token issue --node NAME
Policy:     edit %s, then keyctl policy reload
            (keyctl authority create NAME --dir %s adds an authority)
`, *dir, keyserver.ConfigFile, keyserver.PolicyFile, keyserver.AdminConfigFile, keyserver.AuthoritiesDir+"/", keyserver.ExampleAuthority,
		filepath.Join(*dir, keyserver.ConfigFile), filepath.Join(*dir, keyserver.AdminConfigFile),
		filepath.Join(*dir, keyserver.PolicyFile), *dir)
	return nil
}
