package api

import "errors"

// Sentinel errors. Callers match them with errors.Is; the HTTP API carries
// them as a stable "code" string (see errorCodes) and the Client maps the
// code back to the same sentinel.
var (
	// ErrNoDriver means no NVIDIA driver (libnvidia-ml.so.1 or libcuda.so.1)
	// could be loaded, or cgo was not compiled in.
	ErrNoDriver = errors.New("no NVIDIA driver")
	// ErrNotRunning means no daemon listens on the API socket (the client's
	// error, never sent by the daemon).
	ErrNotRunning = errors.New("lazyfs-prewarm is not running")
	// ErrReportOnly means the daemon manages no GPU (no driver, no GPU) and
	// only reports.
	ErrReportOnly = errors.New("report-only mode: no GPU managed")
	// ErrNotFound means no GPU or MIG device has the given UUID.
	ErrNotFound = errors.New("gpu not found")
	// ErrNoIdleGPU means a claim for "any idle GPU" found none.
	ErrNoIdleGPU = errors.New("no idle gpu")
	// ErrAlreadyClaimed means the GPU is claimed by someone else.
	ErrAlreadyClaimed = errors.New("gpu already claimed")
	// ErrBusy means a foreign compute process uses the GPU, or it is a MIG
	// parent that cannot be claimed as a whole.
	ErrBusy = errors.New("gpu busy")
	// ErrNotClaimed means a release named a GPU (or claim id) that is not
	// claimed.
	ErrNotClaimed = errors.New("gpu not claimed")
	// ErrHolder means a holder or warm-worker process failed to start or
	// to report readiness.
	ErrHolder = errors.New("holder failed")
	// ErrBadRequest means an API request could not be decoded.
	ErrBadRequest = errors.New("bad request")
	// ErrNoWarmer means image warming has no cache owner to ask.
	ErrNoWarmer = errors.New("no image warmer configured")
	// ErrWorkerNotFound means no model worker has the given name.
	ErrWorkerNotFound = errors.New("worker not found")
	// ErrWorkerNotReady means the model worker exists but is starting,
	// suspending, failed or evicted: retry later.
	ErrWorkerNotReady = errors.New("worker not ready")
	// ErrNoCheckpoint means the CUDA driver lacks the checkpoint API
	// (cuCheckpointProcess*, r550+/CUDA 12.8) or refuses it.
	ErrNoCheckpoint = errors.New("cuda checkpoint unsupported")
)

// errorCodes maps each sentinel to the code the API uses on the wire.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrReportOnly, "report_only", 503},
	{ErrNoDriver, "no_driver", 503},
	{ErrNotFound, "not_found", 404},
	{ErrNoIdleGPU, "no_idle_gpu", 409},
	{ErrAlreadyClaimed, "already_claimed", 409},
	{ErrBusy, "busy", 409},
	{ErrNotClaimed, "not_claimed", 409},
	{ErrHolder, "holder_failed", 500},
	{ErrBadRequest, "bad_request", 400},
	{ErrNoWarmer, "no_warmer", 503},
	{ErrWorkerNotFound, "worker_not_found", 404},
	{ErrWorkerNotReady, "worker_not_ready", 409},
	{ErrNoCheckpoint, "no_checkpoint", 503},
}

// ErrorCode returns the wire code and HTTP status of err: the first
// sentinel it wraps, or "internal" and 500.
func ErrorCode(err error) (string, int) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	return "internal", 500
}

// ErrorOfCode returns the sentinel for a wire code, or nil.
func ErrorOfCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
