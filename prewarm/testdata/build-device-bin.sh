#!/usr/bin/env bash
# Builds the binaries the device check needs into bin/ (git-ignored), for
# x86-64 Linux with cgo (NVML and libcuda are dlopened at run time, so no
# NVIDIA library is needed to build). Carry "bin" to the device machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p bin
export CGO_ENABLED=1 GOOS=linux GOARCH=amd64
go build -trimpath -ldflags='-s -w' -o bin/lazyfs-prewarm ./cmd/lazyfs-prewarm
go build -trimpath -ldflags='-s -w' -o bin/lazyfs ./cmd/lazyfs
ls -la bin/lazyfs-prewarm bin/lazyfs
