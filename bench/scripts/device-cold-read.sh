#!/usr/bin/env bash
# Issue 12's cold-read goal on the device machine (16 cores): the same
# measurement as cold-read.sh here, with the binaries built on this machine,
# since the device machine reaches no network. From a checkout where
# `make build` and hack/demo.sh (distribution's registry, crane) have run,
# through the device tool:
#   command: bash bench/scripts/device-cold-read.sh
#   carry:   bin/lazyfs .cache/bin/crane .cache/registry/usr/bin/docker-registry
#            (63 MB of the 64 MiB a call may carry)
#   timeout_s: 420
# It prints what the machine is, refuses plainly what it lacks (root,
# /dev/fuse, python3, curl), then cold-read.sh's table: 3 rounds of a 1 GiB
# file, lazyfs mount + cat against crane blob, and the mmap loader against
# cat, both also on local disk. ROUNDS and SIZE_MIB pass through.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
missing=()
[ "$(id -u)" = 0 ] || missing+=("root")
[ -c /dev/fuse ] || missing+=("/dev/fuse")
for c in python3 curl tar; do command -v "$c" >/dev/null || missing+=("$c"); done
for f in bin/lazyfs .cache/bin/crane .cache/registry/usr/bin/docker-registry; do [ -x "$f" ] || missing+=("$f (carry it)"); done
if ((${#missing[@]})); then
	echo "device-cold-read: this machine lacks: ${missing[*]}" >&2
	exit 1
fi
NO_BUILD=1 SIZE_MIB=${SIZE_MIB:-1024} ROUNDS=${ROUNDS:-3} MMAP=1 exec bench/scripts/cold-read.sh
