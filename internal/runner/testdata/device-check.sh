#!/usr/bin/env bash
# Device check for lazyfs run --device (CDI devices) on a real NVIDIA GPU:
# generates NVIDIA's CDI spec with nvidia-ctk and runs TestRunCDIGPU, which
# opens every device node of the spec and finds every mounted file in a run.
# Needs root, /dev/fuse, busybox-static, Go and nvidia-ctk (the NVIDIA
# Container Toolkit); without nvidia-ctk the test says so and skips.
# Usage (repo root): internal/runner/testdata/device-check.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH=/usr/local/go/bin:$PATH
nvidia-smi -L || { echo "device-check: no NVIDIA GPU here" >&2; exit 1; }
LAZYFS_GPU_CDI=1 go test -count=1 -v -run 'TestRunCDIGPU|TestRunCDIDevices' ./internal/runner
