#!/usr/bin/env bash
# Installs what lazyfs's build and tests need on Debian 12, as root: make,
# gcc (cgo for go-nvml in lazyfs-prewarm), fuse3, zstd, busybox-static,
# containerd and runc from Debian, and the Go modules. Go itself (>= 1.26)
# must already be in /usr/local/go (the go.dev tarball; Debian's golang is
# too old). Idempotent and quick when everything is there; `make test`
# runs it first.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/go/bin:$PATH

if ! command -v go >/dev/null; then
	echo "deps: Go >= 1.26 not found: unpack the go.dev tarball into /usr/local/go (tar -C /usr/local -xzf go1.26.*.linux-amd64.tar.gz)" >&2
	exit 1
fi
gov=$(go env GOVERSION) # go1.26.3
minor=${gov#go1.}
minor=${minor%%.*}
if ! [[ $minor =~ ^[0-9]+$ ]] || ((minor < 26)); then
	echo "deps: $gov is too old: lazyfs needs Go >= 1.26 in /usr/local/go (the go.dev tarball)" >&2
	exit 1
fi

pkgs=(make gcc libc6-dev zstd fuse3 busybox-static curl ca-certificates containerd runc iproute2)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing ${missing[*]}: install them as root (apt-get install ${missing[*]}); the tests that need them skip" >&2
	else
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
	fi
fi
if [ "$(id -u)" = 0 ]; then
	modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || echo "deps: warning: /dev/fuse missing: FUSE tests will skip" >&2
go mod download
