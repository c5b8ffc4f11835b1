#!/usr/bin/env bash
# Walks lazyfs's failure table: every bad input of the CLI (wrong argument
# count, out-of-range flags, bad mount points, not root, no prewarm daemon,
# a missing tag, a registry that refuses pushes, stats on a non-mount),
# its exit status and a stable fragment of its one-line message, plus
# Ctrl-C against a registry that never answers (exit 130, nothing left
# behind). The table is failureTable in cmd/lazyfs/failures_test.go; the
# binary under test is the real lazyfs main, re-executed. CI runs it as part
# of `make test`; run it alone with this script (as root, so the rows that
# mount run too).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
exec go test -count=1 -v -run '^(TestFailureTable|TestInterrupt)$' ./cmd/lazyfs
