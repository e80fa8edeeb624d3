// Package daemon is the keyserver command: its flags, its configuration
// file, its listeners (HTTPS, and for ACME the http-01 and DNS ones),
// signals, and the development mode. cmd/keyserver is a thin main over
// it, and so is a keyserver built with more of lego's DNS providers
// linked in (cmd/keyserver/alldns).
//
//	keyserver --config DIR/keyserver.yaml   (SIGHUP reloads the policy)
//	keyserver --dev [--listen 127.0.0.1:8443] [--dir ./keysystem-dev]
//
// Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when serving
// failed, 2 for bad usage or configuration.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/keysystem/keysystem/admission"
	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/store"
	"github.com/keysystem/keysystem/policy"
)

// Main runs the keyserver command until ctx ends (SIGTERM or SIGINT) and
// returns its exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	tuneGC(os.Getenv)
	return run(ctx, args, stdout, stderr)
}

type usageError struct{ error }

// Garbage collector defaults for a keyserver. Its live heap is small and
// bounded (lists are streamed, connections are capped by max_conns), but
// every request allocates a whole TLS handshake: collecting at 5× the live
// heap rather than Go's 2× costs about 13 % less CPU per renewal
// (docs/benchmarks.md), and the soft limit makes the collector work harder
// instead of letting a storm's garbage grow without bound. GOGC and
// GOMEMLIMIT in the environment override them.
const (
	gcPercent   = 400
	memoryLimit = 128 << 20
)

// tuneGC sets the collector's defaults for a keyserver, unless the
// environment (getenv) sets them.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := serve(ctx, args, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "keyserver:", strings.TrimPrefix(err.Error(), "keyserver: "))
		return 2
	}
	fmt.Fprintln(stderr, "keyserver:", strings.TrimPrefix(err.Error(), "keyserver: "))
	return 1
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keyserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "keyserver configuration `FILE`, as written by keyctl init")
	dev := fs.Bool("dev", false, "development mode: fresh in-memory authorities and store, nothing to set up")
	listen := fs.String("listen", "127.0.0.1:8443", "with --dev: address to listen on")
	dir := fs.String("dir", "keysystem-dev", "with --dev: directory for the admin credential (keyctl.yaml)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage:\n  keyserver --config DIR/keyserver.yaml\n  keyserver --dev [--listen ADDR] [--dir DIR]\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nExit codes: 0 clean shutdown, 1 failure, 2 bad usage or configuration.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 || (*config == "") == !*dev {
		fs.Usage()
		return usageError{errors.New("give either --config FILE or --dev")}
	}
	if *dev {
		return serveDev(ctx, *listen, *dir, stdout, stderr)
	}
	fc, err := keyserver.LoadConfig(*config)
	if err != nil {
		return usageError{err}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: fc.Level()}))
	acme.RouteLegoLog(logger.With("part", "acme"))
	srv, closer, err := keyserver.Open(fc, logger)
	var probs policy.Errors
	if errors.As(err, &probs) {
		return usageError{err} // a bad policy is bad configuration
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	// Catch SIGHUP before anyone can see the keyserver listening: its
	// default action would kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	l, err := net.Listen("tcp", fc.Listen)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	// Everything stops when one listener fails.
	ctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	if a := fc.ACME; a != nil && a.HTTP01Listen != "" {
		hl, err := net.Listen("tcp", a.HTTP01Listen)
		if err != nil {
			l.Close()
			return fmt.Errorf("acme http-01 listener: %w", err)
		}
		logger.Info("acme http-01 listening", "addr", hl.Addr().String())
		wg.Go(func() {
			if err := srv.ServeHTTP01(ctx, hl); err != nil {
				logger.Error("acme http-01 listener", "err", err)
				stopAll()
			}
		})
	}
	if a := fc.ACME; a != nil && a.DNS != nil && a.DNS.Listen != "" {
		pc, err := net.ListenPacket("udp", a.DNS.Listen)
		if err != nil {
			l.Close()
			return fmt.Errorf("acme dns server: %w", err)
		}
		tl, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			l.Close()
			return fmt.Errorf("acme dns server: %w", err)
		}
		logger.Info("acme dns server listening", "addr", pc.LocalAddr().String(), "zone", a.DNS.Zone)
		wg.Go(func() {
			if err := srv.ServeDNS(ctx, pc, tl); err != nil {
				logger.Error("acme dns server", "err", err)
				stopAll()
			}
		})
	}
	logger.Info("keyserver listening", "addr", l.Addr().String(), "names", fc.Names, "store", fc.Store.Path, "policy", fc.Policy)
	wg.Go(func() { reloadOnHUP(ctx, hup, srv) })
	return srv.Serve(ctx, l)
}

// reloadOnHUP reloads the policy on every SIGHUP until ctx ends. A file
// that is refused leaves the last good policy in force; ReloadPolicy logs
// and audits either way.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, srv *keyserver.Server) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			srv.ReloadPolicy("signal:SIGHUP")
		}
	}
}

// serveDev runs a throw-away keyserver (seed 003: an embedded CA so that
// development needs no set-up): authorities and store live in memory and
// die with the process; only the admin credential is written, so keyctl
// can talk to it.
func serveDev(ctx context.Context, listen, dir string, stdout, stderr io.Writer) error {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	names, err := keyserver.ServerNames(listen, nil)
	if err != nil {
		return usageError{err}
	}
	as, err := keyserver.GenerateAuthorities("", false)
	if err != nil {
		return err
	}
	srv, err := keyserver.New(keyserver.Config{
		Names:       names,
		KeyGranting: as.KeyGranting,
		Server:      as.Server,
		Admin:       as.Admin,
		Store:       store.NewMemory(),
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	url := keyserver.ServerURL(l.Addr().String(), names)
	if err := keyserver.WriteAdminCredential(dir, as.Admin, as.Server, []string{url}); err != nil {
		l.Close()
		return err
	}
	tok, _, err := srv.Admission().IssueToken(ctx, admission.TokenSpec{Node: "dev1", Creator: "keyserver --dev"})
	if err != nil {
		l.Close()
		return err
	}
	abs, _ := filepath.Abs(filepath.Join(dir, keyserver.AdminConfigFile))
	fmt.Fprintf(stdout, `keyserver (development mode) at %s
Nothing is kept: authorities and store are in memory.

  export KEYCTL_CONFIG=%s
  keyctl installer --node dev1 --token %s --state-dir ./dev1 > dev1.yaml
  keyclient once --config dev1.yaml

First token, for node dev1 (valid 1h): %s
`, url, abs, tok, tok)
	return srv.Serve(ctx, l)
}
