#!/usr/bin/env bash
# make demo (node-only part): run the nodecreds agent on a temporary node root
# fed by a folder laid out the way the kubelet mounts a Secret, rotate that
# Secret, and show the node's files follow. Secret values are never printed:
# files are shown with "auth" redacted, and `nodecreds check` shows which
# user the kubelet would send.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/nodecreds}
[ -x "$BIN" ] || { echo "build first: make build"; exit 1; }

work=$(mktemp -d /tmp/nodecreds-demo.XXXXXX)
agent_pid=""
cleanup() {
	[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

root=$work/node
secret=$work/secret
mkdir -p "$root/root/.docker" "$secret"
chmod 700 "$root/root/.docker"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { # a node file with auth values redacted
	echo "--- $1"
	if [ -f "$root$1" ]; then sed -E 's/"auth": *"[^"]*"/"auth": "<redacted>"/g' "$root$1"; else echo "(absent)"; fi
}
b64() { printf '%s' "$1" | base64 -w0; }
publish() { # as the kubelet's AtomicWriter updates a mounted Secret
	local ts="..$(date -u +%Y_%m_%d_%H_%M_%S.%N)" old
	old=$(readlink "$secret/..data" 2>/dev/null || true)
	mkdir "$secret/$ts"
	printf '%s' "$1" >"$secret/$ts/.dockerconfigjson"
	ln -s "$ts" "$secret/..data_tmp"
	mv -T "$secret/..data_tmp" "$secret/..data"
	[ -e "$secret/.dockerconfigjson" ] || ln -s ..data/.dockerconfigjson "$secret/.dockerconfigjson"
	[ -z "$old" ] || rm -rf "${secret:?}/$old"
}
now_ms() { date +%s%3N; }

say "A node that already has docker config of its own"
cat >"$root/root/.docker/config.json" <<JSON
{"auths":{"ghcr.io":{"auth":"$(b64 'someone:their-own-token')"}},"credsStore":"","psFormat":"table {{.ID}}"}
JSON
chmod 600 "$root/root/.docker/config.json"
show /root/.docker/config.json

say "The Secret (mounted as the kubelet would) holds robot-v1 for registry.demo.test"
publish "{\"auths\":{\"registry.demo.test\":{\"auth\":\"$(b64 'robot-v1:demo-password-1')\"}}}"

say "Starting the agent: $BIN sync --source dir --secret-dir $secret --host-root $root"
"$BIN" sync --source dir --secret-dir "$secret" --host-root "$root" --metrics-addr 127.0.0.1:0 \
	--log-format text >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do [ -s "$root/var/lib/kubelet/config.json" ] && break; sleep 0.05; done
show /var/lib/kubelet/config.json
show /root/.docker/config.json
echo
"$BIN" check --host-root "$root" --image registry.demo.test/team/app:v1,ghcr.io/someone/tool:1 || true

say "Rotating the Secret to robot-v2 (a ..data swap, as the kubelet does)"
start=$(now_ms)
publish "{\"auths\":{\"registry.demo.test\":{\"auth\":\"$(b64 'robot-v2:demo-password-2')\"}}}"
for _ in $(seq 200); do
	"$BIN" check --host-root "$root" --image registry.demo.test/app -o json 2>/dev/null | grep -q '"username": "robot-v2"' && break
	sleep 0.02
done
echo "both node files updated $(( $(now_ms) - start )) ms after the swap"
"$BIN" check --host-root "$root" --image registry.demo.test/team/app:v1 || true
grep -q '"auth": "' "$root/root/.docker/config.json" && show /root/.docker/config.json

say "Someone deletes the kubelet's file: the agent puts it back"
rm "$root/var/lib/kubelet/config.json"
for _ in $(seq 100); do [ -s "$root/var/lib/kubelet/config.json" ] && break; sleep 0.02; done
show /var/lib/kubelet/config.json

say "Stopping the agent (SIGTERM): nothing is removed"
kill -TERM "$agent_pid"; wait "$agent_pid" && echo "agent exited 0"; agent_pid=""
echo "agent log:"; sed 's/^/  /' "$work/agent.log"

say "nodecreds cleanup: the node is back to what it was"
"$BIN" cleanup --host-root "$root" --log-format text
show /var/lib/kubelet/config.json
show /root/.docker/config.json
say "Done"
