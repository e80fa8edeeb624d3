package main

import (
	"errors"
	"fmt"
	"slices"

	"github.com/keysystem/keysystem/keyserver"
	"github.com/keysystem/keysystem/keyserver/loadgen"
)

func cmdBench(e *env, args []string) error {
	fs := e.flags("bench")
	scenario := fs.String("scenario", "", "admit, renew, sign or storm (required)")
	nodes := fs.Int("nodes", 100, "distinct nodes to play (named bench-<random tag>-<i>)")
	conc := fs.Int("concurrency", 0, "operations in flight (default 8; storm: all nodes at once)")
	count := fs.Int("count", 0, "measured operations (default for admit: --nodes)")
	dur := fs.Duration("duration", 0, "or measure for this long")
	warmup := fs.Duration("warmup", 0, "operations started before this are not measured")
	grant := fs.String("grant", "", "sign: the grant whose certificate the nodes ask for")
	pid := fs.Int("pid", 0, "the keyserver's process ID: report its CPU per operation and peak RSS (from /proc)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if !slices.Contains(loadgen.Scenarios, loadgen.Scenario(*scenario)) {
		return usageError{fmt.Errorf("bench: --scenario: want admit, renew, sign or storm")}
	}
	if e.config == "" {
		return usageError{errors.New("no configuration: give --config DIR/keyctl.yaml or set KEYCTL_CONFIG")}
	}
	ac, err := keyserver.LoadAdminConfig(e.config)
	if err != nil {
		return usageError{err}
	}
	root, err := ac.ServerRoot()
	if err != nil {
		return usageError{err}
	}
	admin, err := ac.TLSConfig()
	if err != nil {
		return usageError{err}
	}
	rep, err := loadgen.Run(e.ctx, loadgen.Config{
		Server: ac.Servers[0], ServerRoot: root, AdminTLS: admin,
		Scenario: loadgen.Scenario(*scenario), Nodes: *nodes, Concurrency: *conc,
		Count: *count, Duration: *dur, Warmup: *warmup, Grant: *grant, PID: *pid,
		Log: e.stderr,
	})
	if errors.Is(err, loadgen.ErrConfig) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	if *asJSON {
		err = printJSON(e, rep)
	} else {
		err = rep.WriteText(e.stdout)
	}
	switch {
	case err != nil:
		return err
	case rep.Failed > 0:
		return fmt.Errorf("bench: %d of %d operations failed", rep.Failed, rep.Ops)
	case rep.Interrupted:
		return errors.New("bench: interrupted")
	}
	return nil
}
