package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/prewarm"
)

// The test binary doubles as lazyfs-prewarm: the daemon re-execs
// os.Executable() as "hold …", which lands here.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "hold", "worker", "firstop", "devbench":
			main()
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

func tempSock(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "pw.sock")
}

// runTestDaemon starts runDaemon and waits for its socket.
func runTestDaemon(t *testing.T, cfg config) (*prewarm.Client, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runDaemon(ctx, cfg) }()
	c := prewarm.NewClient(cfg.Socket)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Status(ctx); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon socket never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}
	return c, stop
}

// TestReportOnlyStartsWithoutDriver runs the real daemon wiring on this
// machine, which has no NVIDIA driver: it must come up in report-only mode
// and serve status, /healthz and /metrics.
func TestReportOnlyStartsWithoutDriver(t *testing.T) {
	if _, err := os.Stat("/dev/nvidiactl"); err == nil {
		t.Skip("an NVIDIA driver is present; report-only mode is not what runs here")
	}
	cfg := defaultConfig()
	cfg.Socket = tempSock(t)
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.LogLevel = "error"
	c, stop := runTestDaemon(t, cfg)
	defer stop()
	s, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != "report-only" || s.Reason == "" || len(s.GPUs) != 0 {
		t.Fatalf("status %+v, want report-only with a reason", s)
	}
	if _, err := c.Claim(context.Background(), prewarm.ClaimRequest{}); !errors.Is(err, prewarm.ErrReportOnly) {
		t.Fatalf("claim: %v", err)
	}
	fi, err := os.Stat(cfg.Socket)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi, err)
	}
}

// TestDaemonWithFakeGPUs runs the daemon with --fake-gpus: holders are
// this binary re-exec'd as "hold" on the fake CUDA driver.
func TestDaemonWithFakeGPUs(t *testing.T) {
	cfg := defaultConfig()
	cfg.Socket = tempSock(t)
	cfg.MetricsAddr = ""
	cfg.LogLevel = "error"
	cfg.FakeGPUs = 2
	cfg.IdleWindow = duration(time.Millisecond)
	cfg.PollInterval = duration(10 * time.Millisecond)
	cfg.Grace = duration(time.Millisecond)
	cfg.HandoffDelay = 0
	c, stop := runTestDaemon(t, cfg)
	defer stop()
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := c.Status(ctx)
		if err == nil && len(s.GPUs) == 2 && s.GPUs[0].State == prewarm.StateHeld && s.GPUs[1].State == prewarm.StateHeld {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not held: %+v %v", s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := c.Claim(ctx, prewarm.ClaimRequest{UUID: "GPU-fake-1"})
	if err != nil || res.HolderRelease != "now" {
		t.Fatalf("claim %+v %v", res, err)
	}
	// A fresh firstop process on the claimed GPU, as the device check runs it.
	t.Setenv(prewarm.EnvFakeCUDA, "1")
	s, err := probe(ctx, 20*time.Second, []string{os.Args[0], "firstop"})
	if err != nil || s.totalMs <= 0 || s.out.Mode != "fresh" {
		t.Fatalf("probe %+v %v", s, err)
	}
	if _, err := c.Release(ctx, prewarm.ReleaseRequest{UUID: res.UUID, ClaimID: res.ClaimID}); err != nil {
		t.Fatal(err)
	}
	s2, err := probe(ctx, 20*time.Second, []string{os.Args[0], "firstop", "--socket", cfg.Socket, "--claim"})
	if err != nil || s2.out.Mode != "claim" || s2.out.ClaimID == "" {
		t.Fatalf("probe --claim %+v %v", s2, err)
	}
}

func TestConfigPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prewarm.toml")
	os.WriteFile(path, []byte(`
socket = "/tmp/from-file.sock"
memory_floor = "2GiB"
idle_window = "45s"
images = ["reg.example/a:1", "reg.example/b:2"]
worker_command = ["python3", "/opt/worker.py"]
enable_persistence = false
`), 0o644)
	flags := defaultConfig()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.bindFlags(fs)
	if err := fs.Parse([]string{"--idle-window", "5s", "--hold-alloc", "64MiB"}); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(path, flags, fs, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/tmp/from-file.sock" || c.MemoryFloor != 2<<30 || time.Duration(c.IdleWindow) != 5*time.Second ||
		c.HoldAlloc != 64<<20 || len(c.Images) != 2 || strings.Join(c.WorkerCommand, " ") != "python3 /opt/worker.py" ||
		time.Duration(c.Grace) != 5*time.Second {
		t.Fatalf("config %+v", c)
	}
	os.WriteFile(path, []byte("bogus_key = 1\n"), 0o644)
	if _, err := loadConfig(path, flags, fs, "", nil); err == nil {
		t.Fatal("unknown key accepted")
	}
}

func TestMetricsEndpoint(t *testing.T) {
	cfg := defaultConfig()
	cfg.Socket = tempSock(t)
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.LogLevel = "error"
	cfg.FakeGPUs = 1
	cfg.PollInterval = duration(10 * time.Millisecond)
	// Find the bound port through a listener we pick ourselves.
	l, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	cfg.MetricsAddr = l.Addr().String()
	l.Close()
	_, stop := runTestDaemon(t, cfg)
	defer stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `lazyfs_prewarm_gpu_state{state=`) && strings.Contains(string(b), "lazyfs_prewarm_report_only 0") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed GPU state: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get("http://" + cfg.MetricsAddr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestVersionFlag: --version names the release, the commit and the Go
// version (issue 13), and does not start the daemon.
func TestVersionFlag(t *testing.T) {
	root := newRootCmd()
	var out strings.Builder
	root.SetOut(&out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"lazyfs-prewarm ", "commit ", runtime.Version()} {
		if !strings.Contains(got, want) {
			t.Errorf("--version %q lacks %q", got, want)
		}
	}
}

// TestConfigModelWorkers: [[model_worker]] tables and --model-worker flags
// add up, sizes parse, and a bad name or user is refused before start.
func TestConfigModelWorkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prewarm.toml")
	os.WriteFile(path, []byte(`
suspend_memory = "64GiB"
resident_floor = "8GiB"
worker_user = "65534:65533"
[[model_worker]]
name = "llama"
command = ["python3", "/opt/llama.py"]
gpu = "GPU-1"
`), 0o644)
	flags := defaultConfig()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.bindFlags(fs)
	c, err := loadConfig(path, flags, fs, "", nil, "whisper=python3 /opt/whisper.py --small")
	if err != nil {
		t.Fatal(err)
	}
	mw := c.modelWorkers()
	if len(mw) != 2 || mw[0].Name != "llama" || mw[0].GPU != "GPU-1" || strings.Join(mw[1].Argv, " ") != "python3 /opt/whisper.py --small" ||
		c.SuspendMemory != 64<<30 || c.ResidentFloor != 8<<30 || c.WorkerDir != prewarm.DefaultWorkerDir {
		t.Fatalf("config %+v", c)
	}
	cred, err := parseUser(c.WorkerUser)
	if err != nil || cred.Uid != 65534 || cred.Gid != 65533 {
		t.Fatalf("worker user %+v %v", cred, err)
	}
	if cred, err := parseUser("root"); err != nil || cred.Uid != 0 {
		t.Fatalf("user by name: %+v %v", cred, err)
	}
	for _, bad := range []string{"bad name=x", "noequals", "a="} {
		if _, err := loadConfig("", flags, fs, "", nil, bad); err == nil {
			t.Errorf("--model-worker %q accepted", bad)
		}
	}
	if _, err := loadConfig(path, flags, fs, "", nil, "llama=other"); err == nil {
		t.Error("duplicate model worker accepted")
	}
	if _, err := parseUser("1:x"); err == nil {
		t.Error("bad gid accepted")
	}
}
