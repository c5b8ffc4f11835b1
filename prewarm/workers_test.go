package prewarm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// newWorkerManager returns a Manager over ngpu fake GPUs whose model
// workers are real processes (this test binary serving the worker
// protocol on the fake CUDA driver), suspended and resumed through ck.
func newWorkerManager(t *testing.T, ngpu int, ck *FakeCheckpointer, cfg Config, names ...string) (*Manager, *FakeGPUs) {
	t.Helper()
	for _, n := range names {
		cfg.ModelWorkers = append(cfg.ModelWorkers, ModelWorker{Name: n, Argv: []string{os.Args[0], "-test.run=^$"}})
	}
	cfg.ChildEnv = append(cfg.ChildEnv, EnvFakeCUDA+"=1", "LAZYFS_PREWARM_TEST_CHILD=worker")
	cfg.WorkerDir = shortTempDir(t)
	if ck != nil {
		cfg.Checkpointer = ck
	}
	cfg.IdleWindow = time.Millisecond
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Millisecond
	}
	cfg.ReadyTimeout = 20 * time.Second
	cfg.PingTimeout = 500 * time.Millisecond
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	fake := NewFakeGPUs(ngpu)
	m := NewManager(fake, "", cfg)
	t.Cleanup(m.shutdown)
	return m, fake
}

func workerIn(s Status, name string) WorkerStatus {
	for _, w := range s.Workers {
		if w.Name == name {
			return w
		}
	}
	return WorkerStatus{}
}

func workerIs(name string, st WorkerState) func(Status) bool {
	return func(s Status) bool { return workerIn(s, name).State == st }
}

func allWorkers(st WorkerState) func(Status) bool {
	return func(s Status) bool {
		for _, w := range s.Workers {
			if w.State != st {
				return false
			}
		}
		return len(s.Workers) > 0
	}
}

// frozen reports whether pid is stopped (SIGSTOP), as /proc says.
func frozen(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && (s[i+2] == 'T' || s[i+2] == 't')
}

// waitFrozen waits (SIGSTOP is delivered asynchronously) for pid to stop.
func waitFrozen(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !frozen(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func workerOp(t *testing.T, socket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := WorkerOp(ctx, socket); err != nil {
		t.Fatalf("worker op: %v", err)
	}
}

// TestModelWorkerSuspendClaimRelease walks the main path: started cold,
// suspended (its process really frozen), claimed → resumed and serving,
// released → suspended again, with bytes and times in status and metrics.
func TestModelWorkerSuspendClaimRelease(t *testing.T) {
	ck := &FakeCheckpointer{Bytes: 3 << 30}
	m, _ := newWorkerManager(t, 1, ck, Config{}, "llama", "whisper")
	s := pollUntil(t, m, "both suspended", allWorkers(WorkerSuspended))
	w := workerIn(s, "llama")
	if w.SuspendedBytes != 3<<30 || s.SuspendedBytes != 6<<30 || w.ColdStarts != 1 || w.GPU != g0 || w.PID == 0 {
		t.Fatalf("suspended worker %+v (total %d)", w, s.SuspendedBytes)
	}
	if !waitFrozen(w.PID) {
		t.Fatalf("suspended worker pid %d is not frozen", w.PID)
	}
	if !strings.HasPrefix(s.Checkpoint, "supported") {
		t.Fatalf("checkpoint %q", s.Checkpoint)
	}

	res, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama", Owner: "job-1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.UUID != g0 || res.Worker == nil || !res.Worker.Resumed || res.Worker.Name != "llama" || res.Worker.PID != w.PID ||
		res.Worker.CheckpointedOn != g0 || res.Worker.Remapped {
		t.Fatalf("claim %+v %+v", res, res.Worker)
	}
	workerOp(t, res.Worker.Socket)
	s = m.Status()
	if w := workerIn(s, "llama"); w.State != WorkerClaimed || w.Resumes != 1 || w.SuspendedBytes != 0 || w.Claim == nil || w.Claim.Owner != "job-1" {
		t.Fatalf("claimed worker %+v", w)
	}
	if s.SuspendedBytes != 3<<30 {
		t.Fatalf("suspended total %d while one is claimed", s.SuspendedBytes)
	}
	// A whole-GPU claim cannot take the GPU from under the worker.
	if _, err := m.Claim(context.Background(), ClaimRequest{UUID: g0}); !errors.Is(err, ErrBusy) {
		t.Fatalf("whole-GPU claim under a claimed worker: %v", err)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{}); !errors.Is(err, ErrNoIdleGPU) {
		t.Fatalf("any-GPU claim under a claimed worker: %v", err)
	}

	if _, err := m.Release(context.Background(), ReleaseRequest{Worker: "llama", ClaimID: "wrong"}); !errors.Is(err, ErrNotClaimed) {
		t.Fatalf("release with a wrong claim id: %v", err)
	}
	rr, err := m.Release(context.Background(), ReleaseRequest{Worker: "llama", ClaimID: res.ClaimID})
	if err != nil || rr.Worker != "llama" || rr.WorkerState != WorkerSuspending {
		t.Fatalf("release %+v %v", rr, err)
	}
	s = pollUntil(t, m, "suspended again", workerIs("llama", WorkerSuspended))
	if w := workerIn(s, "llama"); w.PID != res.Worker.PID || w.ColdStarts != 1 || !waitFrozen(w.PID) {
		t.Fatalf("after release %+v, want the same process suspended", w)
	}
	if n := testutil.CollectAndCount(m.cfg.Metrics.workerResume); n != 1 {
		t.Fatalf("resume histogram series %d", n)
	}
	if v := testutil.ToFloat64(m.cfg.Metrics.workerState.WithLabelValues("llama", "suspended")); v != 1 {
		t.Fatalf("worker state metric %v", v)
	}
	if v := testutil.ToFloat64(m.cfg.Metrics.workerSuspendedBytes.WithLabelValues("whisper")); v != 3<<30 {
		t.Fatalf("suspended bytes metric %v", v)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{Worker: "nope"}); !errors.Is(err, ErrWorkerNotFound) {
		t.Fatalf("unknown worker: %v", err)
	}
}

// TestModelWorkerConcurrentClaims: of many simultaneous claims of one
// suspended worker exactly one wins; the rest are told it is claimed.
func TestModelWorkerConcurrentClaims(t *testing.T) {
	ck := &FakeCheckpointer{}
	m, _ := newWorkerManager(t, 1, ck, Config{}, "llama")
	pollUntil(t, m, "suspended", workerIs("llama", WorkerSuspended))
	ck.Lock()
	ck.Delay = 50 * time.Millisecond // a resume in flight while the others arrive
	ck.Unlock()
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama", Owner: fmt.Sprint("job-", i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && res.Worker != nil:
				wins++
			case errors.Is(err, ErrAlreadyClaimed):
				conflicts++
			default:
				t.Errorf("claim: %+v %v", res, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != n-1 {
		t.Fatalf("%d wins, %d conflicts; want 1 and %d", wins, conflicts, n-1)
	}
	if c := strings.Count(strings.Join(ck.Calls(), "\n"), "resume"); c != 1 {
		t.Fatalf("%d resumes, want 1: %v", c, ck.Calls())
	}
}

// TestModelWorkerBudgetEviction: with room for two checkpoints, the least
// recently used of three is stopped; a claim of it starts it cold, and
// then another goes. The total never stays above the budget.
func TestModelWorkerBudgetEviction(t *testing.T) {
	ck := &FakeCheckpointer{Bytes: 1 << 30}
	m, _ := newWorkerManager(t, 1, ck, Config{SuspendMemory: 2 << 30}, "a", "b", "c")
	s := pollUntil(t, m, "two suspended, one evicted", func(s Status) bool {
		n, e := 0, 0
		for _, w := range s.Workers {
			switch {
			case w.State == WorkerSuspended:
				n++
			case w.State == WorkerStopped && w.Evictions == 1:
				e++
			}
		}
		return n == 2 && e == 1
	})
	if s.SuspendedBytes > 2<<30 {
		t.Fatalf("suspended %d over the budget", s.SuspendedBytes)
	}
	var evicted WorkerStatus
	for _, w := range s.Workers {
		if w.State == WorkerStopped {
			evicted = w
		}
	}
	if !strings.Contains(evicted.Reason, "evicted") || evicted.PID != 0 {
		t.Fatalf("evicted worker %+v", evicted)
	}
	// It stays stopped while the budget is full...
	for i := 0; i < 5; i++ {
		m.Poll(context.Background())
	}
	if w := workerIn(m.Status(), evicted.Name); w.State != WorkerStopped {
		t.Fatalf("evicted worker restarted without room: %+v", w)
	}
	// ...until a claim asks for it.
	if _, err := m.Claim(context.Background(), ClaimRequest{Worker: evicted.Name}); !errors.Is(err, ErrWorkerNotReady) {
		t.Fatalf("claim of an evicted worker: %v", err)
	}
	pollUntil(t, m, "evicted worker back", func(s Status) bool {
		w := workerIn(s, evicted.Name)
		return w.State == WorkerSuspended && w.ColdStarts == 2
	})
	res, err := m.Claim(context.Background(), ClaimRequest{Worker: evicted.Name})
	if err != nil || !res.Worker.Resumed {
		t.Fatalf("claim after the cold start: %+v %v", res, err)
	}
	workerOp(t, res.Worker.Socket)
	s = m.Status()
	stopped := 0
	for _, w := range s.Workers {
		if w.State == WorkerStopped {
			stopped++
		}
	}
	if stopped != 1 || s.SuspendedBytes > 2<<30 {
		t.Fatalf("after the wanted restart: %d stopped, %d suspended bytes: %+v", stopped, s.SuspendedBytes, s.Workers)
	}
	// The claimed worker will come back to host memory: the evicted one
	// is not restarted into its room (which would only evict again).
	for i := 0; i < 5; i++ {
		m.Poll(context.Background())
	}
	s = m.Status()
	cold := 0
	for _, w := range s.Workers {
		cold += w.ColdStarts
	}
	if cold != 4 {
		t.Fatalf("%d cold starts, want 4 (3 + the wanted one): %+v", cold, s.Workers)
	}
}

// TestModelWorkerCheckpointRefused: a worker the driver refuses to
// checkpoint is failed with the driver's message, killed, restarted cold,
// and never handed out meanwhile.
func TestModelWorkerCheckpointRefused(t *testing.T) {
	ck := &FakeCheckpointer{SuspendErr: func(int) error {
		return errors.New("fake cuCheckpointProcessCheckpoint: CUDA_ERROR_NOT_SUPPORTED (IPC memory)")
	}}
	m, _ := newWorkerManager(t, 1, ck, Config{RetryBackoff: time.Hour}, "llama")
	s := pollUntil(t, m, "failed", workerIs("llama", WorkerFailed))
	w := workerIn(s, "llama")
	if !strings.Contains(w.Reason, "CUDA_ERROR_NOT_SUPPORTED") || !strings.Contains(w.Reason, "restarting it cold") || w.PID != 0 || w.Failures != 1 {
		t.Fatalf("failed worker %+v", w)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama"}); !errors.Is(err, ErrWorkerNotReady) {
		t.Fatalf("claim of a failed worker: %v", err)
	}
	// Once the driver accepts, the cold restart suspends it.
	ck.Lock()
	ck.SuspendErr = nil
	ck.Unlock()
	m.mu.Lock()
	m.workers["llama"].retryAt = time.Time{}
	m.mu.Unlock()
	s = pollUntil(t, m, "restarted and suspended", workerIs("llama", WorkerSuspended))
	if w := workerIn(s, "llama"); w.ColdStarts != 2 {
		t.Fatalf("worker %+v, want a second cold start", w)
	}
}

// TestModelWorkerResumeFails: a failing restore, or one that reports
// success but leaves the process frozen, fails the claim (no worker
// handed out), and the worker is restarted cold.
func TestModelWorkerResumeFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    func(*FakeCheckpointer)
		reason string
	}{
		{"restore error", func(f *FakeCheckpointer) {
			f.ResumeErr = func(int) error { return errors.New("fake cuCheckpointProcessRestore: CUDA_ERROR_OUT_OF_MEMORY") }
		}, "CUDA_ERROR_OUT_OF_MEMORY"},
		{"lying driver", func(f *FakeCheckpointer) { f.LeaveFrozen = true }, "ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck := &FakeCheckpointer{}
			m, _ := newWorkerManager(t, 1, ck, Config{}, "llama")
			s := pollUntil(t, m, "suspended", workerIs("llama", WorkerSuspended))
			pid := workerIn(s, "llama").PID
			ck.Lock()
			tc.set(ck)
			ck.Unlock()
			res, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama"})
			if !errors.Is(err, ErrHolder) || res.Worker != nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("claim with a broken resume: %+v %v", res, err)
			}
			waitDead(t, pid)
			ck.Lock()
			ck.ResumeErr, ck.LeaveFrozen = nil, false
			ck.Unlock()
			pollUntil(t, m, "restarted cold", func(s Status) bool {
				w := workerIn(s, "llama")
				return w.State == WorkerSuspended && w.ColdStarts == 2
			})
			res, err = m.Claim(context.Background(), ClaimRequest{Worker: "llama"})
			if err != nil || res.Worker.PID == pid {
				t.Fatalf("claim after restart: %+v %v", res, err)
			}
			workerOp(t, res.Worker.Socket)
		})
	}
}

// TestModelWorkerDiesWhileSuspended: a suspended worker killed from
// outside is noticed, its host memory accounted free, and it is restarted.
func TestModelWorkerDiesWhileSuspended(t *testing.T) {
	ck := &FakeCheckpointer{}
	m, _ := newWorkerManager(t, 1, ck, Config{RetryBackoff: time.Hour}, "llama")
	s := pollUntil(t, m, "suspended", workerIs("llama", WorkerSuspended))
	pid := workerIn(s, "llama").PID
	syscall.Kill(pid, syscall.SIGKILL)
	s = pollUntil(t, m, "failed", workerIs("llama", WorkerFailed))
	w := workerIn(s, "llama")
	if !strings.Contains(w.Reason, "exited while suspended") || w.SuspendedBytes != 0 || s.SuspendedBytes != 0 {
		t.Fatalf("dead worker %+v (total %d)", w, s.SuspendedBytes)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama"}); !errors.Is(err, ErrWorkerNotReady) {
		t.Fatalf("claim of a dead worker: %v", err)
	}
	m.mu.Lock()
	m.workers["llama"].retryAt = time.Time{}
	m.mu.Unlock()
	pollUntil(t, m, "restarted", workerIs("llama", WorkerSuspended))
}

// TestModelWorkerWithoutCheckpointAPI: a driver without the API leaves
// workers resident with a clear reason; a claim hands the running worker
// over, and its release restarts it cold for the next claimer.
func TestModelWorkerWithoutCheckpointAPI(t *testing.T) {
	ck := &FakeCheckpointer{NoAPI: true}
	m, _ := newWorkerManager(t, 1, ck, Config{}, "llama")
	s := pollUntil(t, m, "ready", workerIs("llama", WorkerReady))
	w := workerIn(s, "llama")
	if !strings.Contains(w.Reason, "cannot suspend") || !strings.Contains(s.Checkpoint, "unsupported") || !strings.Contains(s.Checkpoint, "r550") {
		t.Fatalf("status %q / worker %+v", s.Checkpoint, w)
	}
	res, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama"})
	if err != nil || res.Worker.Resumed || res.Worker.PID != w.PID {
		t.Fatalf("claim %+v %v", res, err)
	}
	workerOp(t, res.Worker.Socket)
	rr, err := m.Release(context.Background(), ReleaseRequest{Worker: "llama"})
	if err != nil || !rr.WorkerStopped {
		t.Fatalf("release %+v %v", rr, err)
	}
	waitDead(t, w.PID)
	pollUntil(t, m, "restarted cold", func(s Status) bool {
		w := workerIn(s, "llama")
		return w.State == WorkerReady && w.ColdStarts == 2
	})
	if len(ck.Calls()) != 0 {
		t.Fatalf("checkpoint calls without the API: %v", ck.Calls())
	}
}

// TestModelWorkerGPUChoice: a suspended worker resumes on its own GPU; if
// that GPU is taken, on another only when the driver can remap, and the
// reply says which GPU it is on.
func TestModelWorkerGPUChoice(t *testing.T) {
	for _, remap := range []bool{false, true} {
		t.Run(fmt.Sprint("remap=", remap), func(t *testing.T) {
			ck := &FakeCheckpointer{Remap: remap}
			m, _ := newWorkerManager(t, 2, ck, Config{}, "llama")
			s := pollUntil(t, m, "suspended", workerIs("llama", WorkerSuspended))
			home := workerIn(s, "llama").GPU
			other := g1
			if home == g1 {
				other = g0
			}
			// Explicitly elsewhere.
			res, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama", UUID: other})
			if !remap {
				if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "cannot restore it onto") {
					t.Fatalf("claim onto another GPU without remap: %+v %v", res, err)
				}
			} else {
				if err != nil || res.UUID != other || !res.Worker.Remapped || res.Worker.CheckpointedOn != home {
					t.Fatalf("remapped claim %+v %+v %v", res, res.Worker, err)
				}
				workerOp(t, res.Worker.Socket)
				if _, err := m.Release(context.Background(), ReleaseRequest{Worker: "llama"}); err != nil {
					t.Fatal(err)
				}
				pollUntil(t, m, "suspended", workerIs("llama", WorkerSuspended))
				home = other
				other = map[string]string{g0: g1, g1: g0}[home]
			}
			// Its own GPU taken by a whole-GPU claim.
			if _, err := m.Claim(context.Background(), ClaimRequest{UUID: home}); err != nil {
				t.Fatal(err)
			}
			res, err = m.Claim(context.Background(), ClaimRequest{Worker: "llama"})
			if !remap {
				if !errors.Is(err, ErrBusy) {
					t.Fatalf("claim with its GPU taken, no remap: %+v %v", res, err)
				}
				return
			}
			if err != nil || res.UUID != other || !res.Worker.Remapped {
				t.Fatalf("claim with its GPU taken: %+v %v", res, err)
			}
		})
	}
}

// TestModelWorkerResidentLRU: with a resident floor, a released worker
// stays resident (claimed again without a resume) until its GPU's free
// memory drops below the floor, when it is suspended.
func TestModelWorkerResidentLRU(t *testing.T) {
	ck := &FakeCheckpointer{}
	m, fake := newWorkerManager(t, 1, ck, Config{ResidentFloor: 8 << 30}, "a", "b")
	pollUntil(t, m, "suspended", allWorkers(WorkerSuspended))
	for _, n := range []string{"a", "b"} {
		res, err := m.Claim(context.Background(), ClaimRequest{Worker: n})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Release(context.Background(), ReleaseRequest{Worker: n, ClaimID: res.ClaimID}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // distinct last-used times
	}
	pollUntil(t, m, "both resident", allWorkers(WorkerReady))
	res, err := m.Claim(context.Background(), ClaimRequest{Worker: "a"})
	if err != nil || res.Worker.Resumed {
		t.Fatalf("claim of a resident worker %+v %v", res, err)
	}
	workerOp(t, res.Worker.Socket)
	if _, err := m.Release(context.Background(), ReleaseRequest{Worker: "a"}); err != nil {
		t.Fatal(err)
	}
	// Memory gets tight: "b" is now the least recently used resident.
	// One poll sees the tight memory; suspending "b" frees enough.
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 4 << 30 })
	m.Poll(context.Background())
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 79 << 30 })
	s := pollUntil(t, m, "LRU suspended", workerIs("b", WorkerSuspended))
	if w := workerIn(s, "a"); w.State != WorkerReady {
		t.Fatalf("most recently used worker %+v, want still resident", w)
	}
	fake.Update(g0, func(d *DeviceInfo) { d.MemoryFree = 4 << 30 })
	pollUntil(t, m, "next suspended", allWorkers(WorkerSuspended))
}

// TestModelWorkerReportOnly: without GPUs nothing starts and claims say
// report-only, as before.
func TestModelWorkerReportOnly(t *testing.T) {
	m := NewManager(nil, "no driver", Config{ModelWorkers: []ModelWorker{{Name: "llama", Argv: []string{"/bin/false"}}}})
	if _, err := m.Claim(context.Background(), ClaimRequest{Worker: "llama"}); !errors.Is(err, ErrReportOnly) {
		t.Fatalf("claim: %v", err)
	}
	if err := ValidateModelWorkers([]ModelWorker{{Name: "a b", Argv: []string{"x"}}}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad name accepted: %v", err)
	}
	if err := ValidateModelWorkers([]ModelWorker{{Name: "a", Argv: []string{"x"}}, {Name: "a", Argv: []string{"y"}}}); err == nil {
		t.Fatal("duplicate name accepted")
	}
}

// TestCUDACheckpointerWithoutDriver runs the real libcuda checkpointer on
// this machine: without a driver it must say so with ErrNoCheckpoint.
func TestCUDACheckpointerWithoutDriver(t *testing.T) {
	if _, err := os.Stat("/dev/nvidiactl"); err == nil {
		t.Skip("an NVIDIA driver is present")
	}
	ck := NewCUDACheckpointer()
	if _, err := ck.Caps(); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("caps without a driver: %v", err)
	}
	if _, err := ck.Suspend(context.Background(), os.Getpid()); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("suspend without a driver: %v", err)
	}
}

func TestParseUUID(t *testing.T) {
	b := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	got, err := parseUUID(formatUUID(b))
	if err != nil || got != b {
		t.Fatalf("round trip %x %v", got, err)
	}
	for _, bad := range []string{"", "GPU-", "MIG-1234", "GPU-zzzzzzzz-0000-0000-0000-000000000000", "GPU-00000000-0000-0000-0000-00000000000"} {
		if _, err := parseUUID(bad); err == nil {
			t.Errorf("parseUUID(%q) accepted", bad)
		}
	}
}

// TestModelWorkerStartingIsOurs: a model worker still starting (before
// READY) shows up in NVML; it must count as the daemon's own process, not
// as a foreign one that makes the GPU busy.
func TestModelWorkerStartingIsOurs(t *testing.T) {
	m, fake := newWorkerManager(t, 1, &FakeCheckpointer{}, Config{
		ModelWorkers: []ModelWorker{{Name: "slow", Argv: []string{"/bin/sh", "-c", `sleep 1; exec "$0" -test.run=^$`, os.Args[0]}}},
	})
	s := pollUntil(t, m, "starting with a pid", func(s Status) bool {
		w := workerIn(s, "slow")
		return w.State == WorkerStarting && w.PID != 0
	})
	pid := workerIn(s, "slow").PID
	fake.Update(g0, func(d *DeviceInfo) { d.Processes = []Process{{PID: uint32(pid), UsedMemory: 500 << 20}} })
	m.Poll(context.Background())
	if g := gpuIn(m.Status(), g0); g.State == StateBusy || strings.Contains(g.Reason, "foreign") {
		t.Fatalf("starting worker counted as foreign: %+v", g)
	}
	pollUntil(t, m, "suspended", workerIs("slow", WorkerSuspended))
}
