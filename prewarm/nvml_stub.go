//go:build !(linux && cgo)

package prewarm

import "fmt"

// OpenNVML loads NVML. Without cgo (or off Linux) there is no NVML binding,
// so it always fails with ErrNoDriver and the daemon runs report-only.
func OpenNVML() (GPUs, error) {
	return nil, fmt.Errorf("nvml: built without cgo: %w", ErrNoDriver)
}
