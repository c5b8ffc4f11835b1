package prewarm

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// FakeCheckpointer is a Checkpointer for tests and --fake-gpus: Suspend
// freezes the worker's process group with SIGSTOP (so a "suspended"
// worker really answers nothing) and Resume thaws it with SIGCONT. Faults
// are injected with its fields; set them before use or under Lock/Unlock.
type FakeCheckpointer struct {
	sync.Mutex
	// NoAPI makes Caps fail as a driver without the checkpoint API does.
	NoAPI bool
	// Remap is reported in Caps.
	Remap bool
	// Bytes is what each Suspend reports (default 1 GiB).
	Bytes uint64
	// SuspendErr and ResumeErr, when set, decide the outcome of each call
	// (a nil return lets it proceed).
	SuspendErr func(pid int) error
	ResumeErr  func(pid int) error
	// Delay is added to every Suspend and Resume (to widen races).
	Delay time.Duration
	// LeaveFrozen makes Resume report success without thawing the
	// process: a driver that lies. The daemon must still not hand it out.
	LeaveFrozen bool

	states map[int]ProcState
	calls  []string
}

// Caps implements Checkpointer.
func (f *FakeCheckpointer) Caps() (CheckpointCaps, error) {
	f.Lock()
	defer f.Unlock()
	if f.NoAPI {
		return CheckpointCaps{}, fmt.Errorf("fake driver: cuCheckpointProcessLock not found (driver older than r550): %w", ErrNoCheckpoint)
	}
	return CheckpointCaps{Remap: f.Remap, Driver: "fake"}, nil
}

func (f *FakeCheckpointer) wait(ctx context.Context) error {
	f.Lock()
	d := f.Delay
	f.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Suspend implements Checkpointer.
func (f *FakeCheckpointer) Suspend(ctx context.Context, pid int) (uint64, error) {
	if err := f.wait(ctx); err != nil {
		return 0, err
	}
	f.Lock()
	defer f.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("suspend %d", pid))
	if f.states == nil {
		f.states = map[int]ProcState{}
	}
	if syscall.Kill(pid, 0) != nil {
		return 0, fmt.Errorf("fake cuCheckpointProcessLock pid %d: CUDA_ERROR_INVALID_VALUE (no such process)", pid)
	}
	if f.SuspendErr != nil {
		if err := f.SuspendErr(pid); err != nil {
			f.states[pid] = ProcFailed
			return 0, err
		}
	}
	killGroup(pid, syscall.SIGSTOP)
	// As the driver's checkpoint, return once the process answers
	// nothing: a stop takes effect when each thread next runs.
	if err := waitStopped(ctx, pid); err != nil {
		killGroup(pid, syscall.SIGCONT)
		return 0, fmt.Errorf("fake cuCheckpointProcessCheckpoint pid %d: %w", pid, err)
	}
	f.states[pid] = ProcCheckpointed
	if f.Bytes == 0 {
		return 1 << 30, nil
	}
	return f.Bytes, nil
}

// Resume implements Checkpointer.
func (f *FakeCheckpointer) Resume(ctx context.Context, pid int, from, to string) error {
	if err := f.wait(ctx); err != nil {
		return err
	}
	f.Lock()
	defer f.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("resume %d %s→%s", pid, from, to))
	if f.states[pid] != ProcCheckpointed {
		return fmt.Errorf("fake cuCheckpointProcessRestore pid %d: state %s, not checkpointed: CUDA_ERROR_ILLEGAL_STATE", pid, f.states[pid])
	}
	if from != to && !f.Remap {
		return fmt.Errorf("fake cuCheckpointProcessRestore pid %d: remap %s→%s unsupported: %w", pid, from, to, ErrNoCheckpoint)
	}
	if f.ResumeErr != nil {
		if err := f.ResumeErr(pid); err != nil {
			f.states[pid] = ProcFailed
			return err
		}
	}
	if !f.LeaveFrozen {
		killGroup(pid, syscall.SIGCONT)
	}
	f.states[pid] = ProcRunning
	return nil
}

// State implements Checkpointer.
func (f *FakeCheckpointer) State(pid int) (ProcState, error) {
	f.Lock()
	defer f.Unlock()
	if syscall.Kill(pid, 0) != nil {
		return ProcUnknown, fmt.Errorf("fake cuCheckpointProcessGetState pid %d: no such process", pid)
	}
	if s, ok := f.states[pid]; ok {
		return s, nil
	}
	return ProcRunning, nil
}

// Calls returns the Suspend and Resume calls made so far.
func (f *FakeCheckpointer) Calls() []string {
	f.Lock()
	defer f.Unlock()
	return append([]string(nil), f.calls...)
}
