package api

import (
	"strings"
	"time"
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

// State is where a GPU is in the pre-warm state machine:
//
//	unknown ──(idle for IdleWindow)──▶ idle ──▶ warming ──▶ held
//	   ▲                               │  ▲                   │
//	   └──── busy ◀─(foreign process)──┘  └──── grace ◀── claimed ◀─ (claim from idle/warming/held/grace)
//
// A GPU is idle when no foreign compute process ran on it and its
// utilisation stayed at or below the threshold for the idle window, and no
// claim is outstanding. unavailable marks a MIG-enabled physical GPU (its
// MIG devices are managed instead).
type State string

// States.
const (
	StateUnknown     State = "unknown"
	StateBusy        State = "busy"
	StateIdle        State = "idle"
	StateWarming     State = "warming"
	StateHeld        State = "held"
	StateClaimed     State = "claimed"
	StateGrace       State = "grace"
	StateUnavailable State = "unavailable"
)

// AllStates lists every State, for metrics.
var AllStates = []State{StateUnknown, StateBusy, StateIdle, StateWarming, StateHeld, StateClaimed, StateGrace, StateUnavailable}

// ClaimRequest asks for one GPU.
type ClaimRequest struct {
	// UUID of a GPU or MIG device; "" or "any" means any idle GPU.
	UUID string `json:"uuid,omitempty"`
	// Owner is free text shown in status (a job or pod name).
	Owner string `json:"owner,omitempty"`
	// Release is "now" to kill the holder before the claim returns, or
	// "deferred"/"" for the default (deferred by HandoffDelay in default
	// compute mode; always "now" in exclusive modes).
	Release string `json:"release,omitempty"`
	// Worker names a model warm worker (see WorkerStatus) to claim instead
	// of a whole GPU; UUID then optionally names the GPU to resume it on.
	Worker string `json:"worker,omitempty"`
}

// WorkerHandoff describes a warm worker handed to the claimer.
type WorkerHandoff struct {
	PID    int    `json:"pid"`
	Socket string `json:"socket"`
	// Name is the model worker's name ("" for a per-GPU warm worker).
	Name string `json:"name,omitempty"`
	// Resumed is set when the worker was suspended (its GPU memory in host
	// RAM) and was restored for this claim, taking ResumeMs.
	Resumed  bool    `json:"resumed,omitempty"`
	ResumeMs float64 `json:"resume_ms,omitempty"`
	// CheckpointedOn is the GPU the worker was suspended on. When it
	// differs from the claim's UUID the driver remapped it (Remapped).
	CheckpointedOn string `json:"checkpointed_on,omitempty"`
	Remapped       bool   `json:"remapped,omitempty"`
}

// ClaimResult is what a successful claim returns.
type ClaimResult struct {
	UUID    string `json:"uuid"`
	ClaimID string `json:"claim_id"`
	// HolderRelease is "now", "deferred", "handed_over" (warm worker) or
	// "none" (nothing was held).
	HolderRelease string `json:"holder_release"`
	// ReleaseMs is how long killing the holder took (0 unless "now").
	ReleaseMs float64 `json:"release_ms"`
	// ReleaseAfterMs is the delay of a deferred release.
	ReleaseAfterMs float64 `json:"release_after_ms,omitempty"`
	// ClaimMs is the server-side time of the whole claim.
	ClaimMs float64        `json:"claim_ms"`
	Worker  *WorkerHandoff `json:"worker,omitempty"`
}

// ReleaseRequest ends a claim.
type ReleaseRequest struct {
	// UUID is the claimed GPU; for a model-worker claim it may be left
	// empty when Worker is set.
	UUID string `json:"uuid"`
	// Worker ends the claim of this model worker.
	Worker string `json:"worker,omitempty"`
	// ClaimID, when set, must match the claim.
	ClaimID string `json:"claim_id,omitempty"`
}

// ReleaseResult says when the GPU is warmed again.
type ReleaseResult struct {
	UUID        string  `json:"uuid"`
	State       State   `json:"state"`
	WarmAfterMs float64 `json:"warm_after_ms"`
	// WorkerStopped is set when a handed-over warm worker was still running
	// and the daemon stopped it.
	WorkerStopped bool `json:"worker_stopped,omitempty"`
	// Worker and WorkerState: a released model worker and where it went
	// (suspended, ready = kept resident, or starting = restarted cold).
	Worker      string      `json:"worker,omitempty"`
	WorkerState WorkerState `json:"worker_state,omitempty"`
}

// GPUStatus is one GPU in Status.
type GPUStatus struct {
	DeviceInfo
	State  State  `json:"state"`
	Reason string `json:"reason,omitempty"`
	// HolderPID is the managed holder's or warm worker's pid.
	HolderPID  int    `json:"holder_pid,omitempty"`
	HolderKind string `json:"holder_kind,omitempty"`
	// HeldBytes is the GPU memory the daemon's own processes use.
	HeldBytes  uint64     `json:"held_bytes"`
	Claim      *ClaimInfo `json:"claim,omitempty"`
	Crashes    int        `json:"holder_crashes"`
	GraceUntil *time.Time `json:"grace_until,omitempty"`
}

// ClaimInfo describes an outstanding claim.
type ClaimInfo struct {
	ID        string    `json:"id"`
	Owner     string    `json:"owner,omitempty"`
	Since     time.Time `json:"since"`
	WorkerPID int       `json:"worker_pid,omitempty"`
}

// Status is the daemon's view of its GPUs.
type Status struct {
	// Mode is "hold", "warm-workers", "inventory" (holding disabled) or
	// "report-only".
	Mode          string        `json:"mode"`
	Reason        string        `json:"reason,omitempty"`
	DriverVersion string        `json:"driver_version,omitempty"`
	GPUs          []GPUStatus   `json:"gpus"`
	Images        []ImageStatus `json:"images,omitempty"`
	// Workers are the model warm workers; Checkpoint says whether the
	// driver can suspend them; SuspendedBytes (host memory their GPU
	// memory takes while suspended) stays within SuspendMemory.
	Workers        []WorkerStatus `json:"workers,omitempty"`
	Checkpoint     string         `json:"checkpoint,omitempty"`
	SuspendMemory  uint64         `json:"suspend_memory_bytes,omitempty"`
	SuspendedBytes uint64         `json:"suspended_bytes,omitempty"`
}

// WorkerState is where a model warm worker is:
//
//	stopped ─▶ starting ─▶ ready ─▶ suspending ─▶ suspended ─▶ resuming ─▶ claimed
//	              │          ▲  ▲                     │            │         │
//	              ▼          │  └──── (release, kept resident) ◀───┼─────────┤
//	           failed ◀──────┴──────────── (error/exit) ◀──────────┘         │
//	                                suspending ◀──────── (release) ◀─────────┘
//
// failed and stopped (evicted from the host-memory budget) are restarted
// cold later. Only ready and suspended workers are claimable.
type WorkerState string

// Worker states.
const (
	WorkerStopped    WorkerState = "stopped"
	WorkerStarting   WorkerState = "starting"
	WorkerReady      WorkerState = "ready"
	WorkerSuspending WorkerState = "suspending"
	WorkerSuspended  WorkerState = "suspended"
	WorkerResuming   WorkerState = "resuming"
	WorkerClaimed    WorkerState = "claimed"
	WorkerFailed     WorkerState = "failed"
)

// AllWorkerStates lists every WorkerState, for metrics.
var AllWorkerStates = []WorkerState{WorkerStopped, WorkerStarting, WorkerReady, WorkerSuspending, WorkerSuspended, WorkerResuming, WorkerClaimed, WorkerFailed}

// WorkerStatus is one model warm worker in Status.
type WorkerStatus struct {
	Name   string      `json:"name"`
	State  WorkerState `json:"state"`
	Reason string      `json:"reason,omitempty"`
	// GPU is where the worker runs, or was suspended from.
	GPU    string `json:"gpu,omitempty"`
	PID    int    `json:"pid,omitempty"`
	Socket string `json:"socket,omitempty"`
	// SuspendedBytes is the host memory its checkpoint takes (0 unless
	// suspended).
	SuspendedBytes uint64 `json:"suspended_bytes"`
	// LastSuspendMs, LastResumeMs and LastColdStartMs are the latest
	// durations; Resumes, ColdStarts, Evictions and Failures count events.
	LastSuspendMs   float64    `json:"last_suspend_ms,omitempty"`
	LastResumeMs    float64    `json:"last_resume_ms,omitempty"`
	LastColdStartMs float64    `json:"last_cold_start_ms,omitempty"`
	Resumes         int        `json:"resumes"`
	ColdStarts      int        `json:"cold_starts"`
	Evictions       int        `json:"evictions"`
	Failures        int        `json:"failures"`
	LastUsed        *time.Time `json:"last_used,omitempty"`
	Claim           *ClaimInfo `json:"claim,omitempty"`
}

// ImageStatus is one configured image in Status.
type ImageStatus struct {
	Ref       string     `json:"ref"`
	Digest    string     `json:"digest,omitempty"`
	WarmedAt  *time.Time `json:"warmed_at,omitempty"`
	Warms     int        `json:"warms"`
	Chunks    int        `json:"chunks,omitempty"`
	Bytes     int64      `json:"bytes,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	Failures  int        `json:"failures,omitempty"`
	NextCheck time.Time  `json:"next_check"`
}
