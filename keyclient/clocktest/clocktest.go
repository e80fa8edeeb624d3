// Package clocktest is a keyclient.Clock for tests: it moves only when
// told, so renewal schedules and backoffs are tested without sleeping.
package clocktest

import (
	"sync"
	"time"
)

// Clock moves only when advanced; an After channel fires when the clock
// passes its time. If Waits is set, every After call reports its duration
// there, so a test can see what the code under test waits for.
type Clock struct {
	Waits chan time.Duration

	mu      sync.Mutex
	now     time.Time
	pending []timer
}

type timer struct {
	at time.Time
	ch chan time.Time
}

// New returns a Clock at now.
func New(now time.Time) *Clock { return &Clock{now: now} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the time once the clock has been
// advanced by d or more.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.pending = append(c.pending, timer{c.now.Add(d), ch})
	c.mu.Unlock()
	if c.Waits != nil {
		c.Waits <- d
	}
	return ch
}

// Advance moves the clock on by d, firing every After channel it passes.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.pending[:0]
	for _, p := range c.pending {
		if !p.at.After(c.now) {
			p.ch <- c.now
		} else {
			keep = append(keep, p)
		}
	}
	c.pending = keep
}

// Set moves the clock to t (forward; After channels due by then fire).
func (c *Clock) Set(t time.Time) { c.Advance(t.Sub(c.Now())) }
