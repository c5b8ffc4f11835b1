package prewarm

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestWarmWorkerHandOver(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{WorkerArgv: []string{os.Args[0], "-test.run=^$"}}, "")
	s := pollUntil(t, m, "worker ready", stateIs(g0, StateHeld))
	if g := gpuIn(s, g0); g.HolderKind != kindWorker {
		t.Fatalf("holder kind %q, want worker", g.HolderKind)
	}
	if s.Mode != "warm-workers" {
		t.Fatalf("mode %q", s.Mode)
	}
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.HolderRelease != "handed_over" || res.Worker == nil || res.Worker.Socket == "" {
		t.Fatalf("claim %+v, want a handed-over worker", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := time.Now().UnixNano()
	done, err := WorkerOp(ctx, res.Worker.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if done < before {
		t.Fatalf("worker op finished at %d, before it was asked (%d)", done, before)
	}
	// The daemon no longer manages it: polling does not touch it.
	m.Poll(context.Background())
	if !alive(res.Worker.PID) {
		t.Fatal("handed-over worker killed while claimed")
	}
	if g := gpuIn(m.Status(), g0); g.Claim == nil || g.Claim.WorkerPID != res.Worker.PID {
		t.Fatalf("status does not show the handed-over worker: %+v", g)
	}
	rr, err := m.Release(context.Background(), ReleaseRequest{UUID: res.UUID, ClaimID: res.ClaimID})
	if err != nil || !rr.WorkerStopped {
		t.Fatalf("release %+v %v, want the worker stopped", rr, err)
	}
	waitDead(t, res.Worker.PID)
	s = pollUntil(t, m, "new worker", func(s Status) bool {
		g := gpuIn(s, g0)
		return g.State == StateHeld && g.HolderPID != res.Worker.PID
	})
	if g := gpuIn(s, g0); g.Crashes != 0 {
		t.Fatalf("stopping a handed-over worker counted as a crash: %+v", g)
	}
}

func TestWorkerExitedBeforeRelease(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{WorkerArgv: []string{os.Args[0], "-test.run=^$"}}, "")
	pollUntil(t, m, "worker ready", stateIs(g0, StateHeld))
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The claimer tells the worker to exit itself.
	conn, err := dialUnix(res.Worker.Socket)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("exit\n"))
	conn.Close()
	waitDead(t, res.Worker.PID)
	rr, err := m.Release(context.Background(), ReleaseRequest{UUID: res.UUID})
	if err != nil || rr.WorkerStopped {
		t.Fatalf("release %+v %v", rr, err)
	}
}

func TestFirstOpOnFakeDriver(t *testing.T) {
	t.Setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
	r, err := FirstOp(&FakeDriver{})
	if err != nil || r.UUID != "GPU-abc" || r.DoneUnixNano == 0 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := FirstOp(&FakeDriver{Mode: "fail-retain"}); err == nil {
		t.Fatal("fail-retain succeeded")
	}
}

func TestCheckUUID(t *testing.T) {
	if err := checkUUID("GPU-aa", "GPU-AA"); err != nil {
		t.Fatal(err)
	}
	if err := checkUUID("GPU-aa", "GPU-bb"); err == nil {
		t.Fatal("mismatch accepted")
	}
	if err := checkUUID("MIG-aa", "GPU-bb"); err != nil {
		t.Fatal("MIG devices are not checked")
	}
	if got := formatUUID([16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}); got != "GPU-deadbeef-0102-0304-0506-0708090a0b0c" {
		t.Fatalf("formatUUID %s", got)
	}
}
