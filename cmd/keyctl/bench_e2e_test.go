package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/keysystem/keysystem/keyserver/loadgen"
)

// bench runs keyctl bench --json, which has to succeed, and reads its
// report.
func (w *world) bench(args ...string) *loadgen.Report {
	w.t.Helper()
	out := w.must("keyctl", append([]string{"bench", "--json"}, args...)...)
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		w.t.Fatalf("bench %v: %v\n%s", args, err, out)
	}
	if rep.Failed != 0 || len(rep.Failures) != 0 || rep.OK != rep.Ops || rep.Interrupted {
		w.t.Fatalf("bench %v: failures: %s", args, out)
	}
	return &rep
}

// TestBenchEndToEnd runs keyctl bench briefly against a real keyserver,
// every scenario, and checks the counts against the keyserver's own
// inventory: no speed is asserted.
func TestBenchEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newWorld(t)
	w.must("keyctl", "init", "--dir", "srv", "--listen", w.addr)
	w.startKeyserver("--config", "srv/keyserver.yaml")
	pid := strconv.Itoa(w.ks.Process.Pid)

	// admit: 20 tokens minted, each redeemed exactly once.
	rep := w.bench("--scenario", "admit", "--nodes", "20", "--count", "20", "--concurrency", "4", "--pid", pid)
	if rep.Ops != 20 || rep.Requests != 20 || rep.Keyserver == nil || rep.Keyserver.PID != w.ks.Process.Pid || rep.Keyserver.PeakRSSAfter == 0 {
		t.Fatalf("admit: %+v", rep)
	}
	redeemed := 0
	for _, tk := range w.tokens() {
		if strings.HasPrefix(tk.Node, rep.Tag+"-") {
			if tk.State != "redeemed" {
				t.Errorf("token for %s: %s", tk.Node, tk.State)
			}
			redeemed++
		}
	}
	if redeemed != 20 {
		t.Errorf("%d tokens of %s redeemed, want 20", redeemed, rep.Tag)
	}

	// renew: 20 nodes, 40 renewals, each from the CGC the last one gave.
	rep = w.bench("--scenario", "renew", "--nodes", "20", "--count", "40", "--concurrency", "4")
	if rep.Ops != 40 || rep.Requests != 40 {
		t.Fatalf("renew: %+v", rep)
	}
	renewals, nodes := 0, 0
	for name, n := range w.nodes() {
		if strings.HasPrefix(name, rep.Tag+"-") {
			nodes++
			renewals += n.Renewals
			if n.PreviousSerial == "" {
				t.Errorf("%s: no renewal recorded: %+v", name, n)
			}
		}
	}
	if nodes != 20 || renewals != 40 {
		t.Errorf("keyserver has %d nodes of %s with %d renewals, want 20 and 40", nodes, rep.Tag, renewals)
	}

	// sign: the example policy's node-tls grant, for every node.
	rep = w.bench("--scenario", "sign", "--grant", "node-tls", "--nodes", "4", "--count", "10", "--concurrency", "2")
	if rep.Ops != 10 || rep.Grant != "node-tls" {
		t.Fatalf("sign: %+v", rep)
	}

	// storm: every node renews exactly once, all at once.
	rep = w.bench("--scenario", "storm", "--nodes", "10")
	if rep.Ops != 10 || rep.Concurrency != 10 {
		t.Fatalf("storm: %+v", rep)
	}
	stormed := 0
	for name, n := range w.nodes() {
		if strings.HasPrefix(name, rep.Tag+"-") {
			stormed++
			if n.Renewals != 1 {
				t.Errorf("storm: %s renewed %d times", name, n.Renewals)
			}
		}
	}
	if stormed != 10 {
		t.Errorf("storm: keyserver has %d nodes of %s, want 10", stormed, rep.Tag)
	}

	// The text table, and the exit codes: 2 for bad usage, 1 when the run
	// cannot be set up.
	if out := w.must("keyctl", "bench", "--scenario", "sign", "--grant", "node-tls", "--nodes", "2", "--count", "2"); !strings.Contains(out, "failures    none") {
		t.Errorf("bench table:\n%s", out)
	}
	w.refused(2, "give a count or a duration", "keyctl", "bench", "--scenario", "renew", "--nodes", "2")
	w.refused(2, "--scenario", "keyctl", "bench", "--scenario", "flood")
	w.refused(1, "grant_denied", "keyctl", "bench", "--scenario", "sign", "--grant", "no-such-grant", "--nodes", "2", "--count", "2")
	w.stopKeyserver()
}
