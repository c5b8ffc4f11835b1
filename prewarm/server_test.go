package prewarm

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// startServer serves m's API on a real unix socket and returns a client.
func startServer(t *testing.T, m *Manager, images *ImageKeeper) *Client {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "prewarm.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &Server{Manager: m, Images: images}
	go func() { done <- Serve(ctx, l, srv.Handler()) }()
	c := NewClient(sock)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return c
}

func TestConcurrentClaimsOneWins(t *testing.T) {
	fake := NewFakeGPUs(2)
	m := newTestManager(t, fake, Config{NoHandoffDelay: true}, "")
	pollUntil(t, m, "both held", func(s Status) bool {
		return gpuIn(s, g0).State == StateHeld && gpuIn(s, g1).State == StateHeld
	})
	c := startServer(t, m, nil)
	ctx := context.Background()

	const n = 32
	claimAll := func(uuid string) (wins []ClaimResult, errs []error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := c.Claim(ctx, ClaimRequest{UUID: uuid, Owner: "racer"})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				} else {
					wins = append(wins, r)
				}
			}()
		}
		close(start)
		wg.Wait()
		return wins, errs
	}
	wins, errs := claimAll(g0)
	if len(wins) != 1 || wins[0].UUID != g0 {
		t.Fatalf("%d claims for %s won (%+v), want exactly 1", len(wins), g0, wins)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrAlreadyClaimed) {
			t.Fatalf("losing claim: %v, want ErrAlreadyClaimed", err)
		}
	}
	// "any idle GPU": only GPU 1 is left, so again one winner.
	wins, errs = claimAll("")
	if len(wins) != 1 || wins[0].UUID != g1 {
		t.Fatalf("claims for any GPU: %d won (%+v), want exactly 1 on %s", len(wins), wins, g1)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrNoIdleGPU) {
			t.Fatalf("losing claim: %v, want ErrNoIdleGPU", err)
		}
	}
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range s.GPUs {
		if g.State != StateClaimed || g.Claim == nil || g.HolderPID != 0 {
			t.Fatalf("after the race: %+v", g)
		}
	}
	// Releases race too: one succeeds.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Release(ctx, ReleaseRequest{UUID: g0}); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			} else if !errors.Is(err, ErrNotClaimed) {
				t.Errorf("release: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d releases succeeded, want 1", ok)
	}
}

func TestAPIErrorsAndStatus(t *testing.T) {
	fake := NewFakeGPUs(1)
	m := newTestManager(t, fake, Config{}, "")
	m.Poll(context.Background())
	c := startServer(t, m, nil)
	ctx := context.Background()
	if _, err := c.Claim(ctx, ClaimRequest{UUID: "GPU-missing"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim missing: %v", err)
	}
	if _, err := c.Release(ctx, ReleaseRequest{}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("release without uuid: %v", err)
	}
	resp, err := unixClient(c.Socket).Post("http://x/v1/claim", "application/json", stringsReader(`{"uuid": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad JSON: %s", resp.Status)
	}
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != "hold" || len(s.GPUs) != 1 || s.GPUs[0].UUID != g0 || s.DriverVersion != "fake" {
		t.Fatalf("status %+v", s)
	}
	resp, err = unixClient(c.Socket).Get("http://x/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz %s", resp.Status)
	}
}

func TestReportOnlyOverHTTP(t *testing.T) {
	m := NewManager(nil, "nvml init: ERROR_LIBRARY_NOT_FOUND", Config{})
	k := NewImageKeeper(ImageKeeperConfig{Refs: []string{"example.com/a:1"}})
	c := startServer(t, m, k)
	s, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != "report-only" || len(s.Images) != 1 || s.Images[0].Ref != "example.com/a:1" {
		t.Fatalf("status %+v", s)
	}
	if _, err := c.Claim(context.Background(), ClaimRequest{}); !errors.Is(err, ErrReportOnly) {
		t.Fatalf("claim: %v", err)
	}
}

func TestListenUnixRefusesLiveSocket(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(sock); err == nil {
		t.Fatal("second listener on a live socket")
	}
	l.Close()
	// net.UnixListener.Close removes the file; a stale one is replaced.
	os.WriteFile(sock+"x", nil, 0o600)
	if _, err := ListenUnix(sock + "x"); err == nil {
		t.Fatal("listened over a regular file")
	}
	l2, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	l2.Close()
}

func TestMetricsExposed(t *testing.T) {
	fake := NewFakeGPUs(1)
	mt := NewMetrics()
	m := newTestManager(t, fake, Config{Metrics: mt, NoHandoffDelay: true}, "")
	pollUntil(t, m, "held", stateIs(g0, StateHeld))
	if v := metricValue(t, mt, "lazyfs_prewarm_gpu_state", map[string]string{"uuid": g0, "state": "held"}); v != 1 {
		t.Fatalf("state gauge held = %v", v)
	}
	if _, err := m.Claim(context.Background(), ClaimRequest{}); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, mt, "lazyfs_prewarm_claim_seconds", map[string]string{"uuid": g0}); v != 1 {
		t.Fatalf("claim histogram count = %v", v)
	}
	if v := metricValue(t, mt, "lazyfs_prewarm_holder_release_seconds", map[string]string{"uuid": g0}); v != 1 {
		t.Fatalf("release histogram count = %v", v)
	}
	srv := &Server{Manager: m}
	rec := newRecorder()
	srv.MetricsHandler(mt).ServeHTTP(rec, mustReq("GET", "/metrics"))
	if rec.code != 200 || !contains(rec.body.String(), `lazyfs_prewarm_gpu_state{state="claimed",uuid="GPU-fake-0"} 1`) {
		t.Fatalf("metrics page: %d\n%s", rec.code, rec.body.String())
	}
	_ = time.Second
}
