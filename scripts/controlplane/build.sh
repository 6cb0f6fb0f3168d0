#!/usr/bin/env bash
# Build etcd and kube-apiserver (and, on request, other Kubernetes
# components) from Go modules into bin/. Builds are cached outside the work
# tree, keyed by the pinning module's go.mod and go.sum, so a fresh clone on
# the same machine reuses them: ${NODECREDS_CACHE:-~/.cache/nodecreds}.
#
#   scripts/controlplane/build.sh [component ...]   (default: etcd kube-apiserver)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${NODECREDS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecreds}
GO=${GO:-go}
mkdir -p "$repo/bin"

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver)

for c in "${components[@]}"; do
	case "$c" in
	etcd) mod=etcd pkg=. ;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet) mod=kube pkg=k8s.io/kubernetes/cmd/$c ;;
	*) echo "unknown component $c" >&2; exit 2 ;;
	esac
	key=$(cat "$here/$mod/go.mod" "$here/$mod/go.sum" | sha256sum | cut -c1-16)
	cached="$cache/$key/$c"
	if [ ! -x "$cached" ]; then
		echo ">> building $c from Go modules (first time on this machine: etcd ~1 min, Kubernetes components ~5 min each on 2 cores)"
		start=$(date +%s)
		mkdir -p "$cache/$key"
		# -v lists each package as it is built; show a running count instead.
		(cd "$here/$mod" && CGO_ENABLED=0 $GO build -v -trimpath -o "$cached.tmp" "$pkg" 2>&1) |
			awk '/^(go: |#|[^ ]*\.go:)/ {print; next} {n++; if (n % 100 == 0) {printf "   ... %d packages compiled\n", n; fflush()}}'
		[ "${PIPESTATUS[0]}" -eq 0 ] && [ -x "$cached.tmp" ] || { echo "building $c failed" >&2; exit 1; }
		mv "$cached.tmp" "$cached"
		echo ">> built $c in $(( $(date +%s) - start ))s (cached in $cached)"
	fi
	ln -sf "$cached" "$repo/bin/$c"
done
