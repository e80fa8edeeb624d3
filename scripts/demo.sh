#!/usr/bin/env bash
# The main job, end to end, with real processes over loopback TLS:
# keyctl init, keyserver on the embedded store, a token for node web1,
# keyclient once admits it and fetches what the policy grants it (an mTLS
# certificate and a trust bundle), a forced renewal, the token replayed
# and refused, and the keyserver stopped cleanly with SIGTERM.
set -euo pipefail
BIN=${BIN:-$(pwd)/bin}
DEMO=${DEMO:-$(pwd)/demo}
export PATH="$BIN:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

# A free loopback port: one nothing answers on.
port=18443
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

rm -rf "$DEMO"
mkdir -p "$DEMO"
cd "$DEMO"

step "1. Create a keyserver directory (authorities, config, example policy, admin credential)"
run keyctl init --dir server --listen "127.0.0.1:$port"
run keyctl policy check server/policy.yaml

step "2. Start the keyserver on the embedded store"
printf '$ keyserver --config server/keyserver.yaml &\n'
keyserver --config server/keyserver.yaml 2>keyserver.log &
ks=$!
trap 'kill $ks 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	kill -0 $ks 2>/dev/null || { cat keyserver.log; exit 1; }
	sleep 0.1
done
echo "keyserver (pid $ks) listening on 127.0.0.1:$port"
export KEYCTL_CONFIG=server/keyctl.yaml

step "3. Issue a one-time token for node web1 (redeemable from 127.0.0.1) and write its keyclient config"
run keyctl installer --node web1 --state-dir web1 --ttl 30m --ip 127.0.0.1 > web1.yaml
sed 's/^token: .*/token: ks1_…  (the secret; shown only here, once)/' web1.yaml

step "4. What the policy gives web1 (keyctl policy explain)"
run keyctl policy explain --node web1 --ip 127.0.0.1

step "5. The node's items: an mTLS certificate and the authority's root"
cat >> web1.yaml <<'ITEMS'
items:
  - type: x509
    grant: node-tls
    key: web1-tls/node.key
    cert: web1-tls/node.crt
    ca: web1-tls/internal-ca.crt
    reload: 'echo "reload command: node-tls $KEYCLIENT_EVENT"'
  - type: static
    name: internal-ca
    path: web1-tls/internal-ca-bundle.pem
ITEMS
sed -n '/^items:/,$p' web1.yaml

step "6. The node admits itself and fetches its items: keyclient once"
run keyclient once --config web1.yaml
echo "files the node holds:"; ls -l web1 web1-tls

step "7. A forced renewal: new keys, new serials"
run keyclient once --config web1.yaml --renew
run keyclient status --config web1.yaml

step "8. The same token again (a fresh node with a new key): refused"
sed -e 's/^state_dir: .*/state_dir: web1-replay/' -e '/^items:/,$d' web1.yaml > replay.yaml
if keyclient once --config replay.yaml; then echo "ERROR: the token worked twice" >&2; exit 1; fi
echo "(refused, exit code 1, as it must be)"

step "9. The keyserver's view"
run keyctl node list
run keyctl token list
echo "audit log (server/audit.log):"
cat server/audit.log

step "10. Stop the keyserver cleanly (SIGTERM)"
kill -TERM $ks
rc=0; wait $ks || rc=$?
trap - EXIT
tail -n 1 keyserver.log
echo "keyserver exited with code $rc"
[ "$rc" = 0 ]
printf '\nDemo files are in %s\n' "$DEMO"
