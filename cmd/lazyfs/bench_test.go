package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchFlags checks that bad flags are refused before anything starts.
func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--link", "fast"}, "link profile"},
		{[]string{"bench", "--mode", "teleport"}, "mode \"teleport\""},
		{[]string{"bench", "--workload", "nope"}, "workload \"nope\""},
		{[]string{"bench", "--", "echo", "hi"}, "needs --image"},
		{[]string{"bench", "--image", "r/x:y", "--ready-line", "(", "--", "true"}, "ready line"},
		{[]string{"bench", "--image", "r/x:y"}, "needs an image and a command"},
	} {
		_, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want one containing %q", tc.args, err, tc.want)
		}
	}
	out, err := run(t, "bench", "--help")
	if err != nil || !strings.Contains(out, "--rtt") || !strings.Contains(out, "mount-warm") {
		t.Errorf("bench --help: %v\n%s", err, out)
	}
}

// TestBenchFromJSON re-renders a saved report (the schema's golden file).
func TestBenchFromJSON(t *testing.T) {
	svg := filepath.Join(t.TempDir(), "chart.svg")
	out, err := run(t, "bench", "--from-json", "../../bench/testdata/report.golden.json", "--svg", svg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"python", "0.26×", "chart: " + svg} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if b, err := os.ReadFile(svg); err != nil || !strings.Contains(string(b), "<svg") {
		t.Errorf("chart: %v", err)
	}
	if _, err := run(t, "bench", "--from-json", "/nonexistent.json"); err == nil {
		t.Error("missing report accepted")
	}
}
