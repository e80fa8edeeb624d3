// Command keyctl is the keysystem's administration tool.
//
//	keyctl init --dir DIR --listen ADDR [--name NAME ...]
//	keyctl authority create NAME --dir DIR [--parent ROOTNAME | --shared-root] [--key-type T] [--intermediate]
//	keyctl authority list --dir DIR
//	keyctl policy check FILE [--authorities DIR]
//	keyctl [--config FILE] policy explain --node NAME [--grant G] [--group G ...] [--ip ADDR ...] [FILE]
//	keyctl [--config FILE] policy reload | policy status
//	keyctl [--config FILE] token issue --node NAME [--ttl D] [--ip ADDR ...] [--group G ...]
//	keyctl [--config FILE] token list | token revoke ID
//	keyctl [--config FILE] node list | node revoke NAME
//	keyctl [--config FILE] installer --node NAME [--state-dir DIR]
//	keyctl [--config FILE] acme status [LABEL] | acme renew LABEL [--wait D]
//	keyctl acme kek --dir DIR
//	keyctl [--config FILE] bench --scenario admit|renew|sign|storm [--nodes N] [--concurrency C] [--count N | --duration D] [--warmup D] [--grant G] [--pid PID] [--json]
//
// init and authority work on the files of a keyserver directory and need
// no running keyserver.
// KEYCTL_CONFIG may stand in for --config. Exit codes: 0 success, 1 refused
// or failed, 2 bad usage or configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is bad usage or configuration: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// env is what every command gets.
type env struct {
	ctx            context.Context
	stdout, stderr io.Writer
	config         string // --config or KEYCTL_CONFIG
}

type command struct {
	name, args, help string
	run              func(e *env, args []string) error
}

func commands() []command {
	return []command{
		{"init", "--dir DIR --listen ADDR [--name NAME ...]", "write a new keyserver directory", cmdInit},
		{"authority create", "NAME --dir DIR [--parent ROOTNAME | --shared-root] [--key-type T] [--intermediate]", "create a named authority in a keyserver directory", cmdAuthorityCreate},
		{"authority list", "--dir DIR", "list a keyserver directory's authorities", cmdAuthorityList},
		{"policy check", "FILE [--authorities DIR]", "validate a policy file offline; every problem as file:line: message", cmdPolicyCheck},
		{"policy explain", "--node NAME [--grant G] [--group G ...] [--ip ADDR ...] [FILE]", "show the grants a node gets and the exact names each carries", cmdPolicyExplain},
		{"policy reload", "", "make the keyserver reload its policy (a bad file is refused, the old one stays)", cmdPolicyReload},
		{"policy status", "[--json]", "show the policy the keyserver is serving", cmdPolicyStatus},
		{"token issue", "--node NAME [--ttl D] [--ip ADDR ...] [--group G ...]", "issue a one-time admission token (printed once, alone on stdout)", cmdTokenIssue},
		{"token list", "[--json]", "list tokens (never their secrets)", cmdTokenList},
		{"token revoke", "ID", "revoke a pending token", cmdTokenRevoke},
		{"node list", "[--json]", "list admitted nodes", cmdNodeList},
		{"node revoke", "NAME", "revoke a node: its CGC stops working at once", cmdNodeRevoke},
		{"installer", "--node NAME [--state-dir DIR] [--ttl D] [--ip ADDR ...] [--group G ...]", "print a keyclient config for a new node, with a fresh token", cmdInstaller},
		{"acme status", "[LABEL] [--json]", "show the ACME certificates: versions, renewal, errors, and which nodes hold which version", cmdACMEStatus},
		{"acme renew", "LABEL [--wait D]", "obtain a new version of an ACME certificate now (the daily cap still holds)", cmdACMERenew},
		{"acme kek", "--dir DIR", "write the key-encryption key for ACME private keys into an older keyserver directory", cmdACMEKEK},
		{"bench", "--scenario admit|renew|sign|storm [--nodes N] [--concurrency C] [--count N | --duration D] [--warmup D] [--grant G] [--pid PID] [--json]", "play a fleet of nodes against the keyserver and measure it (the nodes stay in its inventory)", cmdBench},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: keyctl [--config FILE] COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-16s %s\n  %-16s   %s\n", c.name, c.args, "", c.help)
	}
	fmt.Fprintf(w, `
--config (or KEYCTL_CONFIG) names the keyctl.yaml that keyctl init wrote.
Run "keyctl COMMAND --help" for a command's flags.
Exit codes: 0 success, 1 refused or failed, 2 bad usage or configuration.
`)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr, config: os.Getenv("KEYCTL_CONFIG")}
	fs := flag.NewFlagSet("keyctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&e.config, "config", e.config, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return 0
		}
		usage(stderr)
		return 2
	}
	args = fs.Args()
	for _, c := range commands() {
		n := len(strings.Fields(c.name))
		if len(args) < n || strings.Join(args[:n], " ") != c.name {
			continue
		}
		err := c.run(e, args[n:])
		var ue usageError
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintln(stderr, "keyctl:", err)
			return 2
		}
		fmt.Fprintln(stderr, "keyctl:", err)
		return 1
	}
	switch {
	case len(args) > 0 && args[0] == "help":
		usage(stdout)
		return 0
	case len(args) == 0:
		fmt.Fprintf(stderr, "keyctl: a command is required\n\n")
	default:
		fmt.Fprintf(stderr, "keyctl: unknown command %q\n\n", strings.Join(args, " "))
	}
	usage(stderr)
	return 2
}

// flags makes a command's flag set; --config is accepted there too.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("keyctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&e.config, "config", e.config, "keyctl configuration file (default $KEYCTL_CONFIG)")
	return fs
}

// parse parses a command's flags and wants exactly nargs positional
// arguments, which may come before, between or after the flags
// (keyctl policy check FILE --authorities DIR).
func parse(fs *flag.FlagSet, args []string, nargs int, what string) ([]string, error) {
	pos, err := positional(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != nargs {
		return nil, usageError{fmt.Errorf("%s: want %s", strings.TrimPrefix(fs.Name(), "keyctl "), what)}
	}
	return pos, nil
}

// positional parses flags wherever they are and returns the other
// arguments; after "--" everything is positional.
func positional(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		if len(args) > fs.NArg() && args[len(args)-fs.NArg()-1] == "--" {
			return append(pos, fs.Args()...), nil
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return fmt.Sprint([]string(*m)) }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
