package prewarm

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// FakeGPUs is an in-memory GPUs for tests and for running the daemon
// without a GPU (lazyfs-prewarm --fake-gpus). Its devices are changed with
// Set and Update; Devices returns deep copies.
type FakeGPUs struct {
	mu      sync.Mutex
	devs    []DeviceInfo
	err     error
	persist map[string]bool
}

// NewFakeGPUs returns n idle 80 GiB GPUs in default compute mode with
// persistence disabled, UUIDs GPU-fake-0..n-1.
func NewFakeGPUs(n int) *FakeGPUs {
	f := &FakeGPUs{persist: map[string]bool{}}
	for i := 0; i < n; i++ {
		f.devs = append(f.devs, DeviceInfo{
			UUID: fmt.Sprintf("GPU-fake-%d", i), Name: "Fake H100", Index: i,
			PCIBusID:    fmt.Sprintf("00000000:%02X:00.0", i+1),
			MemoryTotal: 80 << 30, MemoryFree: 79 << 30, MemoryUsed: 1 << 30,
			ComputeMode: ComputeDefault, Persistence: "disabled", PState: 0,
		})
	}
	return f
}

// Devices implements GPUs.
func (f *FakeGPUs) Devices(ctx context.Context) ([]DeviceInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	out := make([]DeviceInfo, len(f.devs))
	for i, d := range f.devs {
		d.Processes = slices.Clone(d.Processes)
		out[i] = d
	}
	return out, nil
}

// SetPersistence implements GPUs and records the call.
func (f *FakeGPUs) SetPersistence(ctx context.Context, uuid string, on bool) error {
	return f.Update(uuid, func(d *DeviceInfo) {
		f.persist[uuid] = on
		if on {
			d.Persistence = "enabled"
		} else {
			d.Persistence = "disabled"
		}
	})
}

// PersistenceCalls returns the persistence changes asked for, by UUID.
func (f *FakeGPUs) PersistenceCalls() map[string]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	for k, v := range f.persist {
		out[k] = v
	}
	return out
}

// DriverVersion implements GPUs.
func (f *FakeGPUs) DriverVersion() string { return "fake" }

// Close implements GPUs.
func (f *FakeGPUs) Close() error { return nil }

// Set replaces all devices.
func (f *FakeGPUs) Set(devs []DeviceInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devs = slices.Clone(devs)
}

// SetErr makes Devices fail with err (nil clears it).
func (f *FakeGPUs) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Update changes one device in place.
func (f *FakeGPUs) Update(uuid string, fn func(*DeviceInfo)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.devs {
		if f.devs[i].UUID == uuid {
			fn(&f.devs[i])
			return nil
		}
	}
	return fmt.Errorf("gpu %s: %w", uuid, ErrNotFound)
}
