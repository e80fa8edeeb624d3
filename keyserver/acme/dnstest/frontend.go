package dnstest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// NginxChallenge is the nginx configuration docs/acme.md ships for a
// front end: the challenge path goes to the keyservers, as the CA sent
// it (Host included), and nothing else of the site changes. %s is the
// keyservers' http-01 listeners, one "server host:port;" line each.
const NginxChallenge = `upstream keyservers_acme {
%s}
server {
    listen %s;
    server_name _;
    location /.well-known/acme-challenge/ {
        proxy_pass http://keyservers_acme;
        proxy_set_header Host $http_host;
        proxy_next_upstream error timeout;
        proxy_connect_timeout 2s;
        proxy_read_timeout 5s;
    }
    location / {
        return 404;
    }
}
`

// HAProxyChallenge is the haproxy configuration docs/acme.md ships, in
// the same shape: %s is the front end's bind address, then the
// keyservers' "server" lines.
const HAProxyChallenge = `frontend http
    bind %s
    mode http
    acl acme_challenge path_beg /.well-known/acme-challenge/
    use_backend keyservers_acme if acme_challenge
    default_backend site

backend keyservers_acme
    mode http
    retry-on conn-failure empty-response response-timeout
    option redispatch
%s
backend site
    mode http
    http-request return status 404
`

// StartNginx runs nginx as a front end passing the ACME challenge path to
// the keyservers' http-01 listeners, and returns its address.
func StartNginx(t testing.TB, keyservers ...string) string {
	t.Helper()
	bin := daemon(t, "nginx")
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	var servers string
	for _, k := range keyservers {
		servers += "    server " + k + ";\n"
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s}
`, dir, indent(fmt.Sprintf(NginxChallenge, servers, addr)))
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	exited := run(t, "nginx", bin, "-p", dir, "-c", path, "-e", "stderr")
	waitTCP(t, "nginx", addr, exited)
	return addr
}

// StartHAProxy runs haproxy in the same role as StartNginx.
func StartHAProxy(t testing.TB, keyservers ...string) string {
	t.Helper()
	bin := daemon(t, "haproxy")
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	var servers string
	for i, k := range keyservers {
		servers += fmt.Sprintf("    server ks%d %s\n", i+1, k)
	}
	conf := `global
    log stderr format raw local0 info
defaults
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s
` + fmt.Sprintf(HAProxyChallenge, addr, servers)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	exited := run(t, "haproxy", bin, "-db", "-f", path)
	waitTCP(t, "haproxy", addr, exited)
	return addr
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if line != "" {
			b.WriteString("    ")
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// waitTCP waits until addr accepts connections, or the daemon has died.
func waitTCP(t testing.TB, name, addr string, exited <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("dnstest: %s exited before listening on %s", name, addr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnstest: %s is not listening on %s: %v", name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
