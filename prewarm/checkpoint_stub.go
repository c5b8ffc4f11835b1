//go:build !(linux && cgo)

package prewarm

import (
	"context"
	"fmt"
)

type noCheckpoint struct{}

// NewCUDACheckpointer returns a Checkpointer whose Caps fails with
// ErrNoCheckpoint: this build has no cgo, so libcuda cannot be loaded.
func NewCUDACheckpointer() Checkpointer { return noCheckpoint{} }

var errNoCgoCheckpoint = fmt.Errorf("cuda checkpoint: built without cgo: %w", ErrNoCheckpoint)

func (noCheckpoint) Caps() (CheckpointCaps, error) { return CheckpointCaps{}, errNoCgoCheckpoint }
func (noCheckpoint) Suspend(context.Context, int) (uint64, error) {
	return 0, errNoCgoCheckpoint
}
func (noCheckpoint) Resume(context.Context, int, string, string) error { return errNoCgoCheckpoint }
func (noCheckpoint) State(int) (ProcState, error)                      { return ProcUnknown, errNoCgoCheckpoint }
