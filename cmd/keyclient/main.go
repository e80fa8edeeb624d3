// Command keyclient is the node daemon of the keysystem: it admits the
// node with its one-time token, keeps its certificate-granting certificate
// (CGC) fresh, and with it every item of its configuration (certificates
// for the policy's x509 grants, static files), running each item's reload
// command after a change.
//
//	keyclient once   --config FILE [--renew]  one pass over the CGC and every item, then exit (boot time, systemd oneshot)
//	keyclient run    --config FILE            keep everything fresh until SIGTERM
//	keyclient status --config FILE [--json]   what is on disk and how the last attempts went; calls no keyserver
//
// Exit codes: 0 success (for once: the CGC and every item are valid, and
// every reload command ran; for status: nothing expired, missing, invalid,
// failing or stale), 1 refused, failed or unhealthy (also: another
// keyclient uses the state directory), 2 bad usage or configuration.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keysystem/keysystem/keyclient"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A SIGHUP (a closed terminal, a habitual "reload") must not kill the
	// daemon. Caught rather than ignored, so that reload commands do not
	// inherit an ignored SIGHUP.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			fmt.Fprintln(os.Stderr, "keyclient: SIGHUP ignored: the configuration is read at start; restart to apply a change")
		}
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usageText = `Usage:
  keyclient once   --config FILE [--renew]  one pass: admit or renew the CGC as needed, then every item; exit
  keyclient run    --config FILE            keep the CGC and every item fresh until stopped
  keyclient status --config FILE [--json]   the CGC and every item as found on disk, with the last errors

once --renew renews the CGC and every certificate and fetches every static file now.
A failed reload command makes once fail; the reload stays owed to the next run or once.
Only one keyclient (run or once) may use a state_dir at a time; status reads it alongside.

status expects a running daemon (keyclient run): an item it has not checked for three
check intervals is shown as stale, and is unhealthy. once records its checks too, so
status after once alone is fresh only until then.

Exit codes: 0 success (once: the CGC and every item are valid and reloaded; status: all
healthy), 1 refused, failed or unhealthy, 2 bad usage or configuration.
`

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "keyclient:", strings.TrimPrefix(err.Error(), "keyclient: "))
	var ue usageError
	var ce *keyclient.ConfigError
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return 2
	}
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
	if cmd != "once" && cmd != "run" && cmd != "status" {
		fmt.Fprint(stderr, usageText)
		return usageError{fmt.Errorf("unknown command %q", cmd)}
	}
	fs := flag.NewFlagSet("keyclient "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "keyclient configuration file (from keyctl installer)")
	var renew, asJSON *bool
	switch cmd {
	case "once":
		renew = fs.Bool("renew", false, "renew the CGC and every certificate, and fetch every static file, even if not yet due")
	case "status":
		asJSON = fs.Bool("json", false, "print JSON instead of a table")
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
	cfg, err := keyclient.LoadConfig(*config)
	if err != nil {
		return err
	}
	if cmd == "status" {
		return status(stdout, stderr, cfg, *asJSON, time.Now())
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	c, err := keyclient.New(cfg, keyclient.Options{Logger: logger})
	if err != nil {
		return err
	}
	defer c.Close()
	if cmd == "run" {
		logger.Info("keyclient running", "node", cfg.Node, "servers", cfg.Servers, "items", len(cfg.Items))
		return c.Run(ctx)
	}
	rep, err := c.Once(ctx, *renew)
	describe(stdout, cfg.Node, rep)
	return err
}

func describe(w io.Writer, node string, r *keyclient.Report) {
	switch r.Action {
	case keyclient.ActionAdmitted:
		fmt.Fprintf(w, "node %s admitted: new certificate-granting certificate\n", node)
	case keyclient.ActionRenewed:
		fmt.Fprintf(w, "node %s renewed its certificate-granting certificate (new key)\n  previous serial: %x\n", node, r.Previous.SerialNumber)
	case keyclient.ActionFailed:
		fmt.Fprintf(w, "node %s: keeping the certificate-granting certificate failed\n", node)
	default:
		fmt.Fprintf(w, "node %s holds a valid certificate-granting certificate; nothing to do\n", node)
	}
	if c := r.Cert; c != nil {
		var uris []string
		for _, u := range c.URIs {
			uris = append(uris, u.String())
		}
		fmt.Fprintf(w, "  subject:         %s (%s)\n", c.Subject, strings.Join(uris, ", "))
		fmt.Fprintf(w, "  serial:          %x\n", c.SerialNumber)
		fmt.Fprintf(w, "  valid:           %s to %s\n", ts(c.NotBefore), ts(c.NotAfter))
		fmt.Fprintf(w, "  issuer chain:    %s\n", chainText(c, r.Chain))
		fmt.Fprintf(w, "  next renewal:    %s\n", ts(r.RenewAt))
	}
	for _, it := range r.Items {
		fmt.Fprintln(w, itemLine(it))
	}
}

// itemLine is the one line once prints for an item.
func itemLine(r keyclient.ItemResult) string {
	head := fmt.Sprintf("%s %s: ", r.Type, r.Name)
	if r.Err != nil {
		return head + "FAILED: " + oneLine(r.Err.Error())
	}
	var b strings.Builder
	b.WriteString(head)
	if r.Action == keyclient.ActionNone {
		b.WriteString("valid, nothing to do")
	} else {
		b.WriteString(string(r.Action))
	}
	if r.Type == keyclient.TypeACME {
		if r.Placeholder {
			b.WriteString("; the keyserver's placeholder (the CA's certificate is not ready yet)")
		} else if r.Version > 0 {
			fmt.Fprintf(&b, "; version %d", r.Version)
		}
	}
	if !r.NotAfter.IsZero() {
		fmt.Fprintf(&b, "; valid until %s", ts(r.NotAfter))
	}
	if !r.RenewAt.IsZero() {
		what := "next renewal"
		if r.Type == keyclient.TypeStatic || r.Type == keyclient.TypeACME {
			what = "next refresh"
		}
		fmt.Fprintf(&b, "; %s %s", what, ts(r.RenewAt))
	}
	if r.ReloadErr != nil {
		fmt.Fprintf(&b, "; RELOAD FAILED (owed to the next run or once): %s", oneLine(r.ReloadErr.Error()))
	}
	return b.String()
}

// errUnhealthy is status's exit 1.
var errUnhealthy = errors.New("something needs attention")

// status prints the CGC and every item, as found on disk. Warnings (an
// unreadable status file) follow the table, or go to stderr with --json;
// they do not change the exit code.
func status(w, stderr io.Writer, cfg *keyclient.Config, asJSON bool, now time.Time) error {
	lines, warnings, err := keyclient.Inspect(cfg, now)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(lines); err != nil {
			return err
		}
		for _, m := range warnings {
			fmt.Fprintln(stderr, "keyclient: warning:", oneLine(m))
		}
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ITEM\tTYPE\tSTATE\tEXPIRES\tNEXT RENEWAL\tLAST ERROR")
		for _, l := range lines {
			errText := oneLine(l.LastError)
			if errText == "" {
				errText = "-"
			}
			state := l.State
			switch {
			case l.Type == keyclient.TypeACME && l.Placeholder:
				state += " (placeholder)"
			case l.Type == keyclient.TypeACME && l.Version > 0:
				state += fmt.Sprintf(" (v%d)", l.Version)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Item, l.Type, state, tsOr(l.Expires), tsOr(l.NextRenewal), errText)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, m := range warnings {
			fmt.Fprintln(w, "warning:", oneLine(m))
		}
	}
	var bad []string
	for _, l := range lines {
		if !l.Healthy() {
			bad = append(bad, l.Item)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", errUnhealthy, strings.Join(bad, ", "))
	}
	return nil
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func tsOr(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return ts(t)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func chainText(leaf *x509.Certificate, chain []*x509.Certificate) string {
	parts := []string{leaf.Issuer.String()}
	for _, c := range chain {
		parts = append(parts, c.Issuer.String())
	}
	return strings.Join(parts, " <- ")
}
