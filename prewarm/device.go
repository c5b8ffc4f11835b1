package prewarm

import (
	"context"
	"strings"
)

// ComputeMode mirrors NVML's compute mode.
type ComputeMode string

// Compute modes as NVML reports them.
const (
	ComputeDefault          ComputeMode = "default"
	ComputeExclusiveThread  ComputeMode = "exclusive_thread"
	ComputeProhibited       ComputeMode = "prohibited"
	ComputeExclusiveProcess ComputeMode = "exclusive_process"
	ComputeUnknown          ComputeMode = "unknown"
)

// Exclusive reports whether only one context (process) may use the device
// at a time, in which case a held context makes a job fail.
func (m ComputeMode) Exclusive() bool {
	return m == ComputeExclusiveProcess || m == ComputeExclusiveThread
}

// Process is one compute process NVML sees on a device.
type Process struct {
	PID        uint32 `json:"pid"`
	UsedMemory uint64 `json:"used_memory_bytes"`
	// Ours is set by the Manager for its own holders and workers.
	Ours bool `json:"ours,omitempty"`
}

// DeviceInfo is one snapshot of a GPU or MIG device. Fields NVML cannot
// report for a device (utilisation of a MIG device, for instance) hold -1.
type DeviceInfo struct {
	UUID  string `json:"uuid"`
	Name  string `json:"name"`
	Index int    `json:"index"`
	// ParentUUID is set on MIG devices: the physical GPU they belong to.
	ParentUUID string `json:"parent_uuid,omitempty"`
	// MIGEnabled is set on a physical GPU whose MIG mode is on; such a
	// GPU is never held or claimed as a whole, its MIG devices are.
	MIGEnabled  bool        `json:"mig_enabled,omitempty"`
	PCIBusID    string      `json:"pci_bus_id,omitempty"`
	MemoryTotal uint64      `json:"memory_total_bytes"`
	MemoryFree  uint64      `json:"memory_free_bytes"`
	MemoryUsed  uint64      `json:"memory_used_bytes"`
	UtilGPU     int         `json:"util_gpu_percent"`
	Processes   []Process   `json:"processes"`
	ComputeMode ComputeMode `json:"compute_mode"`
	// Persistence is "enabled", "disabled" or "unknown" (MIG devices
	// inherit their parent's).
	Persistence string `json:"persistence"`
	PState      int    `json:"pstate"`
}

// IsMIG reports whether the device is a MIG instance.
func (d *DeviceInfo) IsMIG() bool { return d.ParentUUID != "" || strings.HasPrefix(d.UUID, "MIG-") }

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
