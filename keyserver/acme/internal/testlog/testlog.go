// Package testlog hands the output of a process a test runs (Pebble,
// knot, unbound, nginx) to the test's log, line by line, and stops
// once the test is over, when logging to it would panic.
package testlog

import (
	"bytes"
	"sync"
	"testing"
)

// Writer is an io.Writer for a process's stdout and stderr.
type Writer struct {
	t    testing.TB
	name string
	mu   sync.Mutex
	done bool
	buf  []byte
}

// New returns a Writer that logs each line as "name: line".
func New(t testing.TB, name string) *Writer { return &Writer{t: t, name: name} }

func (w *Writer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if !w.done {
			w.t.Logf("%s: %s", w.name, w.buf[:i])
		}
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// Stop ends the logging: call it before the test ends.
func (w *Writer) Stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
