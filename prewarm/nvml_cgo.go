//go:build linux && cgo

package prewarm

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// nvmlGPUs is the go-nvml implementation of GPUs.
type nvmlGPUs struct {
	mu      sync.Mutex // NVML is thread safe; mu guards closed only
	lib     nvml.Interface
	version string
	closed  bool
}

// OpenNVML loads libnvidia-ml.so.1 and initialises NVML. It fails with
// ErrNoDriver when the library is missing or the driver is not loaded.
func OpenNVML() (GPUs, error) {
	lib := nvml.New()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED || ret == nvml.ERROR_NO_PERMISSION {
			return nil, fmt.Errorf("nvml init: %s: %w", nvmlErr(ret), ErrNoDriver)
		}
		return nil, fmt.Errorf("nvml init: %s", nvmlErr(ret))
	}
	v, _ := lib.SystemGetDriverVersion()
	return &nvmlGPUs{lib: lib, version: v}, nil
}

func nvmlErr(r nvml.Return) string { return nvml.ErrorString(r) }

func (g *nvmlGPUs) DriverVersion() string { return g.version }

func (g *nvmlGPUs) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	if ret := g.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %s", nvmlErr(ret))
	}
	return nil
}

func (g *nvmlGPUs) Devices(ctx context.Context) ([]DeviceInfo, error) {
	n, ret := g.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %s", nvmlErr(ret))
	}
	var out []DeviceInfo
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dev, ret := g.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d: %s", i, nvmlErr(ret))
		}
		info := describe(dev, i)
		cur, _, ret := dev.GetMigMode()
		if ret == nvml.SUCCESS && cur == nvml.DEVICE_MIG_ENABLE {
			info.MIGEnabled = true
		}
		out = append(out, info)
		if !info.MIGEnabled {
			continue
		}
		max, ret := dev.GetMaxMigDeviceCount()
		if ret != nvml.SUCCESS {
			continue
		}
		for j := 0; j < max; j++ {
			mig, ret := dev.GetMigDeviceHandleByIndex(j)
			if ret != nvml.SUCCESS {
				continue // slot without an instance
			}
			m := describe(mig, j)
			m.ParentUUID = info.UUID
			m.PCIBusID = info.PCIBusID
			m.Persistence = info.Persistence
			if m.ComputeMode == ComputeUnknown {
				m.ComputeMode = info.ComputeMode
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// describe reads what NVML offers for one handle; unsupported queries leave
// -1 or "unknown" rather than failing the whole inventory.
func describe(dev nvml.Device, index int) DeviceInfo {
	d := DeviceInfo{Index: index, UtilGPU: -1, PState: -1, ComputeMode: ComputeUnknown, Persistence: "unknown"}
	d.UUID, _ = dev.GetUUID()
	d.Name, _ = dev.GetName()
	if pci, ret := dev.GetPciInfo(); ret == nvml.SUCCESS {
		d.PCIBusID = cstr(pci.BusId[:])
	}
	if mem, ret := dev.GetMemoryInfo(); ret == nvml.SUCCESS {
		d.MemoryTotal, d.MemoryFree, d.MemoryUsed = mem.Total, mem.Free, mem.Used
	}
	if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
		d.UtilGPU = int(u.Gpu)
	}
	if procs, ret := dev.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
		d.Processes = make([]Process, 0, len(procs))
		for _, p := range procs {
			d.Processes = append(d.Processes, Process{PID: p.Pid, UsedMemory: p.UsedGpuMemory})
		}
	}
	if m, ret := dev.GetComputeMode(); ret == nvml.SUCCESS {
		switch m {
		case nvml.COMPUTEMODE_DEFAULT:
			d.ComputeMode = ComputeDefault
		case nvml.COMPUTEMODE_EXCLUSIVE_THREAD:
			d.ComputeMode = ComputeExclusiveThread
		case nvml.COMPUTEMODE_PROHIBITED:
			d.ComputeMode = ComputeProhibited
		case nvml.COMPUTEMODE_EXCLUSIVE_PROCESS:
			d.ComputeMode = ComputeExclusiveProcess
		}
	}
	if p, ret := dev.GetPersistenceMode(); ret == nvml.SUCCESS {
		if p == nvml.FEATURE_ENABLED {
			d.Persistence = "enabled"
		} else {
			d.Persistence = "disabled"
		}
	}
	if ps, ret := dev.GetPerformanceState(); ret == nvml.SUCCESS && ps != nvml.PSTATE_UNKNOWN {
		d.PState = int(ps)
	}
	return d
}

func cstr(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func (g *nvmlGPUs) SetPersistence(ctx context.Context, uuid string, on bool) error {
	dev, ret := g.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpu %s: %s: %w", uuid, nvmlErr(ret), ErrNotFound)
	}
	mode := nvml.FEATURE_DISABLED
	if on {
		mode = nvml.FEATURE_ENABLED
	}
	if ret := dev.SetPersistenceMode(mode); ret != nvml.SUCCESS {
		return fmt.Errorf("gpu %s: set persistence mode: %s", uuid, nvmlErr(ret))
	}
	return nil
}
