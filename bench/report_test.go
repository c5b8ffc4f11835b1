package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testReport is a small report with every kind of entry: a baseline, a
// faster mode, a sample that failed, a skipped mode, a skipped workload.
func testReport() *Report {
	ok := func(round int, pull, create, run float64, rx int64, reqs int64) Sample {
		return Sample{Round: round, PullSeconds: pull, CreateSeconds: create, RunSeconds: run, ReadySeconds: pull + create + run,
			LinkBytesReceived: rx, LinkBytesSent: rx / 50, Requests: reqs, ResponseBytes: rx * 95 / 100,
			DaemonCPUSeconds: 0.5, DaemonPeakRSSBytes: 40 << 20, ClientCPUSeconds: 0.25}
	}
	r := &Report{
		SchemaVersion: SchemaVersion, StartedAt: time.Date(2026, 11, 29, 21, 0, 0, 0, time.UTC), WallSeconds: 42,
		Command:  "lazyfs bench --workload python --mode full,mount,lazy -n 3",
		Machine:  Machine{CPUs: 2, MemoryBytes: 24 << 30, Kernel: "6.18.0", OS: "Debian GNU/Linux 12 (bookworm) amd64"},
		Versions: Versions{Lazyfs: "lazyfs dev", Containerd: "containerd 1.6.20", Runc: "runc 1.1.5", Registry: "registry 2.8.2", Go: "go1.26"},
		Link:     LinkInfo{Profile: "200mbit", RateBitsPerSecond: 200e6, BurstBytes: 256 << 10, Kind: "veth+tbf"}, SamplesPerMode: 3,
		Workloads: []WorkloadResult{{
			Name: "python", Image: "python", Cmd: []string{"python3", "-c", "import numpy"}, Ready: "exit 0",
			Refs: ImageRefs{Plain: "r/bench/python:plain", Lazy: "r/bench/python:lazy-x", PlainBytes: 83e6, LazyBytes: 93e6},
			Modes: []ModeResult{
				{Mode: "full", Samples: []Sample{ok(1, 5, 0.5, 0.5, 85e6, 6), ok(2, 6, 0.5, 0.5, 85e6, 6), ok(3, 5.5, 0.5, 0.5, 85e6, 6)}},
				{Mode: "mount", Samples: []Sample{ok(1, 0.1, 0.01, 1.5, 9e6, 120), {Round: 2, Error: "workload python: exit status 1"}, ok(3, 0.1, 0.01, 1.7, 9e6, 130)}},
				{Mode: "lazy", Skipped: "no lazyfs-snapshotter", Samples: []Sample{}},
			},
		}, {Name: "torch", Image: "torch", Cmd: []string{"python3"}, Ready: "exit 0", Skipped: "image torch: debootstrap failed"}},
		Notes: []string{"a note"},
	}
	r.Summarize()
	return r
}

func TestSummarizeRatios(t *testing.T) {
	r := testReport()
	full, mount := r.Workloads[0].Modes[0], r.Workloads[0].Modes[1]
	if full.Summary.ReadySeconds.Median != 6.5 || full.ReadyRatioToFull != 1 {
		t.Errorf("full: median %v ratio %v", full.Summary.ReadySeconds.Median, full.ReadyRatioToFull)
	}
	if mount.Summary.Failed != 1 || mount.Summary.ReadySeconds.N != 2 {
		t.Errorf("mount: failed %d, n %d; want the failed sample left out", mount.Summary.Failed, mount.Summary.ReadySeconds.N)
	}
	if want := 1.71 / 6.5; mount.ReadyRatioToFull < want-1e-9 || mount.ReadyRatioToFull > want+1e-9 {
		t.Errorf("mount ratio %v, want %v", mount.ReadyRatioToFull, want)
	}
	if r.Workloads[0].Modes[2].Summary != nil {
		t.Error("a skipped mode has a summary")
	}
}

// TestReportJSON pins the JSON schema (docs/bench.md) to a golden file:
// a change of it is a change of the schema, and of SchemaVersion when a
// field is renamed, removed or changes meaning.
func TestReportJSON(t *testing.T) {
	got, err := json.MarshalIndent(testReport(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report.golden.json")
	if *update {
		if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./bench -run TestReportJSON -update writes it)", err)
	}
	if d := cmp.Diff(string(bytes.TrimSpace(want)), string(got)); d != "" {
		t.Errorf("JSON differs from %s (-want +got):\n%s", golden, d)
	}
	// Every key is camelCase, and durations carry their unit.
	keys := regexp.MustCompile(`"([A-Za-z0-9]+)":`).FindAllStringSubmatch(string(got), -1)
	for _, k := range keys {
		if !regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`).MatchString(k[1]) {
			t.Errorf("key %q is not camelCase", k[1])
		}
		if strings.Contains(strings.ToLower(k[1]), "time") && k[1] != "startedAt" {
			t.Errorf("key %q: a duration names its unit (…Seconds)", k[1])
		}
	}
	var back Report
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if back.SchemaVersion != SchemaVersion || len(back.Workloads) != 2 {
		t.Errorf("round trip: %+v", back)
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := testReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"6.50 (", "0.26×", "3/3", "2/3", "skipped", "lazy skipped: no lazyfs-snapshotter", "round 2 failed", "torch"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
