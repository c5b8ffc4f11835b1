package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeviceCheckScript runs prewarm/testdata/device-check.sh end to end on
// fake GPUs with a stub nvidia-smi (FAKE=2), so the script the device run
// depends on cannot rot unnoticed. It builds the daemon, so it is skipped
// with -short.
func TestDeviceCheckScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon and runs the device-check script")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "lazyfs-prewarm")
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/lazyfs-prewarm")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	run := func(extraEnv ...string) (string, error) {
		cmd := exec.Command("bash", "prewarm/testdata/device-check.sh")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "BIN="+bin, "N=2", "FAKE=2", "OUT=", "SUSPEND_GIB=1", "SUSPEND_N=2",
			"PATH="+filepath.Join(root, "prewarm/testdata/fake-nvidia-smi")+":"+os.Getenv("PATH"))
		cmd.Env = append(cmd.Env, extraEnv...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil || !strings.Contains(out, "DEVICE CHECK OK") {
		t.Fatalf("device check: %v\n%s", err, out)
	}
	for _, row := range []string{"| (a) ", "| (b0) ", "| (b) ", "| (b') ", "| claim→release", "| (c) ",
		"| (d-cold 1GiB) ", "| (d-resume 1GiB) ", "| (d-alternate) ", "goal: resume of the 1 GiB worker", "goal: resume / cold start"} {
		if !strings.Contains(out, row) {
			t.Errorf("table lacks row %q", row)
		}
	}
	// A compute process that outlives the run must fail it.
	out, err = run("FAKE_SMI_APPS=1234, python3")
	if err == nil || !strings.Contains(out, "compute processes left behind") {
		t.Fatalf("left-behind process not detected: %v\n%s", err, out)
	}
}
