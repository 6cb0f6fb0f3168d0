#!/usr/bin/env bash
# Install the Debian packages the tests use, if any is missing:
#   docker-registry (distribution, the real registry), apache2-utils
#   (htpasswd), skopeo (a real client of the files nodecreds writes), and
#   for the real-node test containerd, runc and busybox-static (the images).
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v skopeo >/dev/null || need+=(skopeo)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
echo ">> installing ${need[*]} (Debian packages the tests use)"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
