#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a fresh Debian machine
# with Go. Go tools (staticcheck) are pinned in go.mod and fetched by
# `go tool`; Debian packages are installed here with apt-get.
set -euo pipefail

# Debian packages the tests need; later work adds real components here
# (etcd-server, openssh-server) as the features that need them land.
#   knot, knot-dnsutils  authoritative DNS updated over RFC 2136 (ACME dns-01)
#   unbound              the recursive resolver Pebble asks, following CNAMEs
#   nginx-light, haproxy front ends proxying ACME http-01 to the keyservers
PKGS=(ca-certificates git knot knot-dnsutils unbound nginx-light haproxy)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO=sudo
	echo "installing Debian packages: ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "Go is required: https://go.dev/doc/install" >&2; exit 1; }
go mod download
go tool staticcheck -version >/dev/null   # builds the pinned tool once
