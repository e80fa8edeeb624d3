// Command keyclient is the node daemon of the keysystem.
//
//	keyclient once --config FILE [--renew]   one pass, then exit (boot time, systemd oneshot)
//	keyclient run  --config FILE             keep everything fresh until SIGTERM
//
// Exit codes: 0 success (for once: the node holds a valid CGC), 1 refused
// or failed, 2 bad usage or configuration.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keysystem/keysystem/keyclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usageText = `Usage:
  keyclient once --config FILE [--renew]   one pass: admit or renew as needed, then exit
  keyclient run  --config FILE             keep the node's credentials fresh until stopped

Exit codes: 0 success, 1 refused or failed, 2 bad usage or configuration.
`

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	var ue usageError
	var ce *keyclient.ConfigError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue), errors.As(err, &ce):
		fmt.Fprintln(stderr, "keyclient:", strings.TrimPrefix(err.Error(), "keyclient: "))
		return 2
	}
	fmt.Fprintln(stderr, "keyclient:", strings.TrimPrefix(err.Error(), "keyclient: "))
	return 1
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return usageError{errors.New("a command is required")}
	}
	cmd := args[0]
	if cmd == "help" || cmd == "-h" || cmd == "--help" {
		fmt.Fprint(stdout, usageText)
		return nil
	}
	if cmd != "once" && cmd != "run" {
		fmt.Fprint(stderr, usageText)
		return usageError{fmt.Errorf("unknown command %q", cmd)}
	}
	fs := flag.NewFlagSet("keyclient "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "keyclient configuration file (from keyctl installer)")
	var renew *bool
	if cmd == "once" {
		renew = fs.Bool("renew", false, "renew the CGC now even if it is not yet due")
	}
	verbose := fs.Bool("v", false, "verbose logging")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if *config == "" || fs.NArg() > 0 {
		fs.Usage()
		return usageError{errors.New("--config FILE is required, and nothing else")}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := keyclient.LoadConfig(*config)
	if err != nil {
		return err
	}
	c, err := keyclient.New(cfg, keyclient.Options{Logger: logger})
	if err != nil {
		return err
	}
	if cmd == "run" {
		logger.Info("keyclient running", "node", cfg.Node, "servers", cfg.Servers)
		return c.Run(ctx)
	}
	rep, err := c.Once(ctx, *renew)
	if err != nil {
		return err
	}
	describe(stdout, cfg.Node, rep)
	return nil
}

func describe(w io.Writer, node string, r *keyclient.Report) {
	switch r.Action {
	case keyclient.ActionAdmitted:
		fmt.Fprintf(w, "node %s admitted: new certificate-granting certificate\n", node)
	case keyclient.ActionRenewed:
		fmt.Fprintf(w, "node %s renewed its certificate-granting certificate (new key)\n  previous serial: %x\n", node, r.Previous.SerialNumber)
	default:
		fmt.Fprintf(w, "node %s holds a valid certificate-granting certificate; nothing to do\n", node)
	}
	c := r.Cert
	var uris []string
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	fmt.Fprintf(w, "  subject:         %s (%s)\n", c.Subject, strings.Join(uris, ", "))
	fmt.Fprintf(w, "  serial:          %x\n", c.SerialNumber)
	fmt.Fprintf(w, "  valid:           %s to %s\n", ts(c.NotBefore), ts(c.NotAfter))
	fmt.Fprintf(w, "  issuer chain:    %s\n", chainText(c, r.Chain))
	fmt.Fprintf(w, "  next renewal:    %s\n", ts(r.RenewAt))
}

func chainText(leaf *x509.Certificate, chain []*x509.Certificate) string {
	parts := []string{leaf.Issuer.String()}
	for _, c := range chain {
		parts = append(parts, c.Issuer.String())
	}
	return strings.Join(parts, " <- ")
}
