package prewarm

import "github.com/lazyfs/lazyfs/prewarm/api"

// The API's types, errors and client live in package api (pure Go, no
// NVML, no cgo) so that clients such as the lazyfs CLI import only that;
// these aliases keep the daemon's code and its existing callers unchanged.
type (
	ComputeMode    = api.ComputeMode
	Process        = api.Process
	DeviceInfo     = api.DeviceInfo
	State          = api.State
	ClaimRequest   = api.ClaimRequest
	ClaimResult    = api.ClaimResult
	WorkerHandoff  = api.WorkerHandoff
	ReleaseRequest = api.ReleaseRequest
	ReleaseResult  = api.ReleaseResult
	GPUStatus      = api.GPUStatus
	ClaimInfo      = api.ClaimInfo
	Status         = api.Status
	ImageStatus    = api.ImageStatus
	Client         = api.Client
	WorkerState    = api.WorkerState
	WorkerStatus   = api.WorkerStatus
)

// Compute modes, states and the default socket (see package api).
const (
	ComputeDefault          = api.ComputeDefault
	ComputeExclusiveThread  = api.ComputeExclusiveThread
	ComputeProhibited       = api.ComputeProhibited
	ComputeExclusiveProcess = api.ComputeExclusiveProcess
	ComputeUnknown          = api.ComputeUnknown

	StateUnknown     = api.StateUnknown
	StateBusy        = api.StateBusy
	StateIdle        = api.StateIdle
	StateWarming     = api.StateWarming
	StateHeld        = api.StateHeld
	StateClaimed     = api.StateClaimed
	StateGrace       = api.StateGrace
	StateUnavailable = api.StateUnavailable

	DefaultSocket = api.DefaultSocket

	WorkerStopped    = api.WorkerStopped
	WorkerStarting   = api.WorkerStarting
	WorkerReady      = api.WorkerReady
	WorkerSuspending = api.WorkerSuspending
	WorkerSuspended  = api.WorkerSuspended
	WorkerResuming   = api.WorkerResuming
	WorkerClaimed    = api.WorkerClaimed
	WorkerFailed     = api.WorkerFailed
)

// AllStates lists every GPU state.
var AllStates = api.AllStates

// Sentinel errors (see package api).
var (
	ErrNoDriver       = api.ErrNoDriver
	ErrReportOnly     = api.ErrReportOnly
	ErrNotFound       = api.ErrNotFound
	ErrNoIdleGPU      = api.ErrNoIdleGPU
	ErrAlreadyClaimed = api.ErrAlreadyClaimed
	ErrBusy           = api.ErrBusy
	ErrNotClaimed     = api.ErrNotClaimed
	ErrHolder         = api.ErrHolder
	ErrBadRequest     = api.ErrBadRequest
	ErrNoWarmer       = api.ErrNoWarmer
	ErrWorkerNotFound = api.ErrWorkerNotFound
	ErrWorkerNotReady = api.ErrWorkerNotReady
	ErrNoCheckpoint   = api.ErrNoCheckpoint
)

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client { return api.NewClient(socket) }
