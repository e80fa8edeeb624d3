// Command alldns is the keyserver with every DNS provider of lego linked
// in, for ACME dns-01 through any DNS host lego knows (policy:
// acme.accounts.*.dns.provider). It is its own Go module, so that the
// some 180 modules those providers need stay out of the keysystem's
// build and downloads:
//
//	cd cmd/keyserver/alldns && go build -o keyserver .
//
// Everything else is the keyserver's (keyserver/daemon): the same flags,
// configuration and exit codes.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-acme/lego/v4/providers/dns"

	"github.com/keysystem/keysystem/keyserver/acme"
	"github.com/keysystem/keysystem/keyserver/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	acme.SetDNSProvidersByName(acme.LegoByName(dns.NewDNSChallengeProviderByName))
	os.Exit(daemon.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
