package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/api"
)

func cmdACMEStatus(e *env, args []string) error {
	fs := e.flags("acme status")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := positional(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{errors.New("acme status: want at most one label")}
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		var s api.ACMEStatus
		if err := c.do(e, "GET", api.PathACME+"/"+pos[0], nil, &s); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e, &s)
		}
		return printACMELabel(e.stdout, &s)
	}
	var list api.ACMEStatusList
	if err := c.do(e, "GET", api.PathACME, nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e, &list)
	}
	if len(list.Labels) == 0 {
		fmt.Fprintln(e.stdout, "no acme certificates in the policy")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LABEL\tSERVING\tEXPIRES\tRENEW AT\tNEXT ATTEMPT\tORDERS/24H\tLAST ERROR")
	for _, s := range list.Labels {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", s.Label, serving(&s), expires(&s), renewAt(&s),
			stamp(s.NextAttempt), s.OrdersToday, s.MaxOrdersPerDay, oneLine(s.LastError, 60))
	}
	return tw.Flush()
}

func serving(s *api.ACMEStatus) string {
	switch {
	case s.Current == nil:
		return "placeholder"
	case s.Placeholder:
		return fmt.Sprintf("v%d (+placeholder)", s.Current.Number)
	}
	return fmt.Sprintf("v%d", s.Current.Number)
}

func expires(s *api.ACMEStatus) string {
	if s.Current == nil {
		return "-"
	}
	return stamp(s.Current.NotAfter)
}

func renewAt(s *api.ACMEStatus) string {
	if s.RenewBy == "" {
		return "next version waiting"
	}
	return stamp(s.RenewAt) + " (" + s.RenewBy + ")"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}

func printACMELabel(w io.Writer, s *api.ACMEStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "label:\t%s (account %s, %s, %s)\n", s.Label, s.Account, s.Challenge, strings.Join(s.KeyTypes, " and "))
	fmt.Fprintf(tw, "names:\t%s (cn %s)\n", strings.Join(s.Names, ", "), s.CommonName)
	for _, v := range []struct {
		name string
		v    *api.ACMEVersion
	}{{"serving", s.Current}, {"next", s.Next}} {
		if v.v == nil {
			continue
		}
		fmt.Fprintf(tw, "%s:\tversion %d, valid %s to %s", v.name, v.v.Number, stamp(v.v.NotBefore), stamp(v.v.NotAfter))
		if v.name == "next" {
			fmt.Fprintf(tw, ", handed out from %s", stamp(v.v.ReadyAt))
		}
		fmt.Fprintln(tw)
	}
	if s.Placeholder {
		fmt.Fprintf(tw, "placeholder:\tserved (self-signed) until the CA's certificate is ready\n")
	}
	fmt.Fprintf(tw, "renew at:\t%s\n", renewAt(s))
	if !s.ARICheckedAt.IsZero() {
		fmt.Fprintf(tw, "renewal info:\tasked %s\n", stamp(s.ARICheckedAt))
	}
	fmt.Fprintf(tw, "orders:\t%d in the last 24 hours (at most %d)\n", s.OrdersToday, s.MaxOrdersPerDay)
	fmt.Fprintf(tw, "last attempt:\t%s; last success %s\n", stamp(s.LastAttempt), stamp(s.LastSuccess))
	if s.Ordering != "" {
		fmt.Fprintf(tw, "ordering now:\tkeyserver %s\n", s.Ordering)
	}
	if s.Forced {
		fmt.Fprintf(tw, "forced:\ta renewal was asked for\n")
	}
	if s.LastError != "" {
		fmt.Fprintf(tw, "last error:\t%s (%d failures in a row)\n", oneLine(s.LastError, 400), s.Failures)
	}
	if !s.NextAttempt.IsZero() {
		fmt.Fprintf(tw, "next attempt:\tnot before %s\n", stamp(s.NextAttempt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Nodes) == 0 {
		fmt.Fprintln(w, "\nno node has fetched its key yet")
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tVERSION\tKEY TYPE\tFETCHED")
	for _, n := range s.Nodes {
		v := fmt.Sprintf("v%d", n.Version)
		if n.Stale {
			v += " (old)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, v, n.KeyType, stamp(n.At))
	}
	return tw.Flush()
}

func cmdACMERenew(e *env, args []string) error {
	fs := e.flags("acme renew")
	wait := fs.Duration("wait", 10*time.Minute, "wait this long for the new certificate (0: ask and return)")
	pos, err := parse(fs, args, 1, "one label")
	if err != nil {
		return err
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	var before api.ACMEStatus
	if err := c.do(e, "POST", api.PathACME+"/"+pos[0]+api.PathACMERenew, nil, &before); err != nil {
		return err
	}
	if *wait == 0 {
		fmt.Fprintf(e.stdout, "renewal of %s asked for; see keyctl acme status %s\n", pos[0], pos[0])
		return nil
	}
	deadline := time.Now().Add(*wait)
	for {
		var s api.ACMEStatus
		if err := c.do(e, "GET", api.PathACME+"/"+pos[0], nil, &s); err != nil {
			return err
		}
		attempted := !s.LastAttempt.Equal(before.LastAttempt) && s.Ordering == ""
		switch {
		case !s.Forced && s.Next != nil:
			fmt.Fprintf(e.stdout, "%s: version %d obtained, valid to %s; handed out from %s\n", s.Label, s.Next.Number, stamp(s.Next.NotAfter), stamp(s.Next.ReadyAt))
			return nil
		case !s.Forced && s.Current != nil:
			fmt.Fprintf(e.stdout, "%s: version %d obtained, valid to %s, handed out now\n", s.Label, s.Current.Number, stamp(s.Current.NotAfter))
			return nil
		case attempted || s.LastError != before.LastError && s.LastError != "":
			return fmt.Errorf("acme renew %s: %s (next attempt %s)", s.Label, s.LastError, stamp(s.NextAttempt))
		case time.Now().After(deadline):
			return fmt.Errorf("acme renew %s: not done after %s; see keyctl acme status %s", s.Label, *wait, s.Label)
		}
		select {
		case <-e.ctx.Done():
			return e.ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// cmdACMEKEK writes the key-encryption key of ACME private keys into a
// keyserver directory made before keyctl init wrote one.
func cmdACMEKEK(e *env, args []string) error {
	fset := e.flags("acme kek")
	dir := fset.String("dir", "", "the keyserver directory (required)")
	if _, err := parse(fset, args, 0, "no arguments"); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("acme kek: --dir is required")}
	}
	err := acme.CreateKEK(*dir, nil)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("acme kek: %s already has %s; it is left alone (a new key could not open what the old one sealed)", *dir, acme.KEKFile)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s/%s (mode 0600): copy it to every keyserver sharing the store\n", *dir, acme.KEKFile)
	return nil
}
