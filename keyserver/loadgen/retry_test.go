package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

// fakeClock answers After at once and remembers the waits asked for.
type fakeClock struct{ waits []time.Duration }

func (c *fakeClock) Now() time.Time { return now }
func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- now
	return ch
}

// TestRetryAfter: a 503 with Retry-After is retried after that delay, on
// a new connection each time, and counted; a 503 without one, or one
// past MaxRetries, is a failure of kind http_503_unavailable.
func TestRetryAfter(t *testing.T) {
	var calls atomic.Int32
	var busyFor, conns atomic.Int32
	busyFor.Store(2)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.URL.Path == "/busy-no-header" || n <= busyFor.Load() {
			if r.URL.Path != "/busy-no-header" {
				w.Header().Set("Retry-After", "3")
			}
			w.Header().Set("Content-Type", api.ContentJSON)
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":{"code":"unavailable","message":"busy"}}`))
			return
		}
		w.Write([]byte(`{"status":"ok"}`))
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	defer srv.Close()

	clock := &fakeClock{}
	cfg := Config{Server: srv.URL, ServerRoot: srv.Certificate(), AdminTLS: &tls.Config{}, Scenario: Admit, Nodes: 1, Clock: clock}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	g := &gen{cfg: cfg, roots: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, retries: map[string]int{}}

	var h api.Health
	n, _, err := g.request(context.Background(), http.MethodGet, "/ok", nil, nil, &h)
	if err != nil || n != 3 || h.Status != "ok" {
		t.Fatalf("request = %d requests, %v, %+v; want 3 requests and ok", n, err, h)
	}
	if len(clock.waits) != 2 || clock.waits[0] != 3*time.Second || g.retries["http_503_unavailable"] != 2 {
		t.Fatalf("waits %v, retries %v; want two waits of 3s, two retries", clock.waits, g.retries)
	}
	if c := conns.Load(); c != 3 {
		t.Errorf("%d connections for 3 requests", c)
	}

	g.cfg.MaxRetries = 1
	calls.Store(0)
	busyFor.Store(100)
	_, _, err = g.request(context.Background(), http.MethodGet, "/busy", nil, nil, &h)
	if f, ok := err.(*Failure); !ok || f.Kind != "http_503_unavailable" {
		t.Fatalf("past MaxRetries: %v, want http_503_unavailable", err)
	}
	_, _, err = g.request(context.Background(), http.MethodGet, "/busy-no-header", nil, nil, &h)
	if f, ok := err.(*Failure); !ok || f.Kind != "http_503_unavailable" || g.retries["http_503_unavailable"] != 3 {
		t.Fatalf("without Retry-After: %v, retries %v; want http_503_unavailable and no retry", err, g.retries)
	}
}

// TestRetryWait: which failures are retried, and after how long.
func TestRetryWait(t *testing.T) {
	g := &gen{cfg: Config{MaxRetries: 50}}
	transport := &Failure{Kind: KindTransport, Err: errors.New("connection refused")}
	busy := func(after time.Duration) error {
		return classify(&api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, RetryAfter: after})
	}
	for _, tt := range []struct {
		name     string
		err      error
		attempt  int
		min, max time.Duration // retry when max > 0
	}{
		{"ok", nil, 0, 0, 0},
		{"transport, first", transport, 0, 500 * time.Millisecond, time.Second},
		{"transport, third", transport, 2, 2 * time.Second, 4 * time.Second},
		{"transport, backoff capped", transport, 40, 15 * time.Second, 30 * time.Second},
		{"transport, past MaxRetries", transport, 50, 0, 0},
		{"503 with Retry-After", busy(3 * time.Second), 0, 3 * time.Second, 3 * time.Second},
		{"503 with a long Retry-After", busy(time.Hour), 0, maxRetryAfter, maxRetryAfter},
		{"503 without Retry-After", busy(0), 0, 0, 0},
		{"503 past MaxRetries", busy(time.Second), 50, 0, 0},
		{"403", classify(&api.Error{Status: http.StatusForbidden, Code: "forbidden"}), 0, 0, 0},
		{"verification", fail(KindChain, "bad"), 0, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for range 20 { // the jitter
				wait, kind, retry := g.retryWait(tt.err, tt.attempt)
				if retry != (tt.max > 0) || retry && (wait < tt.min || wait > tt.max || kind != kindOf(tt.err)) {
					t.Fatalf("retryWait = %v, %q, %v; want retry %v within [%v, %v]", wait, kind, retry, tt.max > 0, tt.min, tt.max)
				}
			}
		})
	}
}
