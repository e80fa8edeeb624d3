package acme

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/keysystem/keysystem/keyserver/store"
)

// ChallengePath is where an ACME CA looks for an HTTP-01 answer; front
// ends proxy it to the keyservers.
const ChallengePath = "/.well-known/acme-challenge/"

const http01Prefix = "acme/http01/"

// Store is what the ACME side needs of the keyserver's storage.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	List(ctx context.Context, prefix string) ([]store.KV, error)
	Txn(ctx context.Context, conds []store.Cond, ops []store.Op) error
}

// http01Record is a challenge answer in the store, where every keyserver
// sharing it can serve it.
type http01Record struct {
	Domain  string `json:"domain"`
	KeyAuth string `json:"key_auth"`
}

// validToken: RFC 8555 §8.3 tokens are base64url, and at least 128 bits
// (22 characters); anything else is not a challenge and is not looked up.
func validToken(tok string) bool {
	if len(tok) < 22 || len(tok) > 256 {
		return false
	}
	for _, r := range tok {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// HTTP01Handler answers GET ChallengePath+token from the store, for any
// Host (the CA sends the name being validated, with or without a port),
// and 404 for everything else. It is served on plain HTTP: the CA
// connects on port 80 and follows no redirect to the keyserver's TLS.
func HTTP01Handler(st Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.URL.Path, ChallengePath)
		if (r.Method != http.MethodGet && r.Method != http.MethodHead) || !ok || !validToken(tok) {
			http.NotFound(w, r)
			return
		}
		raw, err := st.Get(r.Context(), http01Prefix+tok)
		if errors.Is(err, store.ErrNotFound) {
			http.NotFound(w, r)
			return
		} else if err != nil {
			log.Error("acme http-01: store", "err", err)
			http.Error(w, "store unavailable", http.StatusServiceUnavailable)
			return
		}
		var rec http01Record
		if err := json.Unmarshal(raw, &rec); err != nil {
			log.Error("acme http-01: stored challenge", "token", tok, "err", err)
			http.NotFound(w, r)
			return
		}
		// The name asked for must be the challenge's, port or not: a
		// challenge for one name is not served to probes for another.
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if !strings.EqualFold(strings.TrimSuffix(host, "."), rec.Domain) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream") // as in RFC 8555 §8.3
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, rec.KeyAuth)
	})
}

// NewHTTP01Server is the plain-HTTP listener's server: the handler alone,
// with tight limits, since anyone on the Internet may reach it.
func NewHTTP01Server(st Store, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           http.MaxBytesHandler(HTTP01Handler(st, log), 1024),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       30 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// HTTP01Provider is lego's HTTP-01 provider: the answer goes into the
// store, and Present returns only once the keyserver has fetched it
// itself, through the public address, as the CA will: lego tells the CA
// to validate the moment Present returns, and the CA probes from several
// places at once, all of which must succeed.
type HTTP01Provider struct {
	Store Store
	// ProbeAddr is the host:port the self-check connects to (the load
	// balancer or front end); "" connects to the name itself on port 80.
	ProbeAddr string
	Probes    int           // successive successful fetches required; default 3
	ProbeTime time.Duration // for all of them together; default 30s
	Client    *http.Client  // default: one that connects to ProbeAddr and follows no redirect
}

// Present stores the answer and checks that it is served.
func (p *HTTP01Provider) Present(domain, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	raw, err := json.Marshal(http01Record{Domain: strings.ToLower(domain), KeyAuth: keyAuth})
	if err != nil {
		return err
	}
	if err := store.Put(ctx, p.Store, http01Prefix+token, raw); err != nil {
		return fmt.Errorf("acme http-01: store the answer for %s: %w", domain, err)
	}
	if err := p.probe(ctx, domain, token, keyAuth); err != nil {
		// lego calls CleanUp only after a Present that succeeded.
		p.CleanUp(domain, token, keyAuth)
		return err
	}
	return nil
}

// CleanUp removes the answer.
func (p *HTTP01Provider) CleanUp(domain, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.Store.Txn(ctx, nil, []store.Op{{Key: http01Prefix + token, Delete: true}})
}

func (p *HTTP01Provider) timeout() time.Duration {
	if p.ProbeTime > 0 {
		return p.ProbeTime
	}
	return 30 * time.Second
}

// probe fetches the answer through the public address until it has seen
// it Probes times in a row, or the context ends.
func (p *HTTP01Provider) probe(ctx context.Context, domain, token, keyAuth string) error {
	want := p.Probes
	if want <= 0 {
		want = 3
	}
	client := p.Client
	if client == nil {
		client = p.probeClient()
	}
	url := "http://" + domain + ChallengePath + token
	ok, wait := 0, 100*time.Millisecond
	var last error
	for ok < want {
		err := fetchAnswer(ctx, client, url, keyAuth)
		if err == nil {
			ok++
			continue
		}
		ok, last = 0, err
		select {
		case <-ctx.Done():
			return fmt.Errorf("acme http-01: %s is not served at %s through %s: %w", domain, url, p.probeTarget(domain), last)
		case <-time.After(wait):
			wait = min(2*wait, 2*time.Second)
		}
	}
	return nil
}

func (p *HTTP01Provider) probeTarget(domain string) string {
	if p.ProbeAddr != "" {
		return p.ProbeAddr
	}
	return net.JoinHostPort(domain, "80")
}

func (p *HTTP01Provider) probeClient() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if p.ProbeAddr != "" {
					addr = p.ProbeAddr
				}
				return d.DialContext(ctx, network, addr)
			},
			DisableKeepAlives: true, // each probe as a CA's: a new connection
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func fetchAnswer(ctx context.Context, client *http.Client, url, keyAuth string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(keyAuth))+1))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	if !bytes.Equal(bytes.TrimSpace(body), []byte(keyAuth)) {
		return errors.New("the answer served is not this challenge's")
	}
	return nil
}
