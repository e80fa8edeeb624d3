package main

import (
	"fmt"
	"strings"

	"github.com/keysystem/keysystem/authority"
	"github.com/keysystem/keysystem/keyclient"
	"github.com/keysystem/keysystem/keyserver/api"
	"github.com/keysystem/keysystem/policy"
	"github.com/keysystem/keysystem/tokens"
)

func cmdInstaller(e *env, args []string) error {
	fs := e.flags("installer")
	node := fs.String("node", "", "node name (required)")
	stateDir := fs.String("state-dir", "/var/lib/keyclient", "the node's keyclient state directory")
	ttl := fs.Duration("ttl", 0, "lifetime of the fresh token (default: the keyserver's, 1h)")
	var ips, groups multi
	fs.Var(&ips, "ip", "source address the token may be redeemed from (repeatable)")
	fs.Var(&groups, "group", "policy group the node joins when admitted (repeatable)")
	token := fs.String("token", "", "use this already issued token instead of issuing a fresh one")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if *node == "" {
		return usageError{fmt.Errorf("installer: --node is required")}
	}
	if *token != "" {
		if _, err := tokens.Parse(*token); err != nil {
			return usageError{fmt.Errorf("installer: --token: %w", err)}
		}
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	root, err := c.cfg.ServerRoot()
	if err != nil {
		return usageError{err}
	}
	id := "given with --token"
	if *token == "" {
		resp, err := issueToken(e, c, *node, *ttl, ips, groups)
		if err != nil {
			return err
		}
		*token, id = resp.Token, resp.Info.ID+", valid until "+resp.Info.Expires.UTC().Format("2006-01-02 15:04:05Z")
	}
	cfg := keyclient.Config{
		Node:        *node,
		Servers:     c.cfg.Servers,
		TrustAnchor: authority.SPKIPin(root),
		Token:       *token,
		StateDir:    *stateDir,
	}
	if err := cfg.Check(); err != nil {
		return err
	}
	out, err := cfg.Marshal(fmt.Sprintf(`keyclient configuration for node %s, written by keyctl installer.
The token (%s) works once; keep this file as secret as the token until the node is admitted.
Run: keyclient once --config THIS_FILE   (then keyclient run --config THIS_FILE)`, *node, id))
	if err != nil {
		return err
	}
	out = append(out, itemHints(e, c, *node, groups, ips)...)
	_, err = e.stdout.Write(out)
	return err
}

// itemHints is a commented-out items: section listing what the running
// policy grants the node, as a start for whoever writes its items. The
// config works without it, so a keyserver that cannot explain (an older
// one) only costs the hint.
func itemHints(e *env, c *adminClient, node string, groups, ips []string) []byte {
	var list api.GrantList
	if err := c.do(e, "POST", api.PathPolicyExplain, api.ExplainRequest{Node: node, Groups: groups, IPs: ips}, &list); err != nil || len(list.Grants) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("\n# What the policy grants this node now (keyctl policy explain --node " + node + ").\n")
	b.WriteString("# Uncomment and adjust the items it should keep fresh (docs/keyclient.md):\n# items:\n")
	for _, g := range list.Grants {
		switch g.Type {
		case policy.TypeX509:
			fmt.Fprintf(&b, "#   - {type: x509, grant: %s, key: /etc/keysystem/%s.key, cert: /etc/keysystem/%s.crt, ca: /etc/keysystem/%s-ca.crt}\n", g.Name, g.Name, g.Name, g.Name)
		case policy.TypeStatic:
			fmt.Fprintf(&b, "#   - {type: static, name: %s, path: /etc/keysystem/%s.pem}\n", g.Name, g.Name)
		}
	}
	return []byte(b.String())
}
