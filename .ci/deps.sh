#!/usr/bin/env bash
# Installs what lazyfs's tests and demo need on Debian 12, as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(make zstd fuse3 busybox-static curl ca-certificates containerd runc iproute2)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || echo "warning: /dev/fuse missing: FUSE tests will skip" >&2
export PATH=/usr/local/go/bin:$PATH
go mod download
