package prewarm

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcState is a process's state in the CUDA checkpoint API
// (CUprocessState).
type ProcState string

// Process states as cuCheckpointProcessGetState reports them.
const (
	ProcRunning       ProcState = "running"
	ProcLocked        ProcState = "locked"
	ProcCheckpointed  ProcState = "checkpointed"
	ProcFailed        ProcState = "failed"
	ProcCheckpointing ProcState = "checkpointing"
	ProcRestoring     ProcState = "restoring"
	ProcUnknown       ProcState = "unknown"
)

// CheckpointCaps is what the driver's checkpoint API can do.
type CheckpointCaps struct {
	// Remap: a process checkpointed on one GPU can be restored onto
	// another of the same chip (CUcheckpointRestoreArgs.gpuPairs).
	Remap bool
	// Driver describes the implementation, for status and logs.
	Driver string
}

// Checkpointer suspends and resumes another process's GPU state through
// the CUDA driver's checkpoint API (cuCheckpointProcessLock, Checkpoint,
// Restore, Unlock, GetState; r550+, CUDA 12.8): a suspended process keeps
// running on the CPU side but its GPU memory lives in its host memory and
// the GPU is free. Only the daemon calls it, on its own model workers.
//
// A story: Caps at start says whether workers can be suspended at all;
// after a worker reports READY, Suspend(pid) moves it to host memory;
// a claim calls Resume(pid, from, to) and then State(pid) must say
// running before the worker is handed out.
type Checkpointer interface {
	// Caps reports what the driver supports; an error wrapping
	// ErrNoCheckpoint means no checkpoint API (workers stay resident).
	Caps() (CheckpointCaps, error)
	// Suspend locks pid's CUDA calls (waiting for in-flight work until
	// ctx's deadline) and checkpoints its GPU memory into host memory. It
	// returns how many host bytes the checkpoint took. On error the
	// process may be left locked or failed: the caller stops it.
	Suspend(ctx context.Context, pid int) (uint64, error)
	// Resume restores pid's GPU memory and unlocks it. from and to are
	// the GPU it was checkpointed on and the GPU to restore onto; they
	// differ only when Caps().Remap.
	Resume(ctx context.Context, pid int, from, to string) error
	// State returns pid's checkpoint state.
	State(pid int) (ProcState, error)
}

// runBounded runs f and waits for it until ctx is done. The driver's
// checkpoint calls cannot be interrupted, so on a timeout f keeps running
// in its goroutine; the caller then kills the target process, which ends
// the driver's work on it.
func runBounded[T any](ctx context.Context, what string, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// rssBytes returns the resident set size of pid from /proc/PID/status.
func rssBytes(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseUint(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, rest, err)
				}
				return kb << 10, nil
			}
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}
