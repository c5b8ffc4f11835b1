package prewarm

import (
	"context"
)

// GPUs is the inventory the Manager consumes: NVML in production, a fake in
// tests.
type GPUs interface {
	// Devices returns every physical GPU and every MIG device.
	Devices(ctx context.Context) ([]DeviceInfo, error)
	// SetPersistence turns persistence mode on or off for a physical GPU.
	SetPersistence(ctx context.Context, uuid string, on bool) error
	// DriverVersion returns the driver version string.
	DriverVersion() string
	// Close releases NVML.
	Close() error
}
