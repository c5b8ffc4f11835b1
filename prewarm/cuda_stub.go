//go:build !(linux && cgo)

package prewarm

import "fmt"

type noCUDA struct{}

// NewCUDADriver returns a Driver whose Init fails with ErrNoDriver: this
// build has no cgo, so libcuda cannot be loaded.
func NewCUDADriver() Driver { return noCUDA{} }

func (noCUDA) Init() error { return fmt.Errorf("cuda: built without cgo: %w", ErrNoDriver) }

func (noCUDA) Retain(uint64) (Context, error) {
	return nil, fmt.Errorf("cuda: built without cgo: %w", ErrNoDriver)
}
