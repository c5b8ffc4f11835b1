package runner_test

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/lazyfs/lazyfs/internal/runner"
)

// hookEnv makes this test binary a CDI hook (see init): it reads the OCI
// state on stdin and the bundle's config.json, and writes the state's
// status and pid into the run's root, as /hooked.
const hookEnv = "LAZYFS_RUNNER_TEST_HOOK"

func init() {
	if os.Getenv(hookEnv) == "" {
		return
	}
	fail := func(err error) { fmt.Fprintln(os.Stderr, "test hook:", err); os.Exit(1) }
	var st struct {
		Status, Bundle string
		Pid            int
	}
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		fail(err)
	}
	var spec specs.Spec
	cb, err := os.ReadFile(filepath.Join(st.Bundle, "config.json"))
	if err != nil {
		fail(err)
	}
	if err := json.Unmarshal(cb, &spec); err != nil {
		fail(err)
	}
	if os.Getenv(hookEnv) == "fail" {
		fail(fmt.Errorf("failing as asked"))
	}
	if err := os.WriteFile(filepath.Join(spec.Root.Path, "hooked"), fmt.Appendf(nil, "%s %d %s\n", st.Status, st.Pid, os.Args[1]), 0o644); err != nil {
		fail(err)
	}
	os.Exit(0)
}

// writeCDISpec writes a CDI spec for vendor lazyfs.test, class gpu, with one
// device, "0", in dir: a device node and a library mount per device, an
// environment variable and a createContainer hook (this test binary) for
// the spec, as nvidia-ctk cdi generate writes them for a GPU.
func writeCDISpec(t *testing.T, dir, hookMode string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(t.TempDir(), "libfakecuda.so.1")
	if err := os.WriteFile(lib, []byte("fake driver library\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := map[string]any{
		"cdiVersion": "0.6.0",
		"kind":       "lazyfs.test/gpu",
		"devices": []any{map[string]any{
			"name": "0",
			"containerEdits": map[string]any{
				"env":         []string{"FAKE_GPU=0"},
				"deviceNodes": []any{map[string]any{"path": "/dev/fakegpu0", "hostPath": "/dev/zero"}},
				"mounts":      []any{map[string]any{"hostPath": lib, "containerPath": "/usr/lib/libfakecuda.so.1", "options": []string{"ro", "nosuid", "nodev", "bind"}}},
			},
		}},
		"containerEdits": map[string]any{
			"env":         []string{"FAKE_DRIVER=1.0"},
			"deviceNodes": []any{map[string]any{"path": "/dev/fakectl", "hostPath": "/dev/null"}},
			"hooks": []any{map[string]any{"hookName": "createContainer", "path": self, "args": []string{"hook", "update-ldcache"},
				"env": []string{hookEnv + "=" + hookMode}}},
		},
	}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lazyfs-test.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRunCDIDevices runs a command with a CDI device, as `lazyfs run
// --device` does for GPUs: the device nodes exist in the run's /dev and
// work (reading the one backed by /dev/zero), the library is mounted
// read-only, the environment is set, and the createContainer hook ran
// before the command, with the state of a created container and a bundle
// that names the run's root.
func TestRunCDIDevices(t *testing.T) {
	dir := mountImage(t)
	cdiDir := t.TempDir()
	writeCDISpec(t, cdiDir, "ok")
	devs, err := runner.ResolveCDI([]string{cdiDir}, []string{"lazyfs.test/gpu=0"})
	if err != nil {
		t.Fatal(err)
	}
	script := `test -c /dev/fakegpu0 && head -c 3 /dev/fakegpu0 | wc -c
test -c /dev/fakectl && echo ctl
cat /usr/lib/libfakecuda.so.1
echo "$FAKE_GPU $FAKE_DRIVER"
cat /hooked
echo x 2>/dev/null > /usr/lib/libfakecuda.so.1 || echo read-only
`
	res, out, errs := run(t, runner.Config{Root: dir, Args: []string{"sh", "-c", script}, Devices: devs, User: "app"})
	lines := strings.Split(out, "\n")
	if res.ExitCode != 0 || len(lines) != 7 {
		t.Fatalf("exit %d, stdout %q, stderr %q", res.ExitCode, out, errs)
	}
	var pid int
	var status, arg string
	if _, err := fmt.Sscanf(lines[4], "%s %d %s", &status, &pid, &arg); err != nil || status != "created" || pid <= 0 || arg != "update-ldcache" {
		t.Errorf("hook saw %q (%v), want the created state with a pid and its own arguments", lines[4], err)
	}
	lines[4] = "hooked"
	want := "3\nctl\nfake driver library\n0 1.0\nhooked\nread-only\n"
	if got := strings.Join(lines, "\n"); got != want {
		t.Errorf("stdout %q, want %q (stderr %q)", got, want, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "hooked")); err == nil {
		t.Error("the hook wrote into the image, not the run's overlay")
	}

	// A failing hook fails the run before its command starts.
	failDir := t.TempDir()
	writeCDISpec(t, failDir, "fail")
	devs, err = runner.ResolveCDI([]string{failDir}, []string{"lazyfs.test/gpu=0"})
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(t.TempDir(), "ran")
	_, err = runner.Run(t.Context(), runner.Config{Root: dir, Args: []string{"sh", "-c", "echo > " + marker}, Devices: devs})
	if err == nil || !strings.Contains(err.Error(), "createContainer hook") || !strings.Contains(err.Error(), "failing as asked") {
		t.Errorf("failing hook: %v", err)
	}
	if _, serr := os.Stat(marker); serr == nil {
		t.Error("the command ran although its hook failed")
	}
}

func TestResolveCDIErrors(t *testing.T) {
	dir := t.TempDir()
	writeCDISpec(t, dir, "ok")
	if _, err := runner.ResolveCDI([]string{dir}, []string{"lazyfs.test/gpu=7"}); err == nil || !strings.Contains(err.Error(), "lazyfs.test/gpu=7") {
		t.Errorf("undefined device: %v", err)
	}
	if _, err := runner.ResolveCDI([]string{dir}, []string{"gpu0"}); err == nil || !strings.Contains(err.Error(), `"gpu0"`) {
		t.Errorf("unqualified name: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.json"), []byte(`{"cdiVersion": "0.6.0", "kind": "broken.test/x", "devices": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.ResolveCDI([]string{dir}, []string{"broken.test/x=a"}); err == nil || !strings.Contains(err.Error(), "broken.json") {
		t.Errorf("unreadable spec: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gone.json"), []byte(`{"cdiVersion": "0.6.0", "kind": "gone.test/x", "devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/gone", "hostPath": "/dev/lazyfs-no-such-device"}]}}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.ResolveCDI([]string{dir}, []string{"gone.test/x=a"}); err == nil || !strings.Contains(err.Error(), "gone.test/x=a") || !strings.Contains(err.Error(), "lazyfs-no-such-device") {
		t.Errorf("device node missing on the host: %v", err)
	}
	// The valid spec beside it still resolves.
	if _, err := runner.ResolveCDI([]string{dir}, []string{"lazyfs.test/gpu=0"}); err != nil {
		t.Errorf("valid spec beside an invalid one: %v", err)
	}
}

// TestRunCDIGPU is the device check of --device on a real NVIDIA GPU
// (internal/runner/testdata/device-check.sh runs it; skipped elsewhere): it
// generates NVIDIA's CDI spec with nvidia-ctk, resolves nvidia.com/gpu=all,
// and checks in a run that every device node of the spec opens and every
// mounted file of the spec (driver libraries, nvidia-smi) is there, with
// the driver's version under /proc.
func TestRunCDIGPU(t *testing.T) {
	if os.Getenv("LAZYFS_GPU_CDI") == "" {
		t.Skip("device check: set LAZYFS_GPU_CDI=1 on a machine with an NVIDIA GPU and nvidia-ctk")
	}
	ctk, err := exec.LookPath("nvidia-ctk")
	if err != nil {
		t.Skip("no nvidia-ctk on PATH (NVIDIA Container Toolkit)")
	}
	dir := mountImage(t)
	cdiDir := t.TempDir()
	if out, err := exec.Command(ctk, "cdi", "generate", "--output", filepath.Join(cdiDir, "nvidia.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("nvidia-ctk cdi generate: %v: %s", err, out)
	}
	devs, err := runner.ResolveCDI([]string{cdiDir}, []string{"nvidia.com/gpu=all"})
	if err != nil {
		t.Fatal(err)
	}
	script := "set -e\ncat /proc/driver/nvidia/version | head -n 1\n"
	for _, n := range devs.Linux.Devices {
		script += fmt.Sprintf("head -c 0 < %q && echo opened %s\n", n.Path, n.Path)
	}
	for _, m := range devs.Mounts {
		script += fmt.Sprintf("test -e %q && echo mounted %s\n", m.Destination, m.Destination)
	}
	res, out, errs := run(t, runner.Config{Root: dir, Args: []string{"sh", "-c", script}, Devices: devs})
	t.Logf("%d device nodes, %d mounts, %d env, hooks %+v:\n%s", len(devs.Linux.Devices), len(devs.Mounts), len(devs.Process.Env), devs.Hooks, out)
	if res.ExitCode != 0 || len(devs.Linux.Devices) == 0 {
		t.Fatalf("exit %d, stderr %q", res.ExitCode, errs)
	}
}
