package acme_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/acme/dnstest"
	"github.com/keysystem/keysystem/keyserver/store"
)

const token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"

// serveHTTP01 runs the plain-HTTP challenge listener on loopback until the
// test ends, and returns its address.
func serveHTTP01(t *testing.T, st acme.Store) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := acme.NewHTTP01Server(st, slog.New(slog.DiscardHandler))
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// getCounter counts the store reads of challenge answers.
type getCounter struct {
	acme.Store
	mu   sync.Mutex
	gets int
}

func (g *getCounter) Get(ctx context.Context, key string) ([]byte, error) {
	g.mu.Lock()
	g.gets++
	g.mu.Unlock()
	return g.Store.Get(ctx, key)
}

func (g *getCounter) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gets
}

func TestHTTP01Handler(t *testing.T) {
	st := &getCounter{Store: store.NewMemory()}
	addr := serveHTTP01(t, st)
	p := &acme.HTTP01Provider{Store: st, ProbeAddr: addr, ProbeTime: 5 * time.Second}
	if err := p.Present("www.example.org", token, token+".thumbprint"); err != nil {
		t.Fatalf("Present: %v", err)
	}
	get := func(method, host, path string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
	}
	for _, tc := range []struct {
		name, method, host, path string
		status                   int
		lookup                   bool // the store is asked
	}{
		{"the answer", "GET", "www.example.org", acme.ChallengePath + token, 200, true},
		{"with the port Pebble sends", "GET", "www.example.org:5002", acme.ChallengePath + token, 200, true},
		{"any case", "GET", "WWW.Example.ORG", acme.ChallengePath + token, 200, true},
		{"another name", "GET", "other.example.org", acme.ChallengePath + token, 404, true},
		{"unknown token", "GET", "www.example.org", acme.ChallengePath + strings.Repeat("A", 43), 404, true},
		{"short token", "GET", "www.example.org", acme.ChallengePath + "abc", 404, false},
		{"not base64url", "GET", "www.example.org", acme.ChallengePath + strings.Repeat("A", 40) + "%2F..", 404, false},
		{"POST", "POST", "www.example.org", acme.ChallengePath + token, 404, false},
		{"elsewhere", "GET", "www.example.org", "/", 404, false},
		{"below the token", "GET", "www.example.org", acme.ChallengePath + token + "/x", 404, false},
	} {
		before := st.count()
		status, ctype, body := get(tc.method, tc.host, tc.path)
		if looked := st.count() > before; looked != tc.lookup {
			t.Errorf("%s: store asked %v, want %v", tc.name, looked, tc.lookup)
		}
		if status != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, status, tc.status)
		}
		if status == 200 && (body != token+".thumbprint" || ctype != "application/octet-stream") {
			t.Errorf("%s: %q (%s), want the key authorization", tc.name, body, ctype)
		}
	}
	if err := p.CleanUp("www.example.org", token, token+".thumbprint"); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := get("GET", "www.example.org", acme.ChallengePath+token); status != 404 {
		t.Errorf("after CleanUp: status %d, want 404", status)
	}
}

// An answer the public address does not serve fails Present (so lego
// never asks the CA, whose failed validations are rate limited) rather
// than succeeding blind.
func TestHTTP01PresentChecksTheAnswerIsServed(t *testing.T) {
	st := store.NewMemory()
	other := serveHTTP01(t, store.NewMemory()) // a front end proxying to a keyserver on another store
	p := &acme.HTTP01Provider{Store: st, ProbeAddr: other, ProbeTime: 500 * time.Millisecond}
	err := p.Present("www.example.org", token, token+".x")
	if err == nil || !strings.Contains(err.Error(), "not served") || !strings.Contains(err.Error(), "404") {
		t.Errorf("Present = %v, want not served (404)", err)
	}
	if kvs, _ := st.List(t.Context(), ""); len(kvs) != 0 {
		t.Errorf("a failed Present left %d records behind (lego cleans up only after success)", len(kvs))
	}
}

// TestFrontEnds: the nginx and haproxy configurations docs/acme.md ships
// pass the challenge path, Host and all, to the keyservers, and nothing
// else; with a keyserver down they ask the next one, so no one keyserver
// is a single point of failure. The keyserver's own check that its answer
// is served, made through the front end, passes.
func TestFrontEnds(t *testing.T) {
	for name, startFront := range map[string]func(testing.TB, ...string) string{
		"nginx": dnstest.StartNginx, "haproxy": dnstest.StartHAProxy,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			st := store.NewMemory()
			down := net.JoinHostPort("127.0.0.1", strconv.Itoa(closedPort(t)))
			front := startFront(t, down, serveHTTP01(t, st))
			p := &acme.HTTP01Provider{Store: st, ProbeAddr: front}
			if err := p.Present("www.example.org", token, token+".thumbprint"); err != nil {
				t.Fatalf("Present through %s: %v", name, err)
			}
			for _, host := range []string{"www.example.org", "www.example.org:80"} {
				status, body := frontGet(t, front, host, acme.ChallengePath+token)
				if status != http.StatusOK || body != token+".thumbprint" {
					t.Errorf("Host %s: %d %q", host, status, body)
				}
			}
			for _, path := range []string{"/", "/.well-known/other", acme.ChallengePath + "short"} {
				if status, _ := frontGet(t, front, "www.example.org", path); status != http.StatusNotFound {
					t.Errorf("%s: %d, want 404", path, status)
				}
			}
			if status, _ := frontGet(t, front, "other.example.org", acme.ChallengePath+token); status != http.StatusNotFound {
				t.Errorf("another name's probe: %d, want 404", status)
			}
			if err := p.CleanUp("www.example.org", token, token+".thumbprint"); err != nil {
				t.Fatal(err)
			}
			if status, _ := frontGet(t, front, "www.example.org", acme.ChallengePath+token); status != http.StatusNotFound {
				t.Errorf("after CleanUp: %d, want 404", status)
			}
		})
	}
}

// closedPort is a loopback port nothing listens on: a keyserver down.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func frontGet(t *testing.T, front, host, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+front+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestHTTP01BadRequests: a request cut off mid-way, one with headers over
// the limit and one with an oversized body get no answer from the store
// and leave the listener serving.
func TestHTTP01BadRequests(t *testing.T) {
	st := &getCounter{Store: store.NewMemory()}
	addr := serveHTTP01(t, st)
	p := &acme.HTTP01Provider{Store: st, ProbeAddr: addr}
	if err := p.Present("www.example.org", token, token+".thumbprint"); err != nil {
		t.Fatal(err)
	}
	raw := func(req string, closeWrite bool) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, req); err != nil {
			return "" // the server hung up on an oversized request
		}
		if closeWrite {
			c.(*net.TCPConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		out, _ := io.ReadAll(c)
		first, _, _ := strings.Cut(string(out), "\r\n")
		return first
	}
	before := st.count()
	if got := raw("GET "+acme.ChallengePath+token+" HTTP/1.1\r\nHost: www.exa", true); got != "" && !strings.Contains(got, " 400 ") {
		t.Errorf("truncated request: %q, want no answer or 400", got)
	}
	if got := raw("GET "+acme.ChallengePath+token+" HTTP/1.1\r\nHost: www.example.org\r\nX-Pad: "+strings.Repeat("a", 64<<10)+"\r\n\r\n", false); got != "" && !strings.Contains(got, " 431 ") {
		t.Errorf("oversized headers: %q, want 431", got)
	}
	if st.count() != before {
		t.Errorf("bad requests read the store %d times", st.count()-before)
	}
	if got := raw("GET "+acme.ChallengePath+token+" HTTP/1.1\r\nHost: www.example.org\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n"+strings.Repeat("b", 4096), true); !strings.Contains(got, " 200 ") {
		t.Errorf("GET with a large body: %q; the answer does not depend on the body", got)
	}
	if got := raw("GET "+acme.ChallengePath+token+" HTTP/1.1\r\nHost: www.example.org\r\nConnection: close\r\n\r\n", true); !strings.Contains(got, " 200 ") {
		t.Errorf("after the bad requests: %q, want 200", got)
	}
}
