package prewarm

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ModelWorker configures one model warm worker: a command that loads one
// model onto the GPU in CUDA_VISIBLE_DEVICES and serves requests on its
// socket (protocol in docs/prewarm.md). The daemon starts it once, waits
// for READY, and suspends it into host memory (see Checkpointer) until a
// claim names it.
type ModelWorker struct {
	// Name identifies the worker in claims and status ([A-Za-z0-9._-]).
	Name string
	// Argv is the worker's command line.
	Argv []string
	// GPU pins the worker to one GPU UUID; "" lets the daemon choose.
	GPU string
}

// kindModel is the child kind of a model worker.
const kindModel = "model-worker"

// modelWorker is one model worker's state; guarded by Manager.mu.
type modelWorker struct {
	cfg    ModelWorker
	state  WorkerState
	reason string
	gpu    string // where it runs, or was checkpointed
	child  *child
	gen    uint64 // bumped to invalidate a transition in flight
	claim  *claim

	suspendedBytes, lastBytes                uint64
	lastSuspend, lastResume, lastCold        time.Duration
	resumes, coldStarts, evictions, failures int
	lastUsed, retryAt                        time.Time
	// wanted: a claim asked for this evicted worker, so it starts even if
	// that evicts others.
	wanted bool
	// resident: released with room to spare, kept on the GPU (ready).
	resident bool
	// startingPID is the process of a start in flight (before READY).
	startingPID int
}

func validWorkerName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ValidateModelWorkers checks names (unique, [A-Za-z0-9._-], ≤ 64 bytes)
// and commands; NewManager skips (and logs) entries that fail it.
func ValidateModelWorkers(ws []ModelWorker) error {
	seen := map[string]bool{}
	for _, w := range ws {
		if err := validateModelWorker(w, seen); err != nil {
			return err
		}
	}
	return nil
}

func validateModelWorker(w ModelWorker, seen map[string]bool) error {
	switch {
	case !validWorkerName(w.Name):
		return fmt.Errorf("model worker %q: name must be 1-64 of [A-Za-z0-9._-]: %w", w.Name, ErrBadRequest)
	case len(w.Argv) == 0:
		return fmt.Errorf("model worker %s: empty command: %w", w.Name, ErrBadRequest)
	case seen[w.Name]:
		return fmt.Errorf("model worker %s: configured twice: %w", w.Name, ErrBadRequest)
	}
	seen[w.Name] = true
	return nil
}

// initWorkers sets up the configured model workers; called by NewManager.
func (m *Manager) initWorkers() {
	m.workers = map[string]*modelWorker{}
	seen := map[string]bool{}
	for _, w := range m.cfg.ModelWorkers {
		if err := validateModelWorker(w, seen); err != nil {
			m.log.Error("model worker skipped", "err", err)
			continue
		}
		m.workers[w.Name] = &modelWorker{cfg: w, state: WorkerStopped, reason: "not started yet"}
		m.workerOrder = append(m.workerOrder, w.Name)
		m.cfg.Metrics.setWorkerState(w.Name, WorkerStopped)
	}
	if len(m.workers) > 0 && m.gpus != nil {
		if m.cfg.Checkpointer == nil {
			m.ckptErr = fmt.Errorf("no checkpointer configured: %w", ErrNoCheckpoint)
		} else {
			m.ckptCaps, m.ckptErr = m.cfg.Checkpointer.Caps()
		}
		if m.ckptErr != nil {
			m.log.Warn("model workers cannot be suspended: they stay resident and restart cold after each claim", "err", m.ckptErr)
		}
	}
}

// canSuspend reports whether workers can be checkpointed.
func (m *Manager) canSuspend() bool { return m.cfg.Checkpointer != nil && m.ckptErr == nil }

// workerOnLocked names a model worker that occupies GPU uuid (running on
// it, or in a transition on it), or "".
func (m *Manager) workerOnLocked(uuid string) string {
	for _, n := range m.workerOrder {
		w := m.workers[n]
		if w.gpu != uuid {
			continue
		}
		switch w.state {
		case WorkerStarting, WorkerReady, WorkerSuspending, WorkerResuming, WorkerClaimed:
			return n
		}
	}
	return ""
}

// workerPIDsLocked returns the pids of model workers running on uuid.
func (m *Manager) workerPIDsLocked(uuid string) []int {
	var pids []int
	for _, w := range m.workers {
		switch {
		case w.gpu != uuid:
		case w.child != nil:
			pids = append(pids, w.child.pid)
		case w.state == WorkerStarting && w.startingPID != 0:
			pids = append(pids, w.startingPID)
		}
	}
	return pids
}

func (m *Manager) setWorkerState(w *modelWorker, s WorkerState, reason string) {
	w.state, w.reason = s, reason
	m.cfg.Metrics.setWorkerState(w.cfg.Name, s)
}

// suspendedTotalLocked is the host memory all suspended workers take.
func (m *Manager) suspendedTotalLocked() uint64 {
	var n uint64
	for _, w := range m.workers {
		n += w.suspendedBytes
	}
	return n
}

// committedLocked is the host memory the budget must keep for: what
// suspended workers take now, plus the last checkpoint size of workers
// that will be suspended again (claimed, resuming, suspending, resident),
// so that an evicted worker is not restarted only to evict another at the
// next release.
func (m *Manager) committedLocked() uint64 {
	var n uint64
	for _, w := range m.workers {
		switch w.state {
		case WorkerSuspended:
			n += w.suspendedBytes
		case WorkerClaimed, WorkerResuming, WorkerSuspending, WorkerReady:
			n += w.lastBytes
		}
	}
	return n
}

// gpuForWorkerLocked picks the GPU to start or resume w on: want if set,
// else w's own pinned GPU, else the eligible GPU with the most free
// memory. need is the GPU memory the worker will take (0 if unknown).
func (m *Manager) gpuForWorkerLocked(w *modelWorker, want string, need uint64) (string, error) {
	ok := func(uuid string) error {
		g := m.devs[uuid]
		if g == nil {
			return fmt.Errorf("gpu %s: %w", uuid, ErrNotFound)
		}
		// Utilisation alone (often our own workers') does not count: only
		// a whole-GPU claim, MIG, or a foreign process keeps workers off.
		pid, isForeign := foreign(&g.info)
		switch {
		case g.state == StateClaimed:
			return fmt.Errorf("gpu %s: claimed by %q: %w", uuid, g.claim.owner, ErrBusy)
		case g.state == StateUnavailable:
			return fmt.Errorf("gpu %s: %s: %w", uuid, g.reason, ErrBusy)
		case isForeign:
			return fmt.Errorf("gpu %s: foreign compute process pid %d: %w", uuid, pid, ErrBusy)
		case g.info.ComputeMode != ComputeDefault:
			return fmt.Errorf("gpu %s: compute mode %s: model workers need the default mode: %w", uuid, g.info.ComputeMode, ErrBusy)
		}
		if free := g.info.MemoryFree + ourMemory(&g.info); need > 0 && free < need+m.cfg.MemoryFloor {
			return fmt.Errorf("gpu %s: %d MiB free, worker needs %d MiB above the floor: %w", uuid, free>>20, need>>20, ErrBusy)
		}
		return nil
	}
	if want == "" {
		want = w.cfg.GPU
	}
	if want != "" {
		return want, ok(want)
	}
	best, bestFree := "", uint64(0)
	var firstErr error
	for _, u := range m.order {
		if err := ok(u); err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		if g := m.devs[u]; best == "" || g.info.MemoryFree > bestFree {
			best, bestFree = u, g.info.MemoryFree
		}
	}
	if best == "" {
		if firstErr == nil {
			firstErr = ErrNoIdleGPU
		}
		return "", fmt.Errorf("no GPU to run on: %w", firstErr)
	}
	return best, nil
}

// stepWorkersLocked starts stopped or failed workers that are due, and
// suspends the least recently used resident worker of a GPU whose free
// memory fell below the resident floor; m.mu is held.
func (m *Manager) stepWorkersLocked(now time.Time) {
	for _, n := range m.workerOrder {
		w := m.workers[n]
		switch w.state {
		case WorkerStopped, WorkerFailed:
			if now.Before(w.retryAt) {
				continue
			}
			if budget := m.cfg.SuspendMemory; w.evictions > 0 && !w.wanted && budget > 0 && m.canSuspend() &&
				m.committedLocked()+w.lastBytes > budget {
				w.reason = fmt.Sprintf("evicted: waiting for room in the host memory budget (%d MiB of %d MiB committed, needs %d MiB); a claim starts it", m.committedLocked()>>20, budget>>20, w.lastBytes>>20)
				continue
			}
			uuid, err := m.gpuForWorkerLocked(w, "", 0)
			if err != nil {
				w.reason = "waiting for a GPU: " + err.Error()
				continue
			}
			m.startWorkerLocked(w, uuid)
		}
	}
	if m.cfg.ResidentFloor == 0 || !m.canSuspend() {
		return
	}
	for _, u := range m.order {
		g := m.devs[u]
		if g.info.MemoryFree >= m.cfg.ResidentFloor {
			continue
		}
		var lru *modelWorker
		for _, w := range m.workers {
			if w.gpu == u && w.state == WorkerReady && w.claim == nil && (lru == nil || w.lastUsed.Before(lru.lastUsed)) {
				lru = w
			}
		}
		if lru != nil {
			m.log.Info("gpu below the resident floor: suspending its least recently used worker", "gpu", u, "worker", lru.cfg.Name, "free", g.info.MemoryFree)
			m.suspendWorkerLocked(lru, "resident floor")
		}
	}
}

// startWorkerLocked starts w cold on GPU uuid in the background.
func (m *Manager) startWorkerLocked(w *modelWorker, uuid string) {
	w.gen++
	gen := w.gen
	w.gpu = uuid
	w.resident = false
	if w.wanted {
		w.lastUsed = time.Now()
	}
	m.setWorkerState(w, WorkerStarting, "")
	sock := filepath.Join(m.workerDir(), "model-"+sanitize(w.cfg.Name)+"-"+strconv.FormatUint(gen, 10)+".sock")
	spec := childSpec{kind: kindModel, uuid: uuid, argv: w.cfg.Argv, socket: sock, envAllow: m.cfg.EnvAllow, cred: m.cfg.WorkerCredential,
		env: append(slices.Clone(m.cfg.ChildEnv), "CUDA_VISIBLE_DEVICES="+uuid, "LAZYFS_GPU_UUID="+uuid,
			"LAZYFS_WORKER_SOCKET="+sock, "LAZYFS_WORKER_NAME="+w.cfg.Name)}
	spec.started = func(pid int) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if w.gen == gen {
			w.startingPID = pid
		}
	}
	ctx := m.ctx
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t0 := time.Now()
		c, err := startChild(ctx, spec, m.cfg.ReadyTimeout, m.log)
		m.workerStarted(w, gen, c, err, time.Since(t0))
	}()
}

// workerStarted records a cold start's outcome and suspends the worker.
func (m *Manager) workerStarted(w *modelWorker, gen uint64, c *child, err error, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w.gen == gen {
		w.startingPID = 0
	}
	if w.gen != gen || w.state != WorkerStarting || m.stopped {
		if c != nil {
			m.stopChildLocked(c)
		}
		return
	}
	if err != nil {
		m.workerFailedLocked(w, "cold start failed: "+err.Error())
		return
	}
	w.child, w.lastCold = c, took
	w.coldStarts++
	w.wanted = false
	m.cfg.Metrics.workerEvent(w.cfg.Name, "cold_start")
	m.log.Info("model worker ready", "worker", w.cfg.Name, "gpu", w.gpu, "pid", c.pid, "cold_start", took.Round(time.Millisecond))
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-c.done
		m.workerExited(w, c)
	}()
	if !m.canSuspend() {
		m.setWorkerState(w, WorkerReady, "resident: cannot suspend: "+m.ckptErr.Error())
		return
	}
	m.setWorkerState(w, WorkerReady, "")
	m.suspendWorkerLocked(w, "start")
}

// suspendWorkerLocked moves a ready worker to host memory in the
// background.
func (m *Manager) suspendWorkerLocked(w *modelWorker, why string) {
	w.gen++
	gen, c, ctx := w.gen, w.child, m.ctx
	w.resident = false
	m.setWorkerState(w, WorkerSuspending, why)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(ctx, m.cfg.SuspendTimeout)
		defer cancel()
		t0 := time.Now()
		n, err := m.cfg.Checkpointer.Suspend(ctx, c.pid)
		took := time.Since(t0)
		m.mu.Lock()
		defer m.mu.Unlock()
		if w.gen != gen || w.child != c {
			return // it died or was stopped meanwhile
		}
		if err != nil {
			m.workerFailedLocked(w, fmt.Sprintf("checkpoint refused (%v); restarting it cold", err))
			return
		}
		w.suspendedBytes, w.lastBytes, w.lastSuspend = n, n, took
		m.setWorkerState(w, WorkerSuspended, "")
		if mt := m.cfg.Metrics; mt != nil {
			mt.workerSuspend.WithLabelValues(w.cfg.Name).Observe(took.Seconds())
			mt.workerSuspendedBytes.WithLabelValues(w.cfg.Name).Set(float64(n))
		}
		m.log.Info("model worker suspended", "worker", w.cfg.Name, "gpu", w.gpu, "bytes", n, "took", took.Round(time.Millisecond))
		m.enforceBudgetLocked(w)
	}()
}

// enforceBudgetLocked evicts least recently used suspended workers until
// the suspended total fits SuspendMemory; keep (just suspended) goes last.
func (m *Manager) enforceBudgetLocked(keep *modelWorker) {
	budget := m.cfg.SuspendMemory
	if budget == 0 {
		return
	}
	for m.suspendedTotalLocked() > budget {
		var lru *modelWorker
		for _, n := range m.workerOrder {
			w := m.workers[n]
			if w.state != WorkerSuspended || w == keep {
				continue
			}
			if lru == nil || w.lastUsed.Before(lru.lastUsed) {
				lru = w
			}
		}
		if lru == nil {
			if keep.suspendedBytes > budget {
				m.workerFailedLocked(keep, fmt.Sprintf("its checkpoint (%d MiB) exceeds the host memory budget --suspend-memory (%d MiB)", keep.suspendedBytes>>20, budget>>20))
				keep.retryAt = time.Now().Add(m.cfg.MaxBackoff)
			}
			return
		}
		m.log.Info("host memory budget exceeded: evicting the least recently used suspended worker", "worker", lru.cfg.Name, "bytes", lru.suspendedBytes, "budget", budget)
		m.stopWorkerLocked(lru)
		lru.evictions++
		lru.retryAt = time.Time{}
		m.setWorkerState(lru, WorkerStopped, fmt.Sprintf("evicted: host memory budget --suspend-memory %d MiB", budget>>20))
		m.cfg.Metrics.workerEvent(lru.cfg.Name, "eviction")
	}
}

// stopWorkerLocked kills w's process (in the background) and forgets it.
func (m *Manager) stopWorkerLocked(w *modelWorker) {
	w.gen++
	w.suspendedBytes = 0
	w.resident = false
	if mt := m.cfg.Metrics; mt != nil {
		mt.workerSuspendedBytes.WithLabelValues(w.cfg.Name).Set(0)
	}
	if c := w.child; c != nil {
		w.child = nil
		m.stopChildLocked(c)
	}
}

func (m *Manager) stopChildLocked(c *child) {
	c.stopping.Store(true)
	m.wg.Add(1)
	go func() { defer m.wg.Done(); c.stop() }()
}

// workerFailedLocked stops w and schedules a cold restart with backoff.
func (m *Manager) workerFailedLocked(w *modelWorker, why string) {
	m.stopWorkerLocked(w)
	w.claim = nil
	w.failures++
	backoff := min(m.cfg.RetryBackoff<<min(w.failures-1, 20), m.cfg.MaxBackoff)
	w.retryAt = time.Now().Add(backoff)
	m.setWorkerState(w, WorkerFailed, why)
	m.cfg.Metrics.workerEvent(w.cfg.Name, "failure")
	m.log.Warn("model worker failed", "worker", w.cfg.Name, "gpu", w.gpu, "err", why, "retry_in", backoff)
}

// workerExited handles a model worker process that died on its own.
func (m *Manager) workerExited(w *modelWorker, c *child) {
	if c.stopping.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if w.child != c {
		return
	}
	why := fmt.Sprintf("pid %d exited while %s: %s", c.pid, w.state, exitReason(c.exitErr))
	if t := c.stderrTail(); t != "" {
		why += ": " + lastLine(t)
	}
	w.child = nil // already reaped
	m.workerFailedLocked(w, why+"; restarting it cold")
}

// pingWorker checks that a worker answers "ping" on its socket.
func pingWorker(ctx context.Context, socket string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("worker %s: %w", socket, err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return fmt.Errorf("worker %s: ping: %w", socket, err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, maxWorkerLine)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("worker %s: no answer to ping within %v: %w", socket, timeout, err)
	}
	if strings.TrimSpace(line) != "pong" {
		return fmt.Errorf("worker %s: ping answered %q", socket, strings.TrimSpace(line))
	}
	return nil
}

// checkResumed verifies a resumed (or resident) worker before it is
// handed out: its process lives, the driver says it runs, it answers.
func (m *Manager) checkResumed(ctx context.Context, c *child) error {
	if c.exited() {
		return fmt.Errorf("pid %d exited", c.pid)
	}
	if m.canSuspend() {
		st, err := m.cfg.Checkpointer.State(c.pid)
		if err != nil {
			return err
		}
		if st != ProcRunning {
			return fmt.Errorf("pid %d: driver reports %s, not running", c.pid, st)
		}
	}
	if err := checkSocket(c.spec.socket); err != nil {
		return err
	}
	return pingWorker(ctx, c.spec.socket, m.cfg.PingTimeout)
}

// claimWorker hands model worker req.Worker to the caller, resuming it
// if suspended. Exactly one of concurrent claims of a worker wins.
func (m *Manager) claimWorker(ctx context.Context, req ClaimRequest) (ClaimResult, error) {
	t0 := time.Now()
	if req.UUID == "any" {
		req.UUID = ""
	}
	m.mu.Lock()
	w := m.workers[req.Worker]
	if w == nil {
		m.mu.Unlock()
		return ClaimResult{}, fmt.Errorf("worker %s: %w", req.Worker, ErrWorkerNotFound)
	}
	name := w.cfg.Name
	switch w.state {
	case WorkerClaimed, WorkerResuming:
		defer m.mu.Unlock()
		return ClaimResult{}, fmt.Errorf("worker %s: claim %s by %q: %w", name, w.claim.id, w.claim.owner, ErrAlreadyClaimed)
	case WorkerStopped, WorkerFailed:
		defer m.mu.Unlock()
		if w.state == WorkerStopped && w.evictions > 0 {
			w.wanted = true
			return ClaimResult{}, fmt.Errorf("worker %s: %s; starting it cold now, retry shortly: %w", name, w.reason, ErrWorkerNotReady)
		}
		return ClaimResult{}, fmt.Errorf("worker %s: %s: %s: %w", name, w.state, w.reason, ErrWorkerNotReady)
	case WorkerStarting, WorkerSuspending:
		defer m.mu.Unlock()
		return ClaimResult{}, fmt.Errorf("worker %s: %s, retry shortly: %w", name, w.state, ErrWorkerNotReady)
	}
	from, c := w.gpu, w.child
	to := from
	resume := w.state == WorkerSuspended
	if resume {
		// The GPU asked for; else the one it was checkpointed on; else,
		// if the driver can remap and the worker is not pinned, any.
		// Remapping pairs whole-GPU UUIDs only (not MIG devices).
		remap := m.ckptCaps.Remap && strings.HasPrefix(from, "GPU-")
		target := req.UUID
		if target == "" {
			target = from
			if _, err := m.gpuForWorkerLocked(w, from, w.lastBytes); err != nil && remap && w.cfg.GPU == "" {
				target = ""
			}
		}
		if target != "" && target != from && !remap {
			m.mu.Unlock()
			return ClaimResult{}, fmt.Errorf("worker %s: checkpointed on %s; this driver cannot restore it onto %s: %w", name, from, target, ErrBusy)
		}
		var err error
		if to, err = m.gpuForWorkerLocked(w, target, w.lastBytes); err == nil && to != from && !strings.HasPrefix(to, "GPU-") {
			err = fmt.Errorf("gpu %s: a checkpoint cannot be remapped onto a MIG device: %w", to, ErrBusy)
		}
		if err != nil {
			m.mu.Unlock()
			return ClaimResult{}, fmt.Errorf("worker %s: %w", name, err)
		}
	} else if req.UUID != "" && req.UUID != from {
		m.mu.Unlock()
		return ClaimResult{}, fmt.Errorf("worker %s: resident on %s, not %s: %w", name, from, req.UUID, ErrBusy)
	}
	cl := &claim{id: newID(), owner: req.Owner, since: t0, worker: c}
	w.claim = cl
	w.gen++
	gen := w.gen
	if resume {
		m.setWorkerState(w, WorkerResuming, "")
		w.gpu = to
	} else {
		m.setWorkerState(w, WorkerClaimed, "")
	}
	m.mu.Unlock()

	var resumeTook time.Duration
	var err error
	if resume {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.ResumeTimeout)
		t := time.Now()
		err = m.cfg.Checkpointer.Resume(rctx, c.pid, from, to)
		resumeTook = time.Since(t)
		cancel()
		if err != nil {
			err = fmt.Errorf("restore: %w", err)
		}
	}
	if err == nil {
		err = m.checkResumed(ctx, c)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if w.gen != gen || w.child != c {
		// It died (or the daemon stopped it) while we resumed it.
		return ClaimResult{}, fmt.Errorf("worker %s: %s: %s: %w", name, w.state, w.reason, ErrWorkerNotReady)
	}
	if err != nil {
		m.workerFailedLocked(w, fmt.Sprintf("handed out to nobody: %v; restarting it cold", err))
		return ClaimResult{}, fmt.Errorf("worker %s on %s: %w: %w", name, to, err, ErrHolder)
	}
	w.suspendedBytes = 0
	w.lastUsed = time.Now()
	w.resident = false
	m.setWorkerState(w, WorkerClaimed, "")
	res := ClaimResult{UUID: to, ClaimID: cl.id, HolderRelease: "handed_over",
		Worker: &WorkerHandoff{PID: c.pid, Socket: c.spec.socket, Name: name, CheckpointedOn: from, Remapped: from != to}}
	if resume {
		w.resumes++
		w.lastResume = resumeTook
		res.Worker.Resumed, res.Worker.ResumeMs = true, ms(resumeTook)
		if mt := m.cfg.Metrics; mt != nil {
			mt.workerResume.WithLabelValues(name).Observe(resumeTook.Seconds())
			mt.workerSuspendedBytes.WithLabelValues(name).Set(0)
			mt.workerEvent(name, "resume")
		}
	} else {
		res.Worker.CheckpointedOn = ""
	}
	res.ClaimMs = ms(time.Since(t0))
	m.log.Info("model worker claimed", "worker", name, "gpu", to, "claim", cl.id, "owner", req.Owner, "resumed", resume, "resume_ms", res.Worker.ResumeMs, "remapped", from != to)
	return res, nil
}

// releaseWorker ends a model-worker claim: the worker is suspended again,
// kept resident if its GPU has room above ResidentFloor, or (without the
// checkpoint API) restarted cold for the next claimer.
func (m *Manager) releaseWorker(req ReleaseRequest) (ReleaseResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.workers[req.Worker]
	if w == nil {
		return ReleaseResult{}, fmt.Errorf("worker %s: %w", req.Worker, ErrWorkerNotFound)
	}
	if w.state != WorkerClaimed || w.claim == nil {
		return ReleaseResult{}, fmt.Errorf("worker %s: state %s (%s): %w", req.Worker, w.state, w.reason, ErrNotClaimed)
	}
	if (req.ClaimID != "" && req.ClaimID != w.claim.id) || (req.UUID != "" && req.UUID != w.gpu) {
		return ReleaseResult{}, fmt.Errorf("worker %s: claim %s on %s is not the current claim: %w", req.Worker, req.ClaimID, req.UUID, ErrNotClaimed)
	}
	w.claim = nil
	w.lastUsed = time.Now()
	res := ReleaseResult{UUID: w.gpu, Worker: w.cfg.Name}
	g := m.devs[w.gpu]
	switch {
	case !m.canSuspend():
		m.stopWorkerLocked(w)
		w.retryAt = time.Time{}
		m.setWorkerState(w, WorkerStopped, "released; restarting it cold (cannot suspend: "+m.ckptErr.Error()+")")
		res.WorkerStopped = true
	case m.cfg.ResidentFloor > 0 && g != nil && g.info.MemoryFree >= m.cfg.ResidentFloor:
		w.resident = true
		m.setWorkerState(w, WorkerReady, "resident: its GPU has room above the resident floor")
	default:
		m.suspendWorkerLocked(w, "release")
	}
	res.State, res.WorkerState = StateIdle, w.state
	if g != nil {
		res.State = g.state
	}
	m.log.Info("model worker released", "worker", w.cfg.Name, "gpu", w.gpu, "now", w.state)
	return res, nil
}

// workerStatusLocked renders the model workers for Status.
func (m *Manager) workerStatusLocked(s *Status) {
	if len(m.workers) == 0 {
		return
	}
	switch {
	case m.cfg.Checkpointer == nil || m.ckptErr != nil:
		s.Checkpoint = "unsupported: " + errString(m.ckptErr)
	case m.ckptCaps.Remap:
		s.Checkpoint = "supported, with GPU remapping (" + m.ckptCaps.Driver + ")"
	default:
		s.Checkpoint = "supported, same GPU only (" + m.ckptCaps.Driver + ")"
	}
	s.SuspendMemory, s.SuspendedBytes = m.cfg.SuspendMemory, m.suspendedTotalLocked()
	for _, n := range m.workerOrder {
		w := m.workers[n]
		ws := WorkerStatus{Name: n, State: w.state, Reason: w.reason, GPU: w.gpu, SuspendedBytes: w.suspendedBytes,
			LastSuspendMs: ms(w.lastSuspend), LastResumeMs: ms(w.lastResume), LastColdStartMs: ms(w.lastCold),
			Resumes: w.resumes, ColdStarts: w.coldStarts, Evictions: w.evictions, Failures: w.failures}
		switch {
		case w.child != nil:
			ws.PID, ws.Socket = w.child.pid, w.child.spec.socket
		case w.state == WorkerStarting:
			ws.PID = w.startingPID
		}
		if !w.lastUsed.IsZero() {
			t := w.lastUsed
			ws.LastUsed = &t
		}
		if c := w.claim; c != nil {
			ws.Claim = &ClaimInfo{ID: c.id, Owner: c.owner, Since: c.since, WorkerPID: ws.PID}
		}
		s.Workers = append(s.Workers, ws)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// shutdownWorkersLocked stops every model worker process.
func (m *Manager) shutdownWorkersLocked() []*child {
	var out []*child
	for _, w := range m.workers {
		w.gen++
		if w.child != nil {
			w.child.stopping.Store(true)
			out = append(out, w.child)
			w.child = nil
		}
	}
	return out
}
