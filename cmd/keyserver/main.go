// Command keyserver serves the keysystem's HTTPS API.
//
//	keyserver --config DIR/keyserver.yaml   (SIGHUP reloads the policy)
//	keyserver --dev [--listen 127.0.0.1:8443] [--dir ./keysystem-dev]
//
// Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 1 when serving
// failed, 2 for bad usage or configuration. The command is package
// keyserver/daemon.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/keysystem/keysystem/keyserver/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(daemon.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
