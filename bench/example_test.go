package bench_test

import (
	"fmt"
	"os"

	"github.com/lazyfs/lazyfs/bench"
)

// A run's summary statistics: medians and p95 by linear interpolation
// between closest ranks, as numpy computes them.
func ExampleSummarize() {
	ready := []float64{6.1, 5.9, 7.4}
	s := bench.Summarize(ready)
	fmt.Printf("median %.2f s, p95 %.2f s\n", s.Median, s.P95)
	// Output: median 6.10 s, p95 7.27 s
}

// Running the harness from Go: one workload, two modes, behind a
// 200 Mbit/s link (needs root, containerd, FUSE).
func ExampleRun() {
	hello, _ := bench.BuiltinWorkload("hello")
	link, _ := bench.ParseProfile("200mbit")
	cfg := bench.Config{
		Workloads: []*bench.Workload{hello},
		Modes:     []bench.Mode{bench.FullMode{}, bench.MountMode{}},
		Samples:   3,
		Profile:   link,
		Lazyfs:    "bin/lazyfs",
	}
	_ = cfg // rep, err := bench.Run(ctx, cfg)
	var rep bench.Report
	_ = rep.WriteTable(os.Stdout)
}
