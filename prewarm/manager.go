package prewarm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config configures a Manager. Zero fields take the defaults noted.
type Config struct {
	// HolderArgv returns the command line of a holder child for one GPU;
	// nil disables holding (inventory and claims still work).
	HolderArgv func(uuid string, allocBytes uint64) []string
	// ChildEnv is added to every holder's and worker's environment.
	ChildEnv []string
	// WorkerArgv, when set, turns on warm-worker mode: this command is
	// kept running per idle GPU instead of a holder and handed to the
	// claimer. It gets CUDA_VISIBLE_DEVICES, LAZYFS_GPU_UUID and
	// LAZYFS_WORKER_SOCKET and must print "READY" once it serves.
	WorkerArgv []string
	// WorkerDir holds worker sockets (default DefaultWorkerDir). It must
	// be a directory only the daemon's uid can enter (see SecureDir); a
	// pre-existing one that is not is refused, never reused.
	WorkerDir string
	// EnvAllow lists the variables of the daemon's environment that
	// holders and workers inherit (names, or prefixes ending in "*"); nil
	// means DefaultEnvAllow. ChildEnv and the daemon's own variables are
	// added after the filter.
	EnvAllow []string
	// WorkerCredential, when set, runs warm workers as this uid/gid.
	WorkerCredential *syscall.Credential
	// MemoryFloor: never hold a GPU whose free memory (not counting the
	// daemon's own use) is below this many bytes.
	MemoryFloor uint64
	// AllowExclusive lets the daemon hold GPUs in an exclusive compute mode.
	AllowExclusive bool
	// HoldAlloc is the size of the holder's optional allocation.
	HoldAlloc uint64
	// IdleWindow is how long a GPU must be quiet before it is held (30s).
	IdleWindow time.Duration
	// UtilThreshold: utilisation above this percentage counts as activity.
	UtilThreshold int
	// Grace is how long a released GPU waits before it is warmed again (5s).
	Grace time.Duration
	// HandoffDelay keeps a holder alive this long after a claim in default
	// compute mode, so the device stays initialised while the job creates
	// its own context (10s). 0 releases at once; exclusive compute modes
	// always release at once.
	HandoffDelay time.Duration
	// NoHandoffDelay forces HandoffDelay to 0 (a zero HandoffDelay means
	// the default otherwise).
	NoHandoffDelay bool
	// PollInterval between NVML inventories (2s).
	PollInterval time.Duration
	// ReadyTimeout for a child's READY line (60s; warm workers may
	// import big frameworks).
	ReadyTimeout time.Duration
	// RetryBackoff after a failed or crashed holder, doubled per failure
	// up to MaxBackoff (2s, 5m).
	RetryBackoff, MaxBackoff time.Duration
	// HoldWhileBusy keeps a holder when a foreign (unclaimed) compute
	// process appears on the GPU, in default compute mode, so jobs that do
	// not use the claim API still find the device initialised. Off, the
	// holder is released to give its memory back.
	HoldWhileBusy bool
	// ModelWorkers are the model warm workers (issue 14): each is started
	// once, suspended into host memory through Checkpointer, and resumed
	// for a claim that names it.
	ModelWorkers []ModelWorker
	// Checkpointer suspends and resumes model workers; nil (or one whose
	// Caps fails) keeps them resident and restarts them cold after each
	// claim.
	Checkpointer Checkpointer
	// SuspendMemory bounds the host memory suspended workers take (0: no
	// bound); beyond it the least recently used is stopped (evicted) and
	// started again when there is room or a claim asks for it.
	SuspendMemory uint64
	// ResidentFloor: a released model worker stays resident (ready, no
	// resume needed) while its GPU has at least this much free memory;
	// when free memory drops below it the least recently used resident
	// worker is suspended. 0 suspends on every release.
	ResidentFloor uint64
	// SuspendTimeout and ResumeTimeout bound one checkpoint or restore
	// (60s each); PingTimeout bounds the health check of a resumed worker
	// before it is handed out (5s).
	SuspendTimeout, ResumeTimeout, PingTimeout time.Duration
	// EnablePersistence turns persistence mode on for every GPU at start.
	// Without it persistence mode is only reported, never changed.
	EnablePersistence bool
	Logger            *slog.Logger
	Metrics           *Metrics
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.IdleWindow, 30*time.Second)
	def(&c.Grace, 5*time.Second)
	def(&c.PollInterval, 2*time.Second)
	def(&c.ReadyTimeout, 60*time.Second)
	def(&c.RetryBackoff, 2*time.Second)
	def(&c.MaxBackoff, 5*time.Minute)
	def(&c.HandoffDelay, 10*time.Second)
	def(&c.SuspendTimeout, 60*time.Second)
	def(&c.ResumeTimeout, 60*time.Second)
	def(&c.PingTimeout, 5*time.Second)
	if c.NoHandoffDelay {
		c.HandoffDelay = 0
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Manager runs the per-GPU state machine. Create it with NewManager, drive
// it with Run, and call Claim, Release and Status from any goroutine.
type Manager struct {
	cfg        Config
	gpus       GPUs // nil in report-only mode
	reason     string
	log        *slog.Logger
	persistSet bool

	mu    sync.Mutex
	devs  map[string]*gpu
	order []string
	ctx   context.Context // Run's context; children are tied to it
	wg    sync.WaitGroup  // goroutines that start or stop children

	workers     map[string]*modelWorker
	workerOrder []string
	ckptCaps    CheckpointCaps
	ckptErr     error
	stopped     bool // shutdown began: start nothing new
}

type gpu struct {
	info       DeviceInfo
	state      State
	reason     string
	lastActive time.Time
	child      *child // managed holder or worker
	gen        uint64 // bumped to invalidate a warming goroutine
	warmCancel context.CancelFunc
	warmDone   chan struct{}
	claim      *claim
	graceUntil time.Time
	failures   int
	retryAt    time.Time
	crashes    int
	lastErr    string
}

type claim struct {
	id       string
	owner    string
	since    time.Time
	deferred *child // holder kept alive for HandoffDelay
	timer    *time.Timer
	worker   *child // handed-over warm worker
}

// NewManager returns a Manager over gpus. A nil gpus means report-only
// mode; reason says why (it is logged and shown in Status).
func NewManager(gpus GPUs, reason string, cfg Config) *Manager {
	cfg = cfg.withDefaults()
	m := &Manager{cfg: cfg, gpus: gpus, reason: reason, log: cfg.Logger, devs: map[string]*gpu{}, ctx: context.Background()}
	m.initWorkers()
	if cfg.Metrics != nil {
		v := 0.0
		if gpus == nil {
			v = 1
		}
		cfg.Metrics.reportOnly.Set(v)
	}
	return m
}

// ReportOnly reports whether the Manager manages no GPU.
func (m *Manager) ReportOnly() bool { return m.gpus == nil }

// Run polls the inventory until ctx is done, then stops every holder and
// unclaimed worker and returns. In report-only mode it just waits.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	if m.gpus == nil {
		m.log.Warn("report-only mode: no GPU is held or claimable; image warming still runs", "reason", m.reason)
		<-ctx.Done()
		return nil
	}
	m.log.Info("gpu pre-warm started", "driver", m.gpus.DriverVersion(), "holding", m.cfg.HolderArgv != nil, "warm_workers", len(m.cfg.WorkerArgv) > 0)
	t := time.NewTicker(m.cfg.PollInterval)
	defer t.Stop()
	for {
		m.Poll(ctx)
		select {
		case <-ctx.Done():
			m.shutdown()
			return nil
		case <-t.C:
		}
	}
}

// Poll takes one inventory and advances every GPU's state machine. Run
// calls it on every tick; tests call it directly.
func (m *Manager) Poll(ctx context.Context) {
	if m.gpus == nil {
		return
	}
	devs, err := m.gpus.Devices(ctx)
	if err != nil {
		m.log.Warn("gpu inventory failed", "err", err)
		return
	}
	if m.cfg.EnablePersistence && !m.persistSet {
		m.persistSet = true
		changed := false
		for _, d := range devs {
			if d.IsMIG() || d.Persistence == "enabled" {
				continue
			}
			if err := m.gpus.SetPersistence(ctx, d.UUID, true); err != nil {
				m.log.Error("enable persistence mode", "gpu", d.UUID, "err", err)
			} else {
				m.log.Info("persistence mode enabled (--enable-persistence)", "gpu", d.UUID)
				changed = true
			}
		}
		if changed {
			if devs, err = m.gpus.Devices(ctx); err != nil {
				m.log.Warn("gpu inventory failed", "err", err)
				return
			}
		}
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range devs {
		seen[d.UUID] = true
		g := m.devs[d.UUID]
		if g == nil {
			g = &gpu{state: StateUnknown, reason: "observing for the idle window", lastActive: now}
			m.devs[d.UUID] = g
			m.order = append(m.order, d.UUID)
			m.log.Info("gpu found", "gpu", d.UUID, "name", d.Name, "mig", d.IsMIG(), "compute_mode", d.ComputeMode, "persistence", d.Persistence, "memory_free", d.MemoryFree)
		}
		m.markOurs(g, &d)
		g.info = d
		m.step(d.UUID, g, now)
		if mt := m.cfg.Metrics; mt != nil {
			mt.setState(d.UUID, g.state)
			mt.heldBytes.WithLabelValues(d.UUID).Set(float64(ourMemory(&d)))
			mt.freeBytes.WithLabelValues(d.UUID).Set(float64(d.MemoryFree))
		}
	}
	if !m.stopped {
		m.stepWorkersLocked(now)
	}
	for _, uuid := range slices.Clone(m.order) {
		if seen[uuid] {
			continue
		}
		g := m.devs[uuid]
		m.log.Warn("gpu disappeared", "gpu", uuid)
		m.dropChildrenLocked(g)
		delete(m.devs, uuid)
		m.order = slices.DeleteFunc(m.order, func(s string) bool { return s == uuid })
		m.cfg.Metrics.forget(uuid)
	}
}

// markOurs flags the processes that are the daemon's own children.
func (m *Manager) markOurs(g *gpu, d *DeviceInfo) {
	pids := m.workerPIDsLocked(d.UUID)
	if g.child != nil {
		pids = append(pids, g.child.pid)
	}
	if c := g.claim; c != nil && c.deferred != nil {
		pids = append(pids, c.deferred.pid)
	}
	for i := range d.Processes {
		if slices.Contains(pids, int(d.Processes[i].PID)) {
			d.Processes[i].Ours = true
		}
	}
}

func ourMemory(d *DeviceInfo) uint64 {
	var n uint64
	for _, p := range d.Processes {
		if p.Ours {
			n += p.UsedMemory
		}
	}
	return n
}

func foreign(d *DeviceInfo) (uint32, bool) {
	for _, p := range d.Processes {
		if !p.Ours {
			return p.PID, true
		}
	}
	return 0, false
}

// step advances one GPU; m.mu is held.
func (m *Manager) step(uuid string, g *gpu, now time.Time) {
	d := &g.info
	if d.MIGEnabled {
		m.dropChildrenLocked(g)
		g.state, g.reason = StateUnavailable, "MIG enabled: its MIG devices are managed instead"
		return
	}
	switch g.state {
	case StateClaimed:
		return
	case StateGrace:
		if now.Before(g.graceUntil) {
			return
		}
		g.state, g.reason = StateIdle, ""
	}
	pid, isForeign := foreign(d)
	if isForeign || d.UtilGPU > m.cfg.UtilThreshold {
		g.lastActive = now
	}
	if isForeign {
		if g.child != nil && m.cfg.HoldWhileBusy && !d.ComputeMode.Exclusive() {
			if why := m.ineligible(g, now); why == "" || strings.HasPrefix(why, "holding disabled") {
				g.state, g.reason = StateBusy, fmt.Sprintf("foreign compute process pid %d (holder kept: hold-while-busy)", pid)
				return
			}
		}
		if g.child != nil || g.warmCancel != nil {
			m.log.Info("foreign compute process on a held gpu: releasing holder", "gpu", uuid, "pid", pid)
			m.dropChildrenLocked(g)
		}
		g.state, g.reason = StateBusy, fmt.Sprintf("foreign compute process pid %d", pid)
		return
	}
	if g.state == StateWarming {
		return
	}
	if quiet := now.Sub(g.lastActive); quiet < m.cfg.IdleWindow {
		switch g.state {
		case StateHeld, StateUnknown:
			// A held GPU stays held (the holder itself is quiet); a new
			// one is observed for a whole window first.
		default:
			g.state, g.reason = StateBusy, fmt.Sprintf("active within the idle window (utilisation %d%%)", d.UtilGPU)
		}
		return
	}
	// Idle.
	if why := m.ineligible(g, now); why != "" {
		if g.child != nil {
			m.log.Info("releasing holder", "gpu", uuid, "reason", why)
			m.dropChildrenLocked(g)
		}
		g.state, g.reason = StateIdle, why
		return
	}
	if g.child != nil {
		g.state, g.reason = StateHeld, ""
		return
	}
	m.warmLocked(uuid, g)
}

// ineligible says why an idle GPU must not be held, or "" if it may.
func (m *Manager) ineligible(g *gpu, now time.Time) string {
	d := &g.info
	switch {
	case m.cfg.HolderArgv == nil && len(m.cfg.WorkerArgv) == 0:
		return "holding disabled"
	case d.ComputeMode == ComputeProhibited:
		return "compute mode prohibited"
	case d.ComputeMode.Exclusive() && !m.cfg.AllowExclusive:
		return "compute mode " + string(d.ComputeMode) + " (use --allow-exclusive)"
	}
	if free := d.MemoryFree + ourMemory(d); free < m.cfg.MemoryFloor {
		return fmt.Sprintf("free memory %d MiB below the floor %d MiB", free>>20, m.cfg.MemoryFloor>>20)
	}
	if now.Before(g.retryAt) {
		return fmt.Sprintf("%s; retry in %v", g.lastErr, g.retryAt.Sub(now).Round(time.Millisecond))
	}
	return ""
}

// warmLocked starts a holder or worker in the background; m.mu is held.
func (m *Manager) warmLocked(uuid string, g *gpu) {
	spec := childSpec{uuid: uuid, env: append(slices.Clone(m.cfg.ChildEnv), "CUDA_VISIBLE_DEVICES="+uuid, "LAZYFS_GPU_UUID="+uuid),
		envAllow: m.cfg.EnvAllow}
	if len(m.cfg.WorkerArgv) > 0 {
		dir := m.workerDir()
		spec.kind, spec.argv, spec.cred = kindWorker, m.cfg.WorkerArgv, m.cfg.WorkerCredential
		spec.socket = filepath.Join(dir, sanitize(uuid)+"-"+strconv.FormatUint(g.gen+1, 10)+".sock")
		spec.env = append(spec.env, "LAZYFS_WORKER_SOCKET="+spec.socket)
	} else {
		spec.kind, spec.argv = kindHolder, m.cfg.HolderArgv(uuid, m.cfg.HoldAlloc)
	}
	g.gen++
	gen := g.gen
	ctx, cancel := context.WithCancel(m.ctx)
	done := make(chan struct{})
	g.state, g.reason, g.warmCancel, g.warmDone = StateWarming, "", cancel, done
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(done)
		defer cancel()
		c, err := startChild(ctx, spec, m.cfg.ReadyTimeout, m.log)
		m.warmed(uuid, gen, c, err)
	}()
}

// warmed records the outcome of a start; a start that lost its GPU to a
// claim (or to shutdown) is killed here, before warmDone closes.
func (m *Manager) warmed(uuid string, gen uint64, c *child, err error) {
	m.mu.Lock()
	g := m.devs[uuid]
	current := g != nil && g.gen == gen && g.state == StateWarming
	if current {
		g.warmCancel, g.warmDone = nil, nil
	}
	if !current || err != nil {
		if current {
			g.failures++
			backoff := m.cfg.RetryBackoff << min(g.failures-1, 20)
			backoff = min(backoff, m.cfg.MaxBackoff)
			g.retryAt = time.Now().Add(backoff)
			g.lastErr = err.Error()
			g.state, g.reason = StateIdle, g.lastErr
			m.cfg.Metrics.setState(uuid, g.state)
			m.log.Warn("holder start failed", "gpu", uuid, "err", err, "retry_in", backoff)
			if mt := m.cfg.Metrics; mt != nil {
				mt.holderExits.WithLabelValues(uuid, "start_failed").Inc()
			}
		}
		m.mu.Unlock()
		if c != nil {
			c.stop()
		}
		return
	}
	g.child = c
	g.failures = 0
	g.state, g.reason = StateHeld, ""
	m.cfg.Metrics.setState(uuid, g.state)
	m.log.Info("gpu held", "gpu", uuid, "kind", c.spec.kind, "pid", c.pid, "init_ms", c.ready.InitMs, "retain_ms", c.ready.RetainMs)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-c.done
		m.childExited(uuid, c)
	}()
	m.mu.Unlock()
}

// childExited handles a managed child that died on its own (a crash).
func (m *Manager) childExited(uuid string, c *child) {
	if c.stopping.Load() || c.handedOver.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.devs[uuid]
	if g == nil || g.child != c {
		return
	}
	g.child = nil
	g.crashes++
	g.failures++
	backoff := min(m.cfg.RetryBackoff<<min(g.failures-1, 20), m.cfg.MaxBackoff)
	g.retryAt = time.Now().Add(backoff)
	g.lastErr = fmt.Sprintf("%s pid %d exited: %s", c.spec.kind, c.pid, exitReason(c.exitErr))
	if t := c.stderrTail(); t != "" {
		g.lastErr += ": " + lastLine(t)
	}
	g.state, g.reason = StateIdle, g.lastErr
	m.cfg.Metrics.setState(uuid, g.state)
	m.log.Warn("holder exited unexpectedly", "gpu", uuid, "pid", c.pid, "err", g.lastErr, "retry_in", backoff)
	if mt := m.cfg.Metrics; mt != nil {
		mt.holderExits.WithLabelValues(uuid, "crashed").Inc()
	}
}

// dropChildrenLocked stops the GPU's managed child and any start in
// flight, in the background; m.mu is held.
func (m *Manager) dropChildrenLocked(g *gpu) {
	g.gen++
	if g.warmCancel != nil {
		g.warmCancel()
		g.warmCancel, g.warmDone = nil, nil
	}
	if c := g.child; c != nil {
		g.child = nil
		c.stopping.Store(true)
		m.wg.Add(1)
		go func() { defer m.wg.Done(); c.stop() }()
	}
}

func (m *Manager) shutdown() {
	m.mu.Lock()
	m.stopped = true
	stops := m.shutdownWorkersLocked()
	for _, g := range m.devs {
		g.gen++
		if g.warmCancel != nil {
			g.warmCancel()
		}
		if g.child != nil {
			stops = append(stops, g.child)
			g.child = nil
		}
		if c := g.claim; c != nil && c.deferred != nil {
			if c.timer != nil && c.timer.Stop() {
				m.wg.Done() // the AfterFunc will not run
			}
			stops = append(stops, c.deferred)
			c.deferred = nil
		}
	}
	m.mu.Unlock()
	for _, c := range stops {
		c.stop()
	}
	m.wg.Wait()
	m.log.Info("gpu pre-warm stopped", "children_stopped", len(stops))
}

var claimPreference = map[State]int{StateHeld: 0, StateWarming: 1, StateIdle: 2, StateGrace: 3, StateUnknown: 4}

// Claim hands one GPU to the caller. Exactly one of several concurrent
// claims for the same GPU wins; the others get ErrAlreadyClaimed.
func (m *Manager) Claim(ctx context.Context, req ClaimRequest) (ClaimResult, error) {
	t0 := time.Now()
	if m.gpus == nil {
		return ClaimResult{}, ErrReportOnly
	}
	if req.Worker != "" {
		return m.claimWorker(ctx, req)
	}
	m.mu.Lock()
	uuid, g, err := m.pickLocked(req.UUID)
	if err != nil {
		m.mu.Unlock()
		return ClaimResult{}, err
	}
	cl := &claim{id: newID(), owner: req.Owner, since: t0}
	g.claim = cl
	g.state, g.reason = StateClaimed, ""
	g.gen++
	c := g.child
	g.child = nil
	warmCancel, warmDone := g.warmCancel, g.warmDone
	g.warmCancel, g.warmDone = nil, nil
	exclusive := g.info.ComputeMode.Exclusive()
	m.cfg.Metrics.setState(uuid, StateClaimed)
	m.mu.Unlock()

	res := ClaimResult{UUID: uuid, ClaimID: cl.id, HolderRelease: "none"}
	if warmCancel != nil {
		// A holder was starting: make sure it is gone before the job runs.
		t := time.Now()
		warmCancel()
		<-warmDone
		res.HolderRelease, res.ReleaseMs = "now", ms(time.Since(t))
	}
	if c != nil {
		if c.spec.kind == kindWorker {
			if err := checkSocket(c.spec.socket); err != nil {
				// Never hand out a socket that is not the daemon's own.
				c.stop()
				m.mu.Lock()
				if g.claim == cl {
					g.claim, g.state, g.reason = nil, StateIdle, err.Error()
				}
				m.mu.Unlock()
				m.log.Error("warm worker socket refused", "gpu", uuid, "err", err)
				return ClaimResult{}, fmt.Errorf("gpu %s: warm worker: %w: %w", uuid, err, ErrHolder)
			}
		}
		switch {
		case c.spec.kind == kindWorker:
			c.handedOver.Store(true)
			res.HolderRelease = "handed_over"
			res.Worker = &WorkerHandoff{PID: c.pid, Socket: c.spec.socket}
			m.mu.Lock()
			cl.worker = c
			m.mu.Unlock()
		case exclusive || req.Release == "now" || m.cfg.HandoffDelay <= 0:
			d := c.stop()
			res.HolderRelease, res.ReleaseMs = "now", ms(d)
			if mt := m.cfg.Metrics; mt != nil {
				mt.release.WithLabelValues(uuid).Observe(d.Seconds())
			}
		default:
			res.HolderRelease, res.ReleaseAfterMs = "deferred", ms(m.cfg.HandoffDelay)
			c.stopping.Store(true)
			m.mu.Lock()
			cl.deferred = c
			m.wg.Add(1)
			cl.timer = time.AfterFunc(m.cfg.HandoffDelay, func() {
				defer m.wg.Done()
				m.stopDeferred(uuid, cl)
			})
			m.mu.Unlock()
		}
	}
	res.ClaimMs = ms(time.Since(t0))
	if mt := m.cfg.Metrics; mt != nil {
		mt.claim.WithLabelValues(uuid).Observe(time.Since(t0).Seconds())
	}
	m.log.Info("gpu claimed", "gpu", uuid, "claim", cl.id, "owner", req.Owner, "holder_release", res.HolderRelease, "release_ms", res.ReleaseMs)
	return res, nil
}

// stopDeferred kills a holder kept alive after a claim.
func (m *Manager) stopDeferred(uuid string, cl *claim) {
	m.mu.Lock()
	c := cl.deferred
	cl.deferred = nil
	m.mu.Unlock()
	if c == nil {
		return
	}
	d := c.stop()
	if mt := m.cfg.Metrics; mt != nil {
		mt.release.WithLabelValues(uuid).Observe(d.Seconds())
	}
}

// pickLocked chooses the GPU for a claim; m.mu is held.
func (m *Manager) pickLocked(uuid string) (string, *gpu, error) {
	if uuid != "" && uuid != "any" {
		g := m.devs[uuid]
		if g == nil {
			return "", nil, fmt.Errorf("gpu %s: %w", uuid, ErrNotFound)
		}
		switch g.state {
		case StateClaimed:
			return "", nil, fmt.Errorf("gpu %s: claim %s by %q: %w", uuid, g.claim.id, g.claim.owner, ErrAlreadyClaimed)
		case StateBusy, StateUnavailable:
			return "", nil, fmt.Errorf("gpu %s: %s: %w", uuid, g.reason, ErrBusy)
		}
		if pid, ok := foreign(&g.info); ok {
			return "", nil, fmt.Errorf("gpu %s: foreign compute process pid %d: %w", uuid, pid, ErrBusy)
		}
		if w := m.workerOnLocked(uuid); w != "" {
			return "", nil, fmt.Errorf("gpu %s: model worker %s runs on it: %w", uuid, w, ErrBusy)
		}
		return uuid, g, nil
	}
	best, bestRank := "", 1<<30
	for _, u := range m.order {
		g := m.devs[u]
		rank, ok := claimPreference[g.state]
		if !ok {
			continue
		}
		if _, f := foreign(&g.info); f || m.workerOnLocked(u) != "" {
			continue
		}
		if rank < bestRank {
			best, bestRank = u, rank
		}
	}
	if best == "" {
		return "", nil, ErrNoIdleGPU
	}
	return best, m.devs[best], nil
}

// Release ends a claim: a handed-over worker or deferred holder still
// running is stopped, and the GPU goes back to warm after the grace period.
func (m *Manager) Release(ctx context.Context, req ReleaseRequest) (ReleaseResult, error) {
	if m.gpus == nil {
		return ReleaseResult{}, ErrReportOnly
	}
	if req.Worker != "" {
		return m.releaseWorker(req)
	}
	m.mu.Lock()
	g := m.devs[req.UUID]
	if g == nil {
		m.mu.Unlock()
		return ReleaseResult{}, fmt.Errorf("gpu %s: %w", req.UUID, ErrNotFound)
	}
	if g.state != StateClaimed || g.claim == nil {
		m.mu.Unlock()
		return ReleaseResult{}, fmt.Errorf("gpu %s: state %s: %w", req.UUID, g.state, ErrNotClaimed)
	}
	cl := g.claim
	if req.ClaimID != "" && req.ClaimID != cl.id {
		m.mu.Unlock()
		return ReleaseResult{}, fmt.Errorf("gpu %s: claim id %s is not the current claim: %w", req.UUID, req.ClaimID, ErrNotClaimed)
	}
	g.claim = nil
	g.state, g.reason = StateGrace, ""
	g.graceUntil = time.Now().Add(m.cfg.Grace)
	g.lastActive = time.Time{}
	var deferred *child
	if cl.timer != nil && cl.timer.Stop() {
		m.wg.Done() // the AfterFunc will not run
	}
	deferred, cl.deferred = cl.deferred, nil
	if deferred != nil && !deferred.exited() && g.child == nil {
		// The job was shorter than the hand-off delay: the holder still
		// holds, so it becomes the GPU's holder again.
		deferred.stopping.Store(false)
		g.child, deferred = deferred, nil
	}
	worker := cl.worker
	m.cfg.Metrics.setState(req.UUID, StateGrace)
	m.mu.Unlock()

	res := ReleaseResult{UUID: req.UUID, State: StateGrace, WarmAfterMs: ms(m.cfg.Grace)}
	if deferred != nil {
		deferred.stop()
	}
	if worker != nil && !worker.exited() {
		if !worker.exitedOnItsOwn(2 * time.Second) {
			worker.terminate(2 * time.Second)
			res.WorkerStopped = true
		}
	}
	m.log.Info("gpu released", "gpu", req.UUID, "claim", cl.id, "held_for", time.Since(cl.since).Round(time.Millisecond))
	return res, nil
}

// Status returns a snapshot.
func (m *Manager) Status() Status {
	s := Status{Mode: "hold", GPUs: []GPUStatus{}}
	switch {
	case m.gpus == nil:
		s.Mode, s.Reason = "report-only", m.reason
		return s
	case len(m.cfg.WorkerArgv) > 0:
		s.Mode = "warm-workers"
	case m.cfg.HolderArgv == nil:
		s.Mode = "inventory"
	}
	s.DriverVersion = m.gpus.DriverVersion()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.order {
		g := m.devs[u]
		gs := GPUStatus{DeviceInfo: g.info, State: g.state, Reason: g.reason, HeldBytes: ourMemory(&g.info), Crashes: g.crashes}
		gs.Processes = slices.Clone(g.info.Processes)
		if gs.Processes == nil {
			gs.Processes = []Process{}
		}
		if g.child != nil {
			gs.HolderPID, gs.HolderKind = g.child.pid, g.child.spec.kind
		}
		if c := g.claim; c != nil {
			gs.Claim = &ClaimInfo{ID: c.id, Owner: c.owner, Since: c.since}
			if c.worker != nil {
				gs.Claim.WorkerPID = c.worker.pid
			}
		}
		if g.state == StateGrace {
			t := g.graceUntil
			gs.GraceUntil = &t
		}
		s.GPUs = append(s.GPUs, gs)
	}
	m.workerStatusLocked(&s)
	return s
}

func (m *Manager) workerDir() string {
	if m.cfg.WorkerDir != "" {
		return m.cfg.WorkerDir
	}
	return DefaultWorkerDir
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}
