package fs

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// syntheticTOC returns a decoded TOC of n entries laid out like a real image:
// 1% directories, files in directories of ~100, one chunk per file.
func syntheticTOC(tb testing.TB, n int) *toc.TOC {
	t := &toc.TOC{ChunkSize: toc.DefaultChunkSize}
	var pos, cpos int64
	add := func(e toc.Entry, size int64) {
		e.HeaderOffset = pos
		e.Uname, e.Gname, e.Mode, e.ModTimeSec = "root", "root", 0o644, 1700000000
		pos += 512
		if size > 0 {
			e.Size, e.NumChunks = size, 1
			t.Chunks = append(t.Chunks, toc.Chunk{Offset: pos, CompressedOffset: cpos, Size: uint32(size), CompressedSize: uint32(size/2 + 1)})
			t.Chunks[len(t.Chunks)-1].Sum[0] = byte(len(t.Chunks))
			pos += (size + 511) &^ 511
			cpos += size/2 + 1
		}
		t.Entries = append(t.Entries, e)
	}
	add(toc.Entry{Type: tar.TypeDir}, 0)
	dirs := n / 100
	for d := range dirs {
		dir := fmt.Sprintf("usr/lib/python3/dist-packages/pkg%04d", d)
		add(toc.Entry{Name: dir, Type: tar.TypeDir}, 0)
		for f := range n/dirs - 1 {
			add(toc.Entry{Name: fmt.Sprintf("%s/module_%03d.py", dir, f), Type: tar.TypeReg}, int64(100+f*37))
		}
	}
	t.TarSize = pos + 1024
	// Round-trip through the encoding so strings are laid out as a decoded TOC's.
	out, err := toc.Unmarshal(t.Marshal())
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func heap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkTreeMemory reports the heap cost per entry of a 100,000-entry
// layer: the decoded TOC, and the tree NewRoot builds over it.
func BenchmarkTreeMemory(b *testing.B) {
	const n = 100_000
	b.ReportAllocs()
	var tocPer, treePer float64
	for b.Loop() {
		h0 := heap()
		tc := syntheticTOC(b, n)
		h1 := heap()
		r, err := NewRoot([]Layer{{Name: "bench", TOC: tc, Fetcher: fstest.NewBlobFetcher(nil)}}, Options{ReadAhead: -1})
		if err != nil {
			b.Fatal(err)
		}
		h2 := heap()
		if r.Len() < n {
			b.Fatalf("%d nodes, want %d", r.Len(), n)
		}
		tocPer = float64(h1-h0) / n
		treePer = float64(h2-h1) / n
		r.Close()
		runtime.KeepAlive(tc)
	}
	b.ReportMetric(tocPer, "toc-B/entry")
	b.ReportMetric(treePer, "tree-B/entry")
	b.ReportMetric(tocPer+treePer, "total-B/entry")
}

// BenchmarkBuildTree times NewRoot over a 100,000-entry TOC.
func BenchmarkBuildTree(b *testing.B) {
	tc := syntheticTOC(b, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewRoot([]Layer{{Name: "bench", TOC: tc, Fetcher: fstest.NewBlobFetcher(nil)}}, Options{ReadAhead: -1})
		if err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}

func dropAllCaches(tb testing.TB) {
	tb.Helper()
	if err := exec3(); err != nil {
		tb.Skipf("cannot drop the page cache: %v", err)
	}
}

func exec3() error {
	f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	syncAll()
	_, err = f.WriteString("3")
	return err
}

// readAll reads p sequentially with 1 MiB reads and returns the throughput in MB/s.
func readAll(tb testing.TB, p string, want int64) float64 {
	tb.Helper()
	f, err := os.Open(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
	d := time.Since(start)
	if err != nil || n != want {
		tb.Fatalf("read %s: %d bytes of %d: %v", p, n, want, err)
	}
	return float64(n) / d.Seconds() / 1e6
}

// randomReads does 4 KiB reads at random 4 KiB-aligned offsets of p and
// returns the reads per second.
func randomReads(tb testing.TB, p string, size int64) float64 {
	tb.Helper()
	f, err := os.Open(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	const n = 4000
	start := time.Now()
	for range n {
		off := rng.Int64N(size/4096) * 4096
		if _, err := f.ReadAt(buf, off); err != nil {
			tb.Fatalf("read %s at %d: %v", p, off, err)
		}
	}
	return n / time.Since(start).Seconds()
}

// BenchmarkWarmRead reads a big file whose chunks are all in the cache, with
// the page cache dropped before each read, and the same file from the local
// disk (ext4) in the same iteration. LAZYFS_BENCH_MB sets the size (1024).
// Run it with -benchtime=5x or more: the ratio it reports is a median.
func BenchmarkWarmRead(b *testing.B) {
	requireFUSE(b)
	size := 1024 << 20
	if testing.Short() {
		size = 64 << 20
	}
	if s, err := strconv.Atoi(os.Getenv("LAZYFS_BENCH_MB")); err == nil && s > 0 {
		size = s << 20
	}
	data := toctest.Random(42, size)
	tarball := toctest.Tar(b, []toctest.File{reg("big", 0o644, data)})
	layer := convertLayer(b, tarball, toc.DefaultChunkSize)
	tarball = nil
	work := b.TempDir()
	ext4 := filepath.Join(work, "ext4-copy")
	if err := os.WriteFile(ext4, data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil
	badger, err := blobcache.Open(filepath.Join(work, "cache"), blobcache.WithCapacity(int64(2*size)))
	if err != nil {
		b.Fatal(err)
	}
	defer badger.Close()
	mem := fstest.NewMemCache()
	for _, c := range []Cache{badger, mem} {
		err := layer.fetcher.FetchChunks(context.Background(), layer.toc.Chunks, func(i int, d []byte) error {
			return c.Put(context.Background(), layer.toc.Chunks[i].Digest(), append([]byte(nil), d...))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	for _, v := range []struct {
		name string
		c    Cache
		opts Options
		mo   MountOptions
	}{
		{"badger", badger, Options{}, MountOptions{}},
		{"badger-syncread", badger, Options{}, MountOptions{SyncRead: true}},
		{"badger-default-readahead", badger, Options{}, MountOptions{ReadAheadKB: -1}},
		{"memory", mem, Options{}, MountOptions{}},
		{"badger-passthrough", badger, Options{Passthrough: true, SpoolDir: filepath.Join(work, "spool")}, MountOptions{}},
	} {
		b.Run(v.name, func(b *testing.B) {
			opts := v.opts
			opts.Cache = v.c
			dir, root := mountLayersWith(b, []*testLayer{layer}, opts, v.mo)
			p := filepath.Join(dir, "big")
			if opts.Passthrough {
				waitSpooled(b, root, p)
			}
			b.SetBytes(int64(size))
			// Each iteration reads both files, alternating which goes first,
			// with the page cache dropped before every read; the ratio is the
			// median of the iterations' ratios (a VM's disk varies by ±30%
			// between consecutive reads of the same file, so one pair says
			// little), ratio-min the worst pair.
			var fuseMBs, extMBs, fuseIOPS, extIOPS float64
			var ratios []float64
			seq := func(path string) float64 {
				dropAllCaches(b)
				return readAll(b, path, int64(size))
			}
			for i := 0; b.Loop(); i++ {
				var f, e float64
				if i%2 == 0 {
					f, e = seq(p), seq(ext4)
				} else {
					e, f = seq(ext4), seq(p)
				}
				fuseMBs += f
				extMBs += e
				ratios = append(ratios, f/e)
				dropAllCaches(b)
				fuseIOPS += randomReads(b, p, int64(size))
				dropAllCaches(b)
				extIOPS += randomReads(b, ext4, int64(size))
			}
			n := float64(b.N)
			slices.Sort(ratios)
			b.ReportMetric(fuseMBs/n, "lazyfs-MB/s")
			b.ReportMetric(extMBs/n, "ext4-MB/s")
			b.ReportMetric(ratios[len(ratios)/2], "ratio")
			b.ReportMetric(ratios[0], "ratio-min")
			b.ReportMetric(fuseIOPS/n, "lazyfs-rand4k/s")
			b.ReportMetric(extIOPS/n, "ext4-rand4k/s")
			s := root.Stats()
			b.ReportMetric(float64(s.Spliced)/float64(max(1, s.Reads)), "spliced/read")
			if s.FetchedChunks != 0 || (opts.Passthrough && s.Passthrough == 0) {
				b.Fatalf("not a warm read: %+v", s)
			}
		})
	}
}

// waitSpooled opens p until it is served through passthrough.
func waitSpooled(tb testing.TB, root *Root, p string) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		before := root.Stats().Passthrough
		f, err := os.Open(p)
		if err != nil {
			tb.Fatal(err)
		}
		f.Close()
		if root.Stats().Passthrough > before {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatal("file never served through passthrough")
}

func syncAll() { syscallSync() }

// BenchmarkInodeMemory reports the heap cost per entry once every entry of a
// 100,000-entry mount has been looked up (go-fuse inodes included), as a
// `find` over the whole tree leaves it.
func BenchmarkInodeMemory(b *testing.B) {
	requireFUSE(b)
	const n = 100_000
	tc := syntheticTOC(b, n)
	var per float64
	for b.Loop() {
		root, err := NewRoot([]Layer{{Name: "bench", TOC: tc, Fetcher: fstest.NewBlobFetcher(nil)}}, Options{ReadAhead: -1})
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		srv, err := Mount(dir, root, MountOptions{})
		if err != nil {
			b.Fatal(err)
		}
		h0 := heap()
		count := 0
		err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			_, err = os.Lstat(p)
			count++
			return err
		})
		if err != nil || count < n {
			b.Fatalf("walked %d entries: %v", count, err)
		}
		per = float64(heap()-h0) / float64(count)
		if err := srv.Unmount(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(per, "inode-B/entry")
}

// BenchmarkColdRead reads a 64 MiB file sequentially with nothing cached from
// a fetcher with a 20 ms round trip per request (no bandwidth limit), to
// measure what chunk read-ahead buys a cold reader.
func BenchmarkColdRead(b *testing.B) {
	requireFUSE(b)
	const size = 64 << 20
	layer := convertLayer(b, toctest.Tar(b, []toctest.File{reg("big", 0o644, toctest.Random(43, size))}), toc.DefaultChunkSize)
	layer.fetcher.SetLatency(20 * time.Millisecond)
	for _, ra := range []int{-1, 8, 32, 64} {
		b.Run(fmt.Sprintf("readahead=%d", max(ra, 0)), func(b *testing.B) {
			b.SetBytes(size)
			var mbs float64
			for b.Loop() {
				dir, root := mountLayers(b, []*testLayer{layer}, Options{Cache: fstest.NewMemCache(), ReadAhead: ra, PrefetchWorkers: 4})
				mbs += readAll(b, filepath.Join(dir, "big"), size)
				if root.Stats().EIO != 0 {
					b.Fatal("EIO")
				}
			}
			b.ReportMetric(mbs/float64(b.N), "MB/s")
		})
	}
}
