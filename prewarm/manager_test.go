package prewarm

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func holderArgv(uuid string, alloc uint64) []string {
	return []string{os.Args[0], "-test.run=^$"}
}

// newTestManager returns a Manager over fake with real holder processes
// (this test binary on the fake driver) and short timings.
func newTestManager(t *testing.T, fake *FakeGPUs, cfg Config, fakeCUDA string) *Manager {
	t.Helper()
	if cfg.HolderArgv == nil {
		cfg.HolderArgv = holderArgv
	}
	if fakeCUDA == "" {
		fakeCUDA = "1"
	}
	cfg.ChildEnv = append(cfg.ChildEnv, EnvFakeCUDA+"="+fakeCUDA)
	if len(cfg.WorkerArgv) > 0 {
		cfg.ChildEnv = append(cfg.ChildEnv, "LAZYFS_PREWARM_TEST_CHILD=worker")
		if cfg.WorkerDir == "" {
			cfg.WorkerDir = shortTempDir(t)
		}
	} else {
		cfg.ChildEnv = append(cfg.ChildEnv, "LAZYFS_PREWARM_TEST_CHILD=holder")
	}
	if cfg.IdleWindow == 0 {
		cfg.IdleWindow = time.Millisecond
	}
	if cfg.Grace == 0 {
		cfg.Grace = time.Millisecond
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Millisecond
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 20 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	m := NewManager(fake, "", cfg)
	t.Cleanup(m.shutdown)
	return m
}

// shortTempDir keeps unix socket paths under the 108-byte limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// pollUntil polls the manager until cond holds, failing after 20 s.
func pollUntil(t *testing.T, m *Manager, what string, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m.Poll(context.Background())
		s := m.Status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; status: %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gpuIn(s Status, uuid string) GPUStatus {
	for _, g := range s.GPUs {
		if g.UUID == uuid {
			return g
		}
	}
	return GPUStatus{}
}

func stateIs(uuid string, st State) func(Status) bool {
	return func(s Status) bool { return gpuIn(s, uuid).State == st }
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

const g0, g1 = "GPU-fake-0", "GPU-fake-1"

func TestIdleDetection(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{IdleWindow: 300 * time.Millisecond}, "")
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State != StateUnknown {
		t.Fatalf("first sight: state %s, want unknown (observing the window)", g.State)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: 4242, UsedMemory: 1 << 30}} })
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State != StateBusy || !strings.Contains(g.Reason, "4242") {
		t.Fatalf("foreign process: state %s (%s), want busy naming pid 4242", g.State, g.Reason)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = nil; d.UtilGPU = 80 })
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State != StateBusy {
		t.Fatalf("utilisation 80%%: state %s, want busy", g.State)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.UtilGPU = 0 })
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State != StateBusy {
		t.Fatalf("quiet for less than the window: state %s, want busy", g.State)
	}
	s := pollUntil(t, m, "held after the idle window", stateIs(g0, StateHeld))
	if g := gpuIn(s, g0); !alive(g.HolderPID) || g.HolderKind != kindHolder {
		t.Fatalf("held without a live holder: %+v", g)
	}
	// A foreign process appearing on a held GPU releases the holder.
	pid := gpuIn(s, g0).HolderPID
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: 777}} })
	pollUntil(t, m, "busy", stateIs(g0, StateBusy))
	waitDead(t, pid)
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClaimReleaseStateMachine(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{Grace: 200 * time.Millisecond}, "")
	ctx := context.Background()
	s := pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID

	res, err := m.Claim(ctx, ClaimRequest{UUID: g0, Owner: "job-1", Release: "now"})
	if err != nil {
		t.Fatal(err)
	}
	if res.UUID != g0 || res.HolderRelease != "now" || res.ClaimID == "" || res.ReleaseMs <= 0 {
		t.Fatalf("claim result %+v", res)
	}
	if alive(pid) {
		t.Fatalf("holder %d alive after a release-now claim", pid)
	}
	m.Poll(ctx)
	g := gpuIn(m.Status(), g0)
	if g.State != StateClaimed || g.Claim == nil || g.Claim.Owner != "job-1" || g.HolderPID != 0 {
		t.Fatalf("after claim: %+v", g)
	}
	// The job's own process is not foreign while claimed.
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: 31337}}; d.UtilGPU = 100 })
	m.Poll(ctx)
	if st := gpuIn(m.Status(), g0).State; st != StateClaimed {
		t.Fatalf("claimed GPU with the job running: %s", st)
	}
	if _, err := m.Claim(ctx, ClaimRequest{UUID: g0}); !errors.Is(err, ErrAlreadyClaimed) {
		t.Fatalf("second claim: %v, want ErrAlreadyClaimed", err)
	}
	if _, err := m.Release(ctx, ReleaseRequest{UUID: g0, ClaimID: "nope"}); !errors.Is(err, ErrNotClaimed) {
		t.Fatalf("release with a wrong claim id: %v", err)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = nil; d.UtilGPU = 0 })
	rr, err := m.Release(ctx, ReleaseRequest{UUID: g0, ClaimID: res.ClaimID})
	if err != nil || rr.State != StateGrace {
		t.Fatalf("release: %+v %v", rr, err)
	}
	m.Poll(ctx)
	if st := gpuIn(m.Status(), g0).State; st != StateGrace {
		t.Fatalf("right after release: %s, want grace", st)
	}
	if _, err := m.Release(ctx, ReleaseRequest{UUID: g0}); !errors.Is(err, ErrNotClaimed) {
		t.Fatalf("double release: %v", err)
	}
	s = pollUntil(t, m, "held again after grace", stateIs(g0, StateHeld))
	if np := gpuIn(s, g0).HolderPID; np == pid || !alive(np) {
		t.Fatalf("re-warmed holder pid %d (old %d)", np, pid)
	}
	if _, err := m.Release(ctx, ReleaseRequest{UUID: "GPU-nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("release unknown: %v", err)
	}
	if _, err := m.Claim(ctx, ClaimRequest{UUID: "GPU-nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim unknown: %v", err)
	}
}

func TestDeferredHolderRelease(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{HandoffDelay: 300 * time.Millisecond}, "")
	s := pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.HolderRelease != "deferred" || res.ReleaseAfterMs != 300 {
		t.Fatalf("claim %+v, want a deferred release", res)
	}
	if !alive(pid) {
		t.Fatal("holder killed at once; want it kept for the hand-off delay")
	}
	// The deferred holder is still ours, never a foreign process.
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: uint32(pid), UsedMemory: 500 << 20}} })
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.HeldBytes != 500<<20 || g.State != StateClaimed {
		t.Fatalf("deferred holder not counted as ours: %+v", g)
	}
	waitDead(t, pid)
}

func TestExclusiveComputeMode(t *testing.T) {
	fake := NewFakeGPUs(1)
	fake.Update(g0, func(d *DeviceInfo) { d.ComputeMode = ComputeExclusiveProcess })
	m := newTestManager(t, fake, Config{}, "")
	s := pollUntil(t, m, "idle", stateIs(g0, StateIdle))
	if g := gpuIn(s, g0); g.HolderPID != 0 || !strings.Contains(g.Reason, "exclusive") {
		t.Fatalf("exclusive GPU: %+v, want idle and not held", g)
	}
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if err != nil || res.HolderRelease != "none" {
		t.Fatalf("claim %+v %v", res, err)
	}

	// Told to, the daemon holds it, and a claim then releases at once even
	// though the default is a deferred release.
	fake2 := NewFakeGPUs(1)
	fake2.Update(g0, func(d *DeviceInfo) { d.ComputeMode = ComputeExclusiveProcess })
	m2 := newTestManager(t, fake2, Config{AllowExclusive: true, HandoffDelay: time.Hour}, "")
	s = pollUntil(t, m2, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	res, err = m2.Claim(context.Background(), ClaimRequest{UUID: g0})
	if err != nil || res.HolderRelease != "now" {
		t.Fatalf("claim on exclusive GPU: %+v %v, want release now", res, err)
	}
	if alive(pid) {
		t.Fatal("holder still alive when an exclusive-mode claim returned")
	}
}

func TestMemoryFloor(t *testing.T) {
	fake := NewFakeGPUs(1)
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 1 << 30 })
	m := newTestManager(t, fake, Config{MemoryFloor: 2 << 30}, "")
	s := pollUntil(t, m, "idle", stateIs(g0, StateIdle))
	if g := gpuIn(s, g0); !strings.Contains(g.Reason, "floor") {
		t.Fatalf("reason %q", g.Reason)
	}
	for i := 0; i < 5; i++ {
		m.Poll(context.Background())
	}
	if g := gpuIn(m.Status(), g0); g.State != StateIdle || g.HolderPID != 0 {
		t.Fatalf("held below the floor: %+v", g)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 10 << 30 })
	s = pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	// The holder's own memory does not count against the floor...
	fake.Update(g0, func(d *DeviceInfo) {
		d.MemoryFree = (2 << 30) - (100 << 20)
		d.Processes = []Process{{PID: uint32(pid), UsedMemory: 500 << 20}}
	})
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State != StateHeld {
		t.Fatalf("holder's own memory counted against the floor: %+v", g)
	}
	// ...but other pressure releases it.
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 100 << 20 })
	pollUntil(t, m, "released under pressure", stateIs(g0, StateIdle))
	waitDead(t, pid)
}

func TestMIGDevices(t *testing.T) {
	fake := NewFakeGPUs(0)
	fake.Set([]DeviceInfo{
		{UUID: "GPU-parent", Name: "H100", MIGEnabled: true, MemoryFree: 80 << 30, ComputeMode: ComputeDefault},
		{UUID: "MIG-a", ParentUUID: "GPU-parent", Name: "MIG 3g.40gb", MemoryFree: 40 << 30, ComputeMode: ComputeDefault, UtilGPU: -1},
		{UUID: "MIG-b", ParentUUID: "GPU-parent", Name: "MIG 3g.40gb", MemoryFree: 40 << 30, ComputeMode: ComputeDefault, UtilGPU: -1},
	})
	m := newTestManager(t, fake, Config{}, "")
	pollUntil(t, m, "both MIG devices held", func(s Status) bool {
		return gpuIn(s, "MIG-a").State == StateHeld && gpuIn(s, "MIG-b").State == StateHeld
	})
	if g := gpuIn(m.Status(), "GPU-parent"); g.State != StateUnavailable || g.HolderPID != 0 {
		t.Fatalf("MIG parent: %+v", g)
	}
	// Each holder was started for its own MIG device.
	m.mu.Lock()
	for _, u := range []string{"MIG-a", "MIG-b"} {
		if got := m.devs[u].child.ready.UUID; got != u {
			t.Errorf("holder for %s saw CUDA_VISIBLE_DEVICES device %q", u, got)
		}
	}
	m.mu.Unlock()
	if _, err := m.Claim(context.Background(), ClaimRequest{UUID: "GPU-parent"}); !errors.Is(err, ErrBusy) {
		t.Fatalf("claim MIG parent: %v, want ErrBusy", err)
	}
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		res, err := m.Claim(context.Background(), ClaimRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got[res.UUID] = true
	}
	if !got["MIG-a"] || !got["MIG-b"] {
		t.Fatalf("claims for any GPU got %v, want both MIG devices", got)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{}); !errors.Is(err, ErrNoIdleGPU) {
		t.Fatalf("third claim: %v, want ErrNoIdleGPU", err)
	}
}

func TestHolderCrash(t *testing.T) {
	fake := NewFakeGPUs(1)
	mt := NewMetrics()
	m := newTestManager(t, fake, Config{Metrics: mt}, "")
	s := pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s = pollUntil(t, m, "re-held by a new holder", func(s Status) bool {
		g := gpuIn(s, g0)
		return g.State == StateHeld && g.HolderPID != pid
	})
	if g := gpuIn(s, g0); g.Crashes != 1 {
		t.Fatalf("crashes = %d, want 1", g.Crashes)
	}
	if v := metricValue(t, mt, "lazyfs_prewarm_holder_failures_total", map[string]string{"uuid": g0, "reason": "crashed"}); v != 1 {
		t.Fatalf("crash counter %v", v)
	}
}

func TestHolderStartFailure(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{RetryBackoff: time.Hour}, "fail-init")
	s := pollUntil(t, m, "start failure recorded", func(s Status) bool {
		g := gpuIn(s, g0)
		return g.State == StateIdle && strings.Contains(g.Reason, "CUDA_ERROR_NO_DEVICE")
	})
	if g := gpuIn(s, g0); !strings.Contains(g.Reason, "retry in") && !strings.Contains(g.Reason, "holder") {
		t.Fatalf("reason %q", g.Reason)
	}
	// Backing off: no new attempt.
	for i := 0; i < 3; i++ {
		m.Poll(context.Background())
		if st := gpuIn(m.Status(), g0).State; st != StateIdle {
			t.Fatalf("retried during backoff: %s", st)
		}
	}
}

func TestClaimWhileWarming(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{}, "hang")
	pollUntil(t, m, "warming", stateIs(g0, StateWarming))
	m.mu.Lock()
	gen := m.devs[g0].gen
	m.mu.Unlock()
	_ = gen
	res, err := m.Claim(context.Background(), ClaimRequest{UUID: g0})
	if err != nil || res.HolderRelease != "now" {
		t.Fatalf("claim while warming: %+v %v", res, err)
	}
	if st := gpuIn(m.Status(), g0).State; st != StateClaimed {
		t.Fatalf("state %s", st)
	}
}

func TestPersistenceOnlyWhenAsked(t *testing.T) {
	fake := NewFakeGPUs(2)
	m := newTestManager(t, fake, Config{}, "")
	m.Poll(context.Background())
	if c := fake.PersistenceCalls(); len(c) != 0 {
		t.Fatalf("persistence changed without --enable-persistence: %v", c)
	}
	fake2 := NewFakeGPUs(2)
	m2 := newTestManager(t, fake2, Config{EnablePersistence: true}, "")
	m2.Poll(context.Background())
	if c := fake2.PersistenceCalls(); !c[g0] || !c[g1] {
		t.Fatalf("persistence calls %v", c)
	}
	if p := gpuIn(m2.Status(), g0).Persistence; p != "enabled" {
		t.Fatalf("persistence reported %q", p)
	}
}

func TestReportOnly(t *testing.T) {
	m := NewManager(nil, "nvml: no driver", Config{})
	if !m.ReportOnly() {
		t.Fatal("not report-only")
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{}); !errors.Is(err, ErrReportOnly) {
		t.Fatalf("claim: %v", err)
	}
	s := m.Status()
	if s.Mode != "report-only" || s.Reason != "nvml: no driver" || len(s.GPUs) != 0 {
		t.Fatalf("status %+v", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRunStopsHoldersOnShutdown(t *testing.T) {
	fake := NewFakeGPUs(2)
	m := newTestManager(t, fake, Config{PollInterval: 5 * time.Millisecond}, "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var pids []int
	deadline := time.Now().Add(20 * time.Second)
	for len(pids) < 2 {
		pids = pids[:0]
		for _, g := range m.Status().GPUs {
			if g.State == StateHeld {
				pids = append(pids, g.HolderPID)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("not held")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, p := range pids {
		if alive(p) {
			t.Fatalf("holder %d survived shutdown", p)
		}
	}
}

func TestGPUDisappears(t *testing.T) {
	fake := NewFakeGPUs(2)
	m := newTestManager(t, fake, Config{}, "")
	s := pollUntil(t, m, "held", stateIs(g1, StateHeld))
	pid := gpuIn(s, g1).HolderPID
	devs, _ := fake.Devices(context.Background())
	fake.Set(devs[:1])
	m.Poll(context.Background())
	if len(m.Status().GPUs) != 1 {
		t.Fatalf("gone GPU still listed")
	}
	waitDead(t, pid)
}

// metricValue reads one counter or gauge from the registry.
func metricValue(t *testing.T, mt *Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := mt.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
		}
	}
	return -1
}

func TestDeferredHolderAdoptedOnEarlyRelease(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{HandoffDelay: time.Hour}, "")
	s := pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if err != nil || res.HolderRelease != "deferred" {
		t.Fatalf("claim %+v %v", res, err)
	}
	if _, err := m.Release(context.Background(), ReleaseRequest{UUID: g0}); err != nil {
		t.Fatal(err)
	}
	s = pollUntil(t, m, "held", stateIs(g0, StateHeld))
	if got := gpuIn(s, g0).HolderPID; got != pid || !alive(pid) {
		t.Fatalf("holder after an early release: pid %d, want the kept holder %d", got, pid)
	}
	// It is managed again: a crash now counts.
	syscall.Kill(pid, syscall.SIGKILL)
	pollUntil(t, m, "crash noticed", func(s Status) bool { return gpuIn(s, g0).Crashes == 1 })
}

func TestHoldWhileBusy(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{HoldWhileBusy: true, MemoryFloor: 1 << 30}, "")
	s := pollUntil(t, m, "held", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: 999, UsedMemory: 1 << 30}} })
	m.Poll(context.Background())
	g := gpuIn(m.Status(), g0)
	if g.State != StateBusy || g.HolderPID != pid || !alive(pid) {
		t.Fatalf("foreign process with hold-while-busy: %+v, want busy with the holder kept", g)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{UUID: g0}); !errors.Is(err, ErrBusy) {
		t.Fatalf("claim of a busy GPU: %v", err)
	}
	// The foreign job leaves: held again by the same holder.
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = nil })
	s = pollUntil(t, m, "held again", stateIs(g0, StateHeld))
	if gpuIn(s, g0).HolderPID != pid {
		t.Fatal("holder replaced")
	}
	// Memory pressure still releases it.
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: 999}}; d.MemoryFree = 1 << 20 })
	pollUntil(t, m, "released", func(s Status) bool { return gpuIn(s, g0).HolderPID == 0 })
	waitDead(t, pid)
}
