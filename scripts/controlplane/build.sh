#!/usr/bin/env bash
# Build etcd and kube-apiserver (and, on request, other Kubernetes
# components and kubectl) from Go modules into bin/. Builds are cached outside the work
# tree, keyed by the pinning module's go.mod and go.sum and the build flags,
# so a fresh clone on the same machine reuses them and a change of version or
# flags rebuilds: ${NODECREDS_CACHE:-~/.cache/nodecreds}.
#
# A plain `go build` leaves the version variables at their placeholders
# (Kubernetes reports v0.0.0-master, etcd "Git SHA: Not provided"), so no log
# would say which release ran. The -X flags below fill them from the version
# go.mod pins, as Kubernetes' hack/lib/version.sh and etcd's build script do.
#
#   scripts/controlplane/build.sh [component ...]   (default: etcd kube-apiserver)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${NODECREDS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecreds}
GO=${GO:-go}
mkdir -p "$repo/bin"

# version_ldflags prints the -X flags naming the release the module pins.
version_ldflags() {
	local v
	case "$1" in
	etcd)
		# etcd's version string is a constant of the pinned api module; only the
		# commit is left to the build, and a module has none: name the module.
		v=$(cd "$here/etcd" && $GO list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
		echo "-X go.etcd.io/etcd/api/v3/version.GitSHA=go.etcd.io/etcd/server/v3@$v"
		;;
	kube | kubectl)
		v=$(cd "$here/$1" && $GO list -m -f '{{.Version}}' k8s.io/kubernetes)
		[[ $v =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+ ]] || { echo "k8s.io/kubernetes version $v is not vMAJOR.MINOR.PATCH" >&2; exit 1; }
		local p=k8s.io/component-base/version
		# gitCommit stays empty: the module proxy gives the tag, not the commit.
		echo "-X $p.gitVersion=$v -X $p.gitMajor=${BASH_REMATCH[1]} -X $p.gitMinor=${BASH_REMATCH[2]} -X $p.gitCommit= -X $p.gitTreeState=clean"
		;;
	esac
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver)

for c in "${components[@]}"; do
	case "$c" in
	etcd) mod=etcd pkg=. ;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet) mod=kube pkg=k8s.io/kubernetes/cmd/$c ;;
	kubectl)
		# Its own module (see kubectl/tools.go), pinned to the control plane's
		# release: the tests talk to the API server they start with it.
		mod=kubectl pkg=k8s.io/kubernetes/cmd/kubectl
		want=$(cd "$here/kube" && $GO list -m -f '{{.Version}}' k8s.io/kubernetes)
		got=$(cd "$here/kubectl" && $GO list -m -f '{{.Version}}' k8s.io/kubernetes)
		[ "$want" = "$got" ] || { echo "scripts/controlplane/kubectl pins k8s.io/kubernetes $got, the control plane $want: pin the same release in both" >&2; exit 1; }
		;;
	*) echo "unknown component $c" >&2; exit 2 ;;
	esac
	ldflags=$(version_ldflags "$mod")
	flags=(-trimpath -ldflags "$ldflags")
	key=$( (cat "$here/$mod/go.mod" "$here/$mod/go.sum"; printf '%s\n' "${flags[@]}") | sha256sum | cut -c1-16)
	cached="$cache/$key/$c"
	if [ ! -x "$cached" ]; then
		echo ">> building $c from Go modules (first time on this machine: etcd ~1 min, Kubernetes components ~5 min each on 2 cores)"
		start=$(date +%s)
		mkdir -p "$cache/$key"
		# -v lists each package as it is built; show a running count instead.
		(cd "$here/$mod" && CGO_ENABLED=0 $GO build -v "${flags[@]}" -o "$cached.tmp" "$pkg" 2>&1) |
			awk '/^(go: |#|[^ ]*\.go:)/ {print; next} {n++; if (n % 100 == 0) {printf "   ... %d packages compiled\n", n; fflush()}}'
		[ "${PIPESTATUS[0]}" -eq 0 ] && [ -x "$cached.tmp" ] || { echo "building $c failed" >&2; exit 1; }
		mv "$cached.tmp" "$cached"
		echo ">> built $c in $(( $(date +%s) - start ))s (cached in $cached)"
	fi
	ln -sf "$cached" "$repo/bin/$c"
done
