package fs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/fstest"
)

// BenchmarkBigCold reads a big incompressible file (256 MiB, or
// LAZYFS_BENCH_MB) from cold mounts backed by an in-process fetcher with a
// round trip per request (2 ms, or LAZYFS_BENCH_RTT_MS) and an empty badger
// cache, all in the same iteration:
//
//   - fetcher: the whole file fetched straight through the fetcher, 8
//     requests of 16 chunks in flight: what the "network" (decode and
//     verify included) delivers on these cores, the ceiling;
//   - seq: `cat`-like 1 MiB reads through a fresh mount;
//   - mmap: a loader-like child process (tensors of 2–16 MiB in a random
//     order, through mmap page faults) through a fresh mount.
//
// LAZYFS_BENCH_CACHE=memory reads through a map cache instead of badger;
// LAZYFS_BENCH_RAKB sets the mount's kernel read-ahead (KiB).
// Metrics: MB/s of each; seq/fetcher (speed ratio; the goal is near 1) and
// mmap/seq (time ratio; the goal is ≤ 1.2).
func BenchmarkBigCold(b *testing.B) {
	requireFUSE(b)
	size := 256 << 20
	if v, err := strconv.Atoi(os.Getenv("LAZYFS_BENCH_MB")); err == nil && v > 0 {
		size = v << 20
	}
	rtt := 2 * time.Millisecond
	if v, err := strconv.Atoi(os.Getenv("LAZYFS_BENCH_RTT_MS")); err == nil && v >= 0 {
		rtt = time.Duration(v) * time.Millisecond
	}
	layer, want := bigFileLayer(b, size, bigChunk)
	layer.fetcher.SetLatency(rtt)
	mount := func(b *testing.B) (string, func()) {
		b.Helper()
		cache, err := blobcache.Open(b.TempDir(), blobcache.WithCapacity(int64(2*size)))
		if err != nil {
			b.Fatal(err)
		}
		opts := Options{Cache: cache, NeighbourWindow: -1}
		if os.Getenv("LAZYFS_BENCH_CACHE") == "memory" { // what badger's write path costs
			opts.Cache = fstest.NewMemCache()
		}
		root, err := NewRoot([]Layer{{Name: "bench", TOC: layer.toc, Fetcher: layer.fetcher}}, opts)
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		mo := MountOptions{}
		if v, err := strconv.Atoi(os.Getenv("LAZYFS_BENCH_RAKB")); err == nil { // the mount's kernel read-ahead
			mo.ReadAheadKB = v
		}
		srv, err := Mount(dir, root, mo)
		if err != nil {
			b.Fatal(err)
		}
		return filepath.Join(dir, "model.bin"), func() {
			b.Logf("%+v", root.Stats())
			if err := srv.Unmount(); err != nil {
				b.Error(err)
			}
			cache.Close()
		}
	}
	var fetchT, seqT, mmapT time.Duration
	for b.Loop() {
		// The ceiling: the fetcher alone, parallel requests.
		start := time.Now()
		g := new(errgroup.Group)
		g.SetLimit(8)
		cs := layer.toc.Chunks
		for i := 0; i < len(cs); i += 16 {
			g.Go(func() error {
				return layer.fetcher.FetchChunks(context.Background(), cs[i:min(i+16, len(cs))], func(int, []byte) error { return nil })
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		fetchT += time.Since(start)

		p, unmount := mount(b)
		dropAllCaches(b)
		start = time.Now()
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
		f.Close()
		seqT += time.Since(start)
		if err != nil || n != int64(size) {
			b.Fatalf("sequential read: %d bytes, %v", n, err)
		}
		unmount()

		p, unmount = mount(b)
		dropAllCaches(b)
		d, err := mmapLoad(b, p, want, 1) // the child's time from open to the last tensor
		if err != nil {
			b.Fatal(err)
		}
		mmapT += d
		unmount()
	}
	mbs := func(d time.Duration) float64 { return float64(size) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbs(fetchT), "fetcher-MB/s")
	b.ReportMetric(mbs(seqT), "seq-MB/s")
	b.ReportMetric(mbs(mmapT), "mmap-MB/s")
	b.ReportMetric(fetchT.Seconds()/seqT.Seconds(), "seq/fetcher")
	b.ReportMetric(mmapT.Seconds()/seqT.Seconds(), "mmap/seq-time")
}
