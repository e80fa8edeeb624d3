package main

import (
	"fmt"
	"io"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

func cmdNodeList(e *env, args []string) error {
	var list api.NodeList
	return listCommand(e, "node list", args, api.PathNodes, &list, func(w io.Writer) {
		fmt.Fprintln(w, "NODE\tSTATE\tCGC SERIAL\tEXPIRES\tRENEWALS\tADMITTED")
		for _, n := range list.Nodes {
			state := "active"
			if n.Revoked {
				state = "revoked"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, state, n.Serial, n.NotAfter.Local().Format(time.RFC3339), n.Renewals, n.AdmittedAt.Local().Format(time.RFC3339))
		}
	})
}

func cmdNodeRevoke(e *env, args []string) error {
	fs := e.flags("node revoke")
	rest, err := parse(fs, args, 1, "one node name")
	if err != nil {
		return err
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	var n api.NodeInfo
	if err := c.do(e, "POST", api.PathNodes+"/"+rest[0]+api.PathRevoke, nil, &n); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "node %s revoked at %s; its CGC no longer works\n", n.Name, n.RevokedAt.Local().Format(time.RFC3339))
	return nil
}
