package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/prewarm"
	"github.com/lazyfs/lazyfs/prewarm/api"
)

// startDaemon runs prewarm's manager and API over two fake GPUs on a unix
// socket. Holders are real processes (a shell that prints READY and sleeps).
func startDaemon(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gpucli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "pw.sock")
	m := prewarm.NewManager(prewarm.NewFakeGPUs(2), "", prewarm.Config{
		HolderArgv:     func(string, uint64) []string { return []string{"/bin/sh", "-c", "echo READY; exec sleep 600"} },
		IdleWindow:     time.Millisecond,
		PollInterval:   5 * time.Millisecond,
		Grace:          time.Millisecond,
		NoHandoffDelay: true,
	})
	l, err := prewarm.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &prewarm.Server{Manager: m}
	done := make(chan struct{}, 2)
	go func() { m.Run(ctx); done <- struct{}{} }()
	go func() { prewarm.Serve(ctx, l, srv.Handler()); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	c := prewarm.NewClient(sock)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := c.Status(ctx)
		if err == nil && len(s.GPUs) == 2 && s.GPUs[0].State == prewarm.StateHeld && s.GPUs[1].State == prewarm.StateHeld {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready: %+v %v", s, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func runGPU(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "lazyfs", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newGPUCmd())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"gpu"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func exitCode(err error) int {
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

func TestGPUCommands(t *testing.T) {
	sock := startDaemon(t)
	out, err := runGPU(t, "status", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status:\n%s", out)
	if !strings.Contains(out, "GPU-fake-0") || !strings.Contains(out, "held") || !strings.Contains(out, "mode: hold") {
		t.Fatalf("status table:\n%s", out)
	}

	out, err = runGPU(t, "claim", "GPU-fake-0", "--json", "--owner", "job-7", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
	var res prewarm.ClaimResult
	if err := unmarshalAPI(out, &res); err != nil {
		t.Fatalf("claim --json: %v\n%s", err, out)
	}
	if res.UUID != "GPU-fake-0" || res.HolderRelease != "now" || res.ClaimID == "" {
		t.Fatalf("claim %+v", res)
	}
	_, err = runGPU(t, "claim", "GPU-fake-0", "--socket", sock)
	if !errors.Is(err, prewarm.ErrAlreadyClaimed) || exitCode(err) != 2 {
		t.Fatalf("second claim: %v (exit %d), want already claimed, exit 2", err, exitCode(err))
	}

	out, err = runGPU(t, "claim", "--env", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "export CUDA_VISIBLE_DEVICES='GPU-fake-1'\n") || !strings.Contains(out, "export LAZYFS_CLAIM_ID=") {
		t.Fatalf("claim --env:\n%s", out)
	}
	if _, err = runGPU(t, "claim", "any", "--socket", sock); !errors.Is(err, prewarm.ErrNoIdleGPU) || exitCode(err) != 2 {
		t.Fatalf("claim with none idle: %v", err)
	}

	out, err = runGPU(t, "status", "--json", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
	var st prewarm.Status
	if err := unmarshalAPI(out, &st); err != nil {
		t.Fatal(err)
	}
	if st.GPUs[0].State != prewarm.StateClaimed || st.GPUs[0].Claim.Owner != "job-7" {
		t.Fatalf("status --json %+v", st.GPUs[0])
	}

	if _, err = runGPU(t, "release", "GPU-fake-0", "--claim-id", "wrong", "--socket", sock); !errors.Is(err, prewarm.ErrNotClaimed) || exitCode(err) != 1 {
		t.Fatalf("release with a wrong claim id: %v", err)
	}
	out, err = runGPU(t, "release", "GPU-fake-0", "--claim-id", res.ClaimID, "--socket", sock)
	if err != nil || !strings.Contains(out, "released GPU-fake-0") {
		t.Fatalf("release: %v\n%s", err, out)
	}
	t.Setenv("LAZYFS_PREWARM_SOCKET", sock)
	if _, err = runGPU(t, "release", "GPU-fake-1", "--json"); err != nil {
		t.Fatalf("release via env socket: %v", err)
	}
}

func TestGPUNoDaemon(t *testing.T) {
	_, err := runGPU(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || exitCode(err) != 1 {
		t.Fatalf("status without daemon: %v", err)
	}
	if _, err := runGPU(t, "claim", "--release", "later", "--socket", "/nonexistent"); err == nil {
		t.Fatal("bad --release accepted")
	}
}

// evalEnv runs the claim --env output through sh's eval, as a job script
// does, and returns what sh printed (stdout and stderr) and its error.
func evalEnv(t *testing.T, envOut string, script string) (string, error) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `set -e; eval "$LAZYFS_TEST_ENV"; `+script)
	cmd.Env = append(os.Environ(), "LAZYFS_TEST_ENV="+envOut)
	cmd.Dir = t.TempDir()
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// TestClaimEnvQuoting: every value --env prints survives eval verbatim,
// shell metacharacters included, and runs nothing (issue 9 item 9).
func TestClaimEnvQuoting(t *testing.T) {
	hostile := `/run/lazyfs/workers/a b'; touch PWNED; echo '$(touch PWNED2)` + "`touch PWNED3`\n\"x\""
	res := api.ClaimResult{UUID: "GPU-1 2", ClaimID: "c'id", Worker: &api.WorkerHandoff{PID: 42, Socket: hostile, Name: "llama;rm"}}
	var b strings.Builder
	if err := writeEnv(&b, res); err != nil {
		t.Fatal(err)
	}
	out, err := evalEnv(t, b.String(), `printf '%s|' "$CUDA_VISIBLE_DEVICES" "$LAZYFS_CLAIM_ID" "$LAZYFS_WORKER_SOCKET" "$LAZYFS_WORKER_PID" "$LAZYFS_WORKER_NAME"; ls`)
	if err != nil {
		t.Fatalf("eval: %v\n%s\n%s", err, b.String(), out)
	}
	want := "GPU-1 2|c'id|" + hostile + "|42|llama;rm|"
	if out != want {
		t.Fatalf("round trip through eval:\n got %q\nwant %q", out, want)
	}
}

// TestClaimEnvFailsVisiblyInReportOnly: with a daemon in report-only mode,
// eval "$(lazyfs gpu claim any --env)" fails and says why (issue 13).
func TestClaimEnvFailsVisiblyInReportOnly(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpucli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "pw.sock")
	m := prewarm.NewManager(nil, "no NVIDIA driver", prewarm.Config{})
	l, err := prewarm.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { prewarm.Serve(ctx, l, (&prewarm.Server{Manager: m}).Handler()); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	envOut, err := runGPU(t, "claim", "any", "--env", "--socket", sock)
	if !errors.Is(err, prewarm.ErrReportOnly) {
		t.Fatalf("claim in report-only mode: %v", err)
	}
	out, err := evalEnv(t, envOut, "echo REACHED")
	if err == nil || strings.Contains(out, "REACHED") || !strings.Contains(out, "report-only") {
		t.Fatalf("eval of a failed claim went on or said nothing: %v\n%s", err, out)
	}
}

// The test binary doubles as a model worker (the reference worker on the
// fake CUDA driver) when LAZYFS_GPU_TEST_WORKER is set; init runs before
// TestMain.
func init() {
	if os.Getenv("LAZYFS_GPU_TEST_WORKER") != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := prewarm.ServeWorker(ctx, prewarm.DriverFromEnv(), os.Getenv("LAZYFS_WORKER_SOCKET"), 0, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestGPUClaimWorker drives `lazyfs gpu claim/release --worker` and the
// status table against a daemon whose model worker is suspended through
// the fake checkpointer.
func TestGPUClaimWorker(t *testing.T) {
	dir, err := os.MkdirTemp("", "gpucli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "pw.sock")
	m := prewarm.NewManager(prewarm.NewFakeGPUs(1), "", prewarm.Config{
		ModelWorkers: []prewarm.ModelWorker{{Name: "llama", Argv: []string{os.Args[0], "-test.run=^$"}}},
		Checkpointer: &prewarm.FakeCheckpointer{Bytes: 5 << 30},
		ChildEnv:     []string{"LAZYFS_GPU_TEST_WORKER=1", prewarm.EnvFakeCUDA + "=1"},
		WorkerDir:    filepath.Join(dir, "workers"),
		IdleWindow:   time.Millisecond, PollInterval: 5 * time.Millisecond,
	})
	l, err := prewarm.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { m.Run(ctx); done <- struct{}{} }()
	go func() { prewarm.Serve(ctx, l, (&prewarm.Server{Manager: m}).Handler()); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	waitWorker := func(st api.WorkerState) api.Status {
		deadline := time.Now().Add(20 * time.Second)
		for {
			s, err := api.NewClient(sock).Status(ctx)
			if err == nil && len(s.Workers) == 1 && s.Workers[0].State == st {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("worker never %s: %+v %v", st, s, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitWorker(api.WorkerSuspended)
	out, err := runGPU(t, "status", "--socket", sock)
	if err != nil || !strings.Contains(out, "llama") || !strings.Contains(out, "suspended") || !strings.Contains(out, "5120MiB") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	out, err = runGPU(t, "claim", "--worker", "llama", "--socket", sock)
	if err != nil || !strings.Contains(out, "claimed worker llama on GPU-fake-0") || !strings.Contains(out, "on the GPU it was suspended on") {
		t.Fatalf("claim --worker: %v\n%s", err, out)
	}
	if _, err := runGPU(t, "claim", "--worker", "llama", "--socket", sock); exitCode(err) != 2 {
		t.Fatalf("second claim: %v (exit %d), want exit 2", err, exitCode(err))
	}
	out, err = runGPU(t, "release", "--worker", "llama", "--socket", sock)
	if err != nil || !strings.Contains(out, "released worker llama") {
		t.Fatalf("release --worker: %v\n%s", err, out)
	}
	waitWorker(api.WorkerSuspended)
	envOut, err := runGPU(t, "claim", "--worker", "llama", "--env", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	out, err = evalEnv(t, envOut, `printf '%s|%s' "$LAZYFS_WORKER_NAME" "$CUDA_VISIBLE_DEVICES"`)
	if err != nil || out != "llama|GPU-fake-0" {
		t.Fatalf("eval of claim --worker --env: %v %q", err, out)
	}
	out, err = runGPU(t, "status", "--json", "--socket", sock)
	if err != nil {
		t.Fatal(err)
	}
	var st api.Status
	if err := unmarshalAPI(out, &st); err != nil || st.Workers[0].Resumes != 2 || st.Workers[0].State != api.WorkerClaimed {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	// What a job script does after eval: release "$LAZYFS_GPU_UUID".
	t.Setenv("LAZYFS_WORKER_NAME", "llama")
	t.Setenv("LAZYFS_GPU_UUID", "GPU-fake-0")
	if out, err := runGPU(t, "release", "GPU-fake-0", "--socket", sock); err != nil || !strings.Contains(out, "released worker llama") {
		t.Fatalf("release $LAZYFS_GPU_UUID after a worker claim: %v\n%s", err, out)
	}
}

// unmarshalAPI decodes a lazyfs gpu --json document (camelCase keys) into
// the daemon API's snake_case types.
func unmarshalAPI(out string, v any) error {
	var doc any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return err
	}
	b, err := json.Marshal(snakeKeys(doc))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func snakeKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			var sb strings.Builder
			for _, r := range k {
				if unicode.IsUpper(r) {
					sb.WriteByte('_')
					r = unicode.ToLower(r)
				}
				sb.WriteRune(r)
			}
			m[sb.String()] = snakeKeys(e)
		}
		return m
	case []any:
		for i := range v {
			v[i] = snakeKeys(v[i])
		}
	}
	return v
}
