package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Report is what a run measured. Operations count once whatever requests
// they make, retries included.
type Report struct {
	Scenario    Scenario `json:"scenario"`
	Server      string   `json:"server"`
	Grant       string   `json:"grant,omitempty"`
	Tag         string   `json:"tag"` // the nodes are <tag>-0 … <tag>-<nodes-1>
	Nodes       int      `json:"nodes"`
	Concurrency int      `json:"concurrency"`

	SetupSeconds  float64 `json:"setup_seconds"`  // minting tokens and admitting the nodes, untimed
	WarmupSeconds float64 `json:"warmup_seconds"` // asked for
	WarmupOps     int     `json:"warmup_ops"`     // operations started during the warm-up, not measured

	Ops         int     `json:"ops"`      // measured operations, successful or not
	OK          int     `json:"ok"`       // of which succeeded and verified
	Failed      int     `json:"failed"`   // of which failed
	Requests    int     `json:"requests"` // HTTP requests they made, retries included
	Seconds     float64 `json:"seconds"`  // the measured period: from the end of the warm-up to the last measured completion
	OKPerSecond float64 `json:"ok_per_second"`
	Latency     Latency `json:"-"` // of the successful operations, without client-side key generation and verification

	Failures   map[string]int `json:"failures"` // by kind
	Retries    map[string]int `json:"retries"`  // requests retried after a 503 with Retry-After, by kind
	FirstError string         `json:"first_error,omitempty"`

	Keyserver *ServerStats `json:"keyserver,omitempty"` // when its PID was given

	Interrupted bool   `json:"interrupted,omitempty"`
	Note        string `json:"note,omitempty"`
}

// ServerStats is what the keyserver's process spent over the measured
// period, from /proc.
type ServerStats struct {
	PID           int     `json:"pid"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	CPUMSPerOp    float64 `json:"cpu_ms_per_op"`
	PeakRSSBefore int64   `json:"peak_rss_kib_before"` // VmHWM: the peak since the keyserver started
	PeakRSSAfter  int64   `json:"peak_rss_kib_after"`
	RSSAfter      int64   `json:"rss_kib_after"`
}

func newReport(cfg *Config, tag string) *Report {
	r := &Report{
		Scenario: cfg.Scenario, Server: cfg.Server, Grant: cfg.Grant, Tag: tag,
		Nodes: cfg.Nodes, Concurrency: cfg.Concurrency, WarmupSeconds: cfg.Warmup.Seconds(),
		Failures: map[string]int{}, Retries: map[string]int{},
	}
	if cfg.PID != 0 {
		r.Keyserver = &ServerStats{PID: cfg.PID}
	}
	return r
}

func (s *ServerStats) observe(before, after ProcSample, ops int) {
	s.CPUSeconds = (after.CPU - before.CPU).Seconds()
	if ops > 0 {
		s.CPUMSPerOp = s.CPUSeconds * 1000 / float64(ops)
	}
	s.PeakRSSBefore, s.PeakRSSAfter, s.RSSAfter = before.HWMKiB, after.HWMKiB, after.RSSKiB
}

// ms is a duration in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// MarshalJSON adds latency_ms, in milliseconds.
func (r *Report) MarshalJSON() ([]byte, error) {
	type plain Report
	return json.Marshal(struct {
		*plain
		LatencyMS map[string]float64 `json:"latency_ms"`
	}{(*plain)(r), map[string]float64{
		"p50": ms(r.Latency.P50), "p90": ms(r.Latency.P90), "p99": ms(r.Latency.P99),
		"max": ms(r.Latency.Max), "mean": ms(r.Latency.Mean),
	}})
}

// WriteText writes the report as a table for people.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	row := func(k, format string, args ...any) { fmt.Fprintf(&b, "%-11s %s\n", k, fmt.Sprintf(format, args...)) }
	what := string(r.Scenario)
	switch r.Scenario {
	case Renew, Storm:
		what += " (POST /v1/renew with a fresh key)"
	case Sign:
		what += " (grant " + r.Grant + ")"
	}
	row("scenario", "%s", what)
	row("keyserver", "%s", r.Server)
	row("nodes", "%d (%s-*), concurrency %d, set up in %.1fs", r.Nodes, r.Tag, r.Concurrency, r.SetupSeconds)
	row("measured", "%d operations (%d requests) in %.3fs, after %gs of warm-up (%d operations)", r.Ops, r.Requests, r.Seconds, r.WarmupSeconds, r.WarmupOps)
	row("rate", "%.1f successful operations/s", r.OKPerSecond)
	l := r.Latency
	row("latency", "p50 %.2fms  p90 %.2fms  p99 %.2fms  max %.2fms  mean %.2fms", ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max), ms(l.Mean))
	row("failures", "%s", counts(r.Failures))
	row("retries", "%s", counts(r.Retries))
	if s := r.Keyserver; s != nil {
		row("server cpu", "%.3f ms per operation (%.2fs, pid %d)", s.CPUMSPerOp, s.CPUSeconds, s.PID)
		row("server rss", "peak %.1f MiB (before the run %.1f MiB), now %.1f MiB", float64(s.PeakRSSAfter)/1024, float64(s.PeakRSSBefore)/1024, float64(s.RSSAfter)/1024)
	}
	if r.FirstError != "" {
		row("first error", "%s", r.FirstError)
	}
	if r.Interrupted {
		row("note", "interrupted: partial figures")
	}
	if r.Note != "" {
		row("note", "%s", r.Note)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
