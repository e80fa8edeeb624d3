package keyserver_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/api"
)

// TestOverloadIsShed: with every signing slot taken and no room to wait,
// a further admission is refused at once with 503 and Retry-After, changes
// nothing, and works once the slot is free.
func TestOverloadIsShed(t *testing.T) {
	t.Parallel()
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var blocking sync.Mutex
	block := false
	h := start(t, options{maxInFlight: 1, maxQueue: 1, onGet: func(key string) {
		blocking.Lock()
		b := block
		blocking.Unlock()
		if b && strings.HasPrefix(key, "tokens/") {
			once.Do(func() { close(inside) })
			<-release
		}
	}})
	var freeOnce sync.Once
	free := func() { freeOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before the server stops, even when the test fails
	first := h.issueToken(t, "web1", time.Hour)
	second := h.issueToken(t, "web2", time.Hour)
	third := h.issueToken(t, "web3", time.Hour)
	blocking.Lock()
	block = true
	blocking.Unlock()

	// The first admission takes the one slot and stops inside it.
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := h.call(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, first.Token, "web1", newKey(t)))
		done <- resp
	}()
	<-inside
	// Of the next two, one takes the one place in the queue and the
	// other is shed at once.
	type answer struct {
		resp  *http.Response
		body  []byte
		token string
		node  string
	}
	answers := make(chan answer, 2)
	for _, n := range []struct{ tok, node string }{{second.Token, "web2"}, {third.Token, "web3"}} {
		go func() {
			resp, body := h.call(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, n.tok, n.node, newKey(t)))
			answers <- answer{resp, body, n.tok, n.node}
		}()
	}
	var shed answer
	select {
	case shed = <-answers:
	case <-time.After(30 * time.Second): // a hang guard, not a measure of speed
		t.Fatal("neither request was shed: the keyserver queued both beyond its limit")
	}
	wantError(t, shed.resp, shed.body, http.StatusServiceUnavailable, api.CodeUnavailable)
	if ra := shed.resp.Header.Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After %q, want 2 (seconds)", ra)
	}
	blocking.Lock()
	block = false
	blocking.Unlock()
	free()
	if resp := <-done; resp.StatusCode != http.StatusOK {
		t.Errorf("admission in the slot: %d, want 200", resp.StatusCode)
	}
	if a := <-answers; a.resp.StatusCode != http.StatusOK {
		t.Errorf("admission in the queue: %d %s, want 200", a.resp.StatusCode, a.body)
	}
	third = api.TokenResponse{Token: shed.token}
	thirdNode := shed.node
	// The shed request changed nothing: its token still works.
	resp, body := h.call(t, h.anon, http.MethodPost, api.PathAdmit, admitBody(t, third.Token, thirdNode, newKey(t)))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the shed token afterwards: %d %s", resp.StatusCode, body)
	}
}
