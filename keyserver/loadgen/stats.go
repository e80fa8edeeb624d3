package loadgen

import (
	"math"
	"slices"
	"time"
)

// Latency summarises a set of latencies exactly, from every sample.
type Latency struct {
	P50  time.Duration
	P90  time.Duration
	P99  time.Duration
	Max  time.Duration
	Mean time.Duration
}

// Summarise computes the exact percentiles of samples by the nearest-rank
// method: the p-th percentile is the smallest sample that at least p% of
// the samples do not exceed. samples is sorted in place. No samples give
// the zero Latency.
func Summarise(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Latency{
		P50:  Percentile(samples, 50),
		P90:  Percentile(samples, 90),
		P99:  Percentile(samples, 99),
		Max:  samples[len(samples)-1],
		Mean: sum / time.Duration(len(samples)),
	}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted
// samples, which must not be empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	// rank = ceil(p/100 * n); the epsilon keeps 90% of 10 samples at rank
	// 9 when the product comes out as 9.000000000000002.
	rank := int(math.Ceil(p/100*float64(n) - 1e-9))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}
