#!/usr/bin/env bash
# Start a private containerd for the real-node test: its own root, state and
# socket under $1, the CRI plugin with restrict_oom_score_adj (this VM
# refuses lowering oom_score_adj), a local sandbox image, and registry hosts
# from $1/certs.d (hosts.toml per registry). Prints the socket path.
#   test/consumers/node/containerd.sh DIR [SANDBOX_IMAGE]
set -euo pipefail
dir=$(mkdir -p "$1" && cd "$1" && pwd)
sandbox=${2:-docker.io/nodecreds/pause:local}
mkdir -p "$dir/root" "$dir/state" "$dir/certs.d"
cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$sandbox"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
TOML
containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
echo $! >"$dir/containerd.pid"
for _ in $(seq 100); do
	[ -S "$dir/containerd.sock" ] && ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && { echo "$dir/containerd.sock"; exit 0; }
	sleep 0.1
done
echo "containerd did not start; see $dir/containerd.log" >&2
tail -20 "$dir/containerd.log" >&2
exit 1
