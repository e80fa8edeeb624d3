package acme

import (
	"fmt"
	"testing"
	"time"

	legoacme "github.com/go-acme/lego/v4/acme"
)

// TestBackoff: failures double the wait from RetryMin up to RetryMax,
// and a CA's 429 with Retry-After waits at least that long. (Pebble
// cannot be made to answer 429, so the error is made here.)
func TestBackoff(t *testing.T) {
	m := &Manager{cfg: Config{RetryMin: DefaultRetryMin, RetryMax: DefaultRetryMax}}
	plain := fmt.Errorf("acme: web: %w", &legoacme.ProblemDetails{HTTPStatus: 400})
	for n, want := range map[int]time.Duration{1: 5 * time.Minute, 2: 10 * time.Minute, 4: 40 * time.Minute, 6: 160 * time.Minute, 7: 4 * time.Hour, 40: 4 * time.Hour} {
		if got := m.backoff(n, plain); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
	limited := fmt.Errorf("acme: web (rsa-2048): %w", &legoacme.RateLimitedError{ProblemDetails: &legoacme.ProblemDetails{HTTPStatus: 429}, RetryAfter: "7200"})
	if got := m.backoff(1, limited); got != 2*time.Hour {
		t.Errorf("backoff after a 429 with Retry-After: 7200 = %v, want 2h", got)
	}
	if got := m.backoff(7, limited); got != 4*time.Hour {
		t.Errorf("backoff when ours is longer than Retry-After = %v, want 4h", got)
	}
	date := time.Now().Add(10 * time.Hour).UTC().Format(time.RFC1123)
	limited = &legoacme.RateLimitedError{ProblemDetails: &legoacme.ProblemDetails{HTTPStatus: 429}, RetryAfter: date}
	if got := m.backoff(1, limited); got < 9*time.Hour || got > 10*time.Hour {
		t.Errorf("backoff after Retry-After: %s = %v, want about 10h", date, got)
	}
}
