package api

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoDriverDeps pins the point of this package (issue 13): neither it
// nor the lazyfs CLI links go-nvml or the prewarm daemon package (with its
// cgo CUDA code).
func TestNoDriverDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	for _, pkg := range []string{"github.com/lazyfs/lazyfs/prewarm/api", "github.com/lazyfs/lazyfs/cmd/lazyfs"} {
		out, err := exec.Command(goBin, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.Contains(dep, "go-nvml") || dep == "github.com/lazyfs/lazyfs/prewarm" {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
