package keyserver

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

// limiter bounds the work the keyserver takes on: at most inFlight
// requests sign at once, at most queue more wait for a turn, each for at
// most wait. Whatever is beyond that is refused at once with 503 and a
// Retry-After, so that under a storm clients back off and come back,
// instead of piling up requests that time out after the work was done.
type limiter struct {
	slots   chan struct{}
	waiting atomic.Int64
	queue   int64
	wait    time.Duration
	retry   time.Duration // what Retry-After says
}

// Defaults of the limiter.
const (
	DefaultMaxConns    = 256
	DefaultMaxInFlight = 64
	DefaultMaxQueue    = 1024
	DefaultQueueWait   = 5 * time.Second
	DefaultRetryAfter  = 2 * time.Second
)

func newLimiter(inFlight, queue int, wait, retry time.Duration) *limiter {
	return &limiter{slots: make(chan struct{}, inFlight), queue: int64(queue), wait: wait, retry: retry}
}

// errOverloaded is what a refused client is told.
var errOverloaded = &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeUnavailable, Message: "the keyserver is busy; retry after the time in Retry-After"}

// acquire waits for a slot; false means the request is to be refused.
func (l *limiter) acquire(ctx context.Context) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	if l.waiting.Add(1) > l.queue {
		l.waiting.Add(-1)
		return false
	}
	defer l.waiting.Add(-1)
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (l *limiter) release() { <-l.slots }

// limit wraps a handler that does the expensive work (signing).
func (s *Server) limit(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.limiter.acquire(r.Context()) {
			w.Header().Set("Retry-After", strconv.Itoa(int((s.limiter.retry+time.Second-1)/time.Second)))
			writeError(w, errOverloaded)
			return
		}
		defer s.limiter.release()
		h(w, r)
	}
}
