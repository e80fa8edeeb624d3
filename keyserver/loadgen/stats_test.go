package loadgen

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestSummarise(t *testing.T) {
	ms := time.Millisecond
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * ms
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(hundred), func(i, j int) { hundred[i], hundred[j] = hundred[j], hundred[i] })
	ten := []time.Duration{10 * ms, 1 * ms, 9 * ms, 2 * ms, 8 * ms, 3 * ms, 7 * ms, 4 * ms, 6 * ms, 5 * ms}
	tests := []struct {
		name    string
		samples []time.Duration
		want    Latency
	}{
		{"none", nil, Latency{}},
		{"one", []time.Duration{7 * ms}, Latency{P50: 7 * ms, P90: 7 * ms, P99: 7 * ms, Max: 7 * ms, Mean: 7 * ms}},
		{"1..100 shuffled", hundred, Latency{P50: 50 * ms, P90: 90 * ms, P99: 99 * ms, Max: 100 * ms, Mean: 50*ms + 500*time.Microsecond}},
		// Nearest rank: p99 of ten samples is the tenth, p90 the ninth.
		{"1..10", ten, Latency{P50: 5 * ms, P90: 9 * ms, P99: 10 * ms, Max: 10 * ms, Mean: 5*ms + 500*time.Microsecond}},
		{"outlier", []time.Duration{ms, ms, ms, 3 * time.Second}, Latency{P50: ms, P90: 3 * time.Second, P99: 3 * time.Second, Max: 3 * time.Second, Mean: (3*ms + 3*time.Second) / 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarise(tt.samples); got != tt.want {
				t.Errorf("Summarise = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPercentileRanks(t *testing.T) {
	s := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{1, 1}, {5, 1}, {5.1, 2}, {50, 10}, {90, 18}, {95, 19}, {99, 20}, {100, 20}} {
		if got := Percentile(s, tt.p); got != tt.want {
			t.Errorf("p%g of 1..20 = %d, want %d", tt.p, got, tt.want)
		}
	}
}

func TestProcParsers(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50 ticks.
	stat := "4242 (key (server) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 1000000 3000 18446744073709551615"
	cpu, err := parseStat(stat)
	if err != nil || cpu != 3*time.Second {
		t.Errorf("parseStat = %v, %v; want 3s", cpu, err)
	}
	if _, err := parseStat("4242 (x) S 1 2"); err == nil {
		t.Error("parseStat accepted a short line")
	}
	status := "Name:\tkeyserver\nVmPeak:\t  800000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n"
	hwm, rss, err := parseStatus(status)
	if err != nil || hwm != 40960 || rss != 20480 {
		t.Errorf("parseStatus = %d, %d, %v; want 40960, 20480", hwm, rss, err)
	}
	if _, _, err := parseStatus("Name:\tkthreadd\n"); err == nil {
		t.Error("parseStatus accepted a status without VmHWM")
	}
}
