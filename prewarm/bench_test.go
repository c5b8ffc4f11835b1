package prewarm

import (
	"context"
	"os"
	"testing"
	"time"
)

// BenchmarkClaimReleaseAPI is one claim plus one release over the unix
// socket API with nothing held: the API's own overhead.
func BenchmarkClaimReleaseAPI(b *testing.B) {
	fake := NewFakeGPUs(1)
	m := NewManager(fake, "", Config{IdleWindow: time.Nanosecond, Grace: time.Nanosecond})
	m.Poll(context.Background())
	dir, _ := os.MkdirTemp("", "pwb")
	defer os.RemoveAll(dir)
	l, err := ListenUnix(dir + "/s.sock")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, (&Server{Manager: m}).Handler()) }()
	defer func() { cancel(); <-done }()
	c := NewClient(dir + "/s.sock")
	defer c.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := c.Claim(ctx, ClaimRequest{UUID: g0})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Release(ctx, ReleaseRequest{UUID: g0, ClaimID: r.ClaimID}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHolderStartStop starts a holder process (this test binary on the
// fake driver), waits for READY, kills and reaps it: the process
// machinery's share of a warm-up and of a release.
func BenchmarkHolderStartStop(b *testing.B) {
	spec := childSpec{kind: kindHolder, uuid: g0, argv: holderArgv(g0, 0),
		env: []string{"LAZYFS_PREWARM_TEST_CHILD=holder", EnvFakeCUDA + "=1", "CUDA_VISIBLE_DEVICES=" + g0}}
	var stop time.Duration
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c, err := startChild(context.Background(), spec, 20*time.Second, nil)
		if err != nil {
			b.Fatal(err)
		}
		stop += c.stop()
	}
	b.ReportMetric(float64(stop.Microseconds())/float64(b.N)/1000, "kill-ms/op")
}
