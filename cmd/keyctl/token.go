package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

// issueToken asks the keyserver for a token.
func issueToken(e *env, c *adminClient, node string, ttl time.Duration, ips, groups []string) (*api.TokenResponse, error) {
	var resp api.TokenResponse
	err := c.do(e, "POST", api.PathTokens, api.TokenRequest{Node: node, TTL: api.Duration(ttl), IPs: ips, Groups: groups}, &resp)
	return &resp, err
}

func cmdTokenIssue(e *env, args []string) error {
	fs := e.flags("token issue")
	node := fs.String("node", "", "node name the token admits (required)")
	ttl := fs.Duration("ttl", 0, "token lifetime (default: the keyserver's, 1h)")
	var ips, groups multi
	fs.Var(&ips, "ip", "source address the token may be redeemed from (repeatable); the policy sees it as {{.IPs}}")
	fs.Var(&groups, "group", "policy group the node joins when admitted (repeatable)")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if *node == "" {
		return usageError{fmt.Errorf("token issue: --node is required")}
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	resp, err := issueToken(e, c, *node, *ttl, ips, groups)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, resp.Token)
	fmt.Fprintf(e.stderr, "token %s for node %s, valid until %s; it is shown only this once\n",
		resp.Info.ID, resp.Info.Node, resp.Info.Expires.Local().Format(time.RFC3339))
	return nil
}

func cmdTokenList(e *env, args []string) error {
	var list api.TokenList
	return listCommand(e, "token list", args, api.PathTokens, &list, func(w io.Writer) {
		fmt.Fprintln(w, "ID\tNODE\tSTATE\tEXPIRES\tGROUPS\tCREATOR")
		for _, t := range list.Tokens {
			groups := strings.Join(t.Groups, ",")
			if groups == "" {
				groups = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Node, t.State, t.Expires.Local().Format(time.RFC3339), groups, t.Creator)
		}
	})
}

// listCommand runs a read-only admin command: it fetches path into out and
// prints it as JSON (--json) or as the table that table writes.
func listCommand(e *env, name string, args []string, path string, out any, table func(w io.Writer)) error {
	fs := e.flags(name)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	if err := c.do(e, "GET", path, nil, out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, out)
	}
	// Buffered: a fleet's listing is 100,000 lines, which tabwriter
	// would otherwise hand to the terminal a cell at a time.
	bw := bufio.NewWriterSize(e.stdout, 64<<10)
	tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
	table(tw)
	if err := tw.Flush(); err != nil {
		return err
	}
	return bw.Flush()
}

func cmdTokenRevoke(e *env, args []string) error {
	fs := e.flags("token revoke")
	rest, err := parse(fs, args, 1, "one token ID")
	if err != nil {
		return err
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	var info api.TokenInfo
	if err := c.do(e, "POST", api.PathTokens+"/"+rest[0]+api.PathRevoke, nil, &info); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "token %s for node %s: %s\n", info.ID, info.Node, info.State)
	return nil
}

func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
