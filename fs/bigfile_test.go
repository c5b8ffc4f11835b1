package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// bigChunk is the chunk size of the big-file tests: the format's default.
const bigChunk = 256 << 10

// bigFileLayer converts a layer holding one incompressible file, model.bin,
// of size bytes (a model's weights compress about as badly).
func bigFileLayer(t testing.TB, size, chunk int) (*testLayer, []byte) {
	t.Helper()
	data := toctest.Random(uint64(size), size)
	tb := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "model.bin", Mode: 0o644}, Data: data}})
	return convertLayer(t, tb, chunk), data
}

// bigSize is the big file of the tests: 64 MiB (a bulk fill starts for it),
// 16 MiB under -short (CI runs ./fs/... under -race -short too).
func bigSize() int {
	if testing.Short() {
		return 16 << 20
	}
	return 64 << 20
}

// preadRetry fills p from f at off, retrying reads that fail with EIO (the
// flaky fetcher's failures) up to 50 times.
func preadRetry(f *os.File, p []byte, off int64) error {
	for done, fails := 0, 0; done < len(p); {
		n, err := f.ReadAt(p[done:], off+int64(done))
		done += n
		switch {
		case err == nil || done == len(p):
		case errors.Is(err, syscall.EIO) && fails < 50:
			fails++
		default:
			return fmt.Errorf("read at %d: %w", off+int64(done), err)
		}
	}
	return nil
}

// TestBigFile reads a big incompressible file byte for byte through a cold
// mount whose fetcher has a round trip and fails every 7th request: read
// sequentially, through mmap in random tensor-sized pieces (a loader), and by
// 8 concurrent readers. Failed reads give EIO (retried); wrong bytes never.
func TestBigFile(t *testing.T) {
	requireFUSE(t)
	size := bigSize()
	layer, want := bigFileLayer(t, size, bigChunk)
	// owned: the hot set keeps the fetcher's buffers (fs/remote's way),
	// stored in blobcache with the checksums computed as chunks arrive
	// (TestSpliceChecksFirst reads them back after a reopen); copied: the
	// hot set copies chunks out of a buffer the fetcher reuses, into a map
	// cache.
	for _, copied := range []bool{false, true} {
		t.Run(map[bool]string{false: "owned", true: "copied"}[copied], func(t *testing.T) {
			layer.fetcher.SetCopied(copied)
			t.Cleanup(func() { layer.fetcher.SetCopied(false) })
			newCache := func(t *testing.T) Cache { return fstest.NewMemCache() }
			if !copied {
				newCache = func(t *testing.T) Cache {
					c, err := blobcache.Open(t.TempDir())
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.Close() })
					return c
				}
			}
			testBigFile(t, layer, want, newCache)
		})
	}
}

func testBigFile(t *testing.T, layer *testLayer, want []byte, newCache func(*testing.T) Cache) {
	size := len(want)
	nchunks := int64(size / bigChunk)
	mount := func(t *testing.T) (string, *Root) {
		layer.fetcher.Reset()
		layer.fetcher.SetLatency(2 * time.Millisecond)
		layer.fetcher.SetFailEvery(7)
		t.Cleanup(func() { layer.fetcher.SetLatency(0); layer.fetcher.SetFailEvery(0) })
		return mountLayers(t, []*testLayer{layer}, Options{Cache: newCache(t), NeighbourWindow: -1})
	}

	t.Run("sequential", func(t *testing.T) {
		dir, root := mount(t)
		f, err := os.Open(filepath.Join(dir, "model.bin"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := make([]byte, size)
		read := func(from, to int) {
			for off := from; off < to; off += 1 << 20 {
				if err := preadRetry(f, got[off:min(off+1<<20, to)], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
		}
		read(0, size/2)
		// Let the hot set's buffers go and have the second half reuse them:
		// what the cache holds of the first half must be its own.
		if err := root.FlushCache(context.Background()); err != nil {
			t.Fatal(err)
		}
		// Chunks read whole and stored have left the hot set (all but
		// those the cache writer skipped).
		var kept int64
		for _, c := range root.t.layers[0].toc.Chunks {
			if c.Offset+int64(c.Size) <= int64(size/2) && root.hot.has(c.Sum) {
				kept++
			}
		}
		if skipped := root.Stats().CacheSkipped; kept > skipped {
			t.Errorf("%d chunks of the half read and cached still in the hot set (%d not cached)", kept, skipped)
		}
		root.hot.clear()
		read(size/2, size)
		if !bytes.Equal(got, want) {
			t.Fatalf("sequential read differs from the file (first difference at %d)", firstDiff(got, want))
		}
		dropCache(t, filepath.Join(dir, "model.bin"))
		clear(got)
		fetched := root.Stats().FetchedChunks
		read(0, size/2)
		if !bytes.Equal(got[:size/2], want[:size/2]) {
			t.Fatalf("re-read from the cache differs (first difference at %d)", firstDiff(got[:size/2], want[:size/2]))
		}
		if s := root.Stats(); s.FetchedChunks != fetched {
			t.Errorf("re-read fetched %d chunks: they should come from the cache", s.FetchedChunks-fetched)
		}
		t.Logf("%+v", root.Stats())
	})

	t.Run("mmap-random", func(t *testing.T) {
		dir, root := mount(t)
		if _, err := mmapLoad(t, filepath.Join(dir, "model.bin"), want, 1); err != nil {
			t.Fatal(err)
		}
		s := root.Stats()
		t.Logf("%+v", s)
		if size >= bulkMinSize && s.BulkFills == 0 {
			t.Errorf("a loader-like read of a %d MiB file started no bulk fill", size>>20)
		}
	})

	t.Run("concurrent-8", func(t *testing.T) {
		dir, root := mount(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for r := range 8 {
			wg.Go(func() {
				f, err := os.Open(filepath.Join(dir, "model.bin"))
				if err != nil {
					errs <- err
					return
				}
				defer f.Close()
				got := make([]byte, 1<<20)
				start := r * size / 8 / (1 << 20) * (1 << 20) // each begins elsewhere, then wraps
				for k := 0; k < size; k += 1 << 20 {
					off := (start + k) % size
					p := got[:min(1<<20, size-off)]
					if err := preadRetry(f, p, int64(off)); err != nil {
						errs <- fmt.Errorf("reader %d: %w", r, err)
						return
					}
					if !bytes.Equal(p, want[off:off+len(p)]) {
						errs <- fmt.Errorf("reader %d: bytes at %d differ", r, off)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		_, chunks, _ := layer.fetcher.Stats()
		t.Logf("%d chunks fetched for a file of %d; %+v", chunks, nchunks, root.Stats())
		if chunks > nchunks*3/2 {
			t.Errorf("8 readers of one cold file fetched %d chunks for %d: chunks are fetched more than once", chunks, nchunks)
		}
	})
}

// loaderTensors splits a file of size bytes into tensors of 2–16 MiB and
// returns them ([offset, length]) in a random order, as a model loader
// touches them.
func loaderTensors(size int, seed uint64) [][2]int {
	r := rand.New(rand.NewPCG(seed, 7))
	var ts [][2]int
	for off := 0; off < size; {
		n := min(2<<20+r.IntN(14<<20), size-off)
		ts = append(ts, [2]int{off, n})
		off += n
	}
	r.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
	return ts
}

// mmapChildEnv makes the test binary a loader-like mmap reader (see
// mmapChild): page faults on a FUSE mount must come from another process
// than the server, or a fault that waits for a READ can stall the server's
// garbage collector (stop-the-world waits for the faulting thread) forever.
const mmapChildEnv = "LAZYFS_TEST_MMAP_CHILD"

// mmapLoad reads path in another process the way a safetensors/GGUF loader
// does: mmap the file and copy tensors of 2–16 MiB out of it in a random
// order (loaderTensors(len(want), seed)); page faults that fail (EIO behind
// them: SIGBUS) are retried up to 50 times. It checks every tensor against
// want and returns the child's time from mmap to the last tensor.
func mmapLoad(t testing.TB, path string, want []byte, seed uint64) (time.Duration, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// No asynchronous preemption signals: each would interrupt the
	// faulting thread's FUSE request, which a real loader does not see.
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", mmapChildEnv, path, len(want), seed), "GODEBUG=asyncpreemptoff=1")
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("mmap reader: %w (%s)", err, stderrOf(err))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tensors := loaderTensors(len(want), seed)
	if len(lines) != len(tensors)+1 {
		return 0, fmt.Errorf("mmap reader printed %d lines for %d tensors", len(lines), len(tensors))
	}
	for i, tn := range tensors {
		sum := sha256.Sum256(want[tn[0] : tn[0]+tn[1]])
		if lines[i] != hex.EncodeToString(sum[:]) {
			return 0, fmt.Errorf("tensor at %d+%d: read %s, want %x", tn[0], tn[1], lines[i], sum)
		}
	}
	ns, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	return time.Duration(ns), err
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// mmapChild is the child of mmapLoad: it prints the sha256 of each tensor,
// then the nanoseconds it took.
func mmapChild() int {
	var path string
	var size int
	var seed uint64
	if _, err := fmt.Sscanf(os.Getenv(mmapChildEnv), "%s %d %d", &path, &size, &seed); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	start := time.Now()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer unix.Munmap(m)
	buf := make([]byte, 16<<20)
	tensors := loaderTensors(size, seed)
	for _, tn := range tensors {
		if err := copyFaulting(buf[:tn[1]], m[tn[0]:tn[0]+tn[1]]); err != nil {
			fmt.Fprintf(os.Stderr, "tensor at %d+%d: %v\n", tn[0], tn[1], err)
			return 1
		}
	}
	elapsed := time.Since(start)
	// Check pass, untimed: the pages are in the page cache now (if the
	// kernel dropped some, they are read again, through lazyfs).
	var sums []string
	for _, tn := range tensors {
		if err := copyFaulting(buf[:tn[1]], m[tn[0]:tn[0]+tn[1]]); err != nil {
			fmt.Fprintf(os.Stderr, "tensor at %d+%d: %v\n", tn[0], tn[1], err)
			return 1
		}
		sum := sha256.Sum256(buf[:tn[1]])
		sums = append(sums, hex.EncodeToString(sum[:]))
	}
	for _, s := range sums {
		fmt.Println(s)
	}
	fmt.Println(elapsed.Nanoseconds())
	return 0
}

// copyFaulting copies src (mmapped) into dst, retrying after a page fault
// fails (SIGBUS: the READ behind it got EIO) up to 50 times.
func copyFaulting(dst, src []byte) error {
	for fails := 0; ; fails++ {
		err := func() (err error) {
			old := debug.SetPanicOnFault(true)
			defer debug.SetPanicOnFault(old)
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("fault: %v", p)
				}
			}()
			copy(dst, src)
			return nil
		}()
		if err == nil || fails == 50 {
			return err
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// stuckCache is a cache whose Put blocks until the test ends, like a cache
// on a disk that stopped responding.
type stuckCache struct {
	*fstest.MemCache
	release chan struct{}
	puts    chan struct{}
}

func (c *stuckCache) Put(ctx context.Context, d digest.Digest, data []byte) error {
	select {
	case c.puts <- struct{}{}:
	default:
	}
	<-c.release
	return c.MemCache.Put(ctx, d, data)
}

// TestReaderNotBlockedByStuckCache: with a cache whose Put never returns,
// reads of a big file (read-ahead on, far more chunks than the write queue
// holds) still complete, byte for byte, served from the fetcher.
func TestReaderNotBlockedByStuckCache(t *testing.T) {
	requireFUSE(t)
	chunk, size := 64<<10, 32<<20 // 512 chunks: twice the write queue
	if testing.Short() {
		chunk, size = 32<<10, 16<<20
	}
	layer, want := bigFileLayer(t, size, chunk)
	cache := &stuckCache{MemCache: fstest.NewMemCache(), release: make(chan struct{}), puts: make(chan struct{}, 1)}
	dir, root := mountLayers(t, []*testLayer{layer}, Options{Cache: cache, NeighbourWindow: -1})
	t.Cleanup(func() { close(cache.release) }) // runs before the unmount
	done := make(chan error, 1)
	go func() {
		for range 2 { // the second time the hot set and the fetcher serve it
			got, err := os.ReadFile(filepath.Join(dir, "model.bin"))
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("bytes differ at %d", firstDiff(got, want))
			}
			if err != nil {
				done <- err
				return
			}
			dropCache(t, filepath.Join(dir, "model.bin"))
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute): // a hang, not a speed limit
		t.Fatalf("reads blocked behind a stuck cache: %+v", root.Stats())
	}
	select {
	case <-cache.puts:
	default:
		t.Fatal("the cache never got a Put: the test did not exercise the write path")
	}
	if s := root.Stats(); s.CacheSkipped == 0 {
		t.Errorf("no chunk skipped with the write queue full: %+v", s)
	}
}

// TestFullCacheDisk: the cache's disk fills up (another process) while a big
// file is read: reads keep working from the network, byte for byte; the cache
// stops writing at its free-space reserve instead of crashing the server
// with SIGBUS (issue 9, item 5).
func TestFullCacheDisk(t *testing.T) {
	requireFUSE(t)
	size := bigSize()
	layer, want := bigFileLayer(t, size, bigChunk)
	fsdir := blobcachetest.Tmpfs(t, 160<<20)
	cache, err := blobcache.Open(filepath.Join(fsdir, "cache"), blobcache.WithCapacity(64<<20), blobcache.WithValueLogFileSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	dir, root := mountLayers(t, []*testLayer{layer}, Options{Cache: cache, NeighbourWindow: -1})
	// The reserve is 43 MiB (3 × 1 MiB + 24 MiB + 16 MiB); leave 8 MiB above it.
	blobcachetest.Fill(t, filepath.Join(fsdir, "filler"), 51<<20)
	got, err := os.ReadFile(filepath.Join(dir, "model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes differ at %d", firstDiff(got, want))
	}
	if err := root.FlushCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs, fsst := cache.Stats(), root.Stats()
	t.Logf("cache %+v; fs %+v", cs, fsst)
	if cs.NoSpace == 0 || fsst.CacheErrors == 0 {
		t.Errorf("the cache never stopped writing on a full disk (NoSpace %d, CacheErrors %d)", cs.NoSpace, fsst.CacheErrors)
	}
	if cs.BytesIn == 0 {
		t.Errorf("the cache stored nothing before the disk filled")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(fsdir, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * int64(st.Bsize); free < 16<<20 {
		t.Errorf("%d bytes free: the cache wrote into its reserve", free)
	}
	// Still serving, from the network, once the cache has stopped.
	root.hot.clear()
	dropCache(t, filepath.Join(dir, "model.bin"))
	mustRead(t, filepath.Join(dir, "model.bin"), want)
}

// callSizes records the chunks of every FetchChunks call.
type callSizes struct {
	*fstest.BlobFetcher
	mu    sync.Mutex
	sizes []int
	rate  int64 // > 0: the link rate LinkRate reports (else the Root times fetches)
}

func (c *callSizes) LinkRate() (int64, int64, time.Duration) {
	if c.rate > 0 {
		return c.rate, linkSamples, 0
	}
	return 0, -1, 0
}

func (c *callSizes) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(chunks))
	c.mu.Unlock()
	return c.BlobFetcher.FetchChunks(ctx, chunks, fn)
}

// FetchChunksOwned goes through FetchChunks above (the embedded fetcher's
// would bypass it).
func (c *callSizes) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return c.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (c *callSizes) max() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Max(append([]int{0}, c.sizes...))
}

// TestBigFileReadAheadJobs: a sequential reader of a big file (≥ 64 MiB, not
// a library) gets read-ahead in jobs of up to 16 MiB, one range request
// each, so that a registry serves a model's weights in few requests, once
// the link has shown itself fast; a smaller file's jobs, and a big file's
// on a slow link (every fetch slower than slowLinkRate), stay at 4 MiB.
func TestBigFileReadAheadJobs(t *testing.T) {
	if testing.Short() {
		t.Skip("converts a 64 MiB file")
	}
	small := toctest.Random(5, 32<<20)
	big := toctest.Random(6, bulkMinSize)
	l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("big.bin", 0o644, big), reg("small.bin", 0o644, small)}), bigChunk)
	for _, tc := range []struct {
		name, file string
		want       []byte
		latency    time.Duration // per fetch: reads wait, so the window grows
		rate       int64         // the link's rate, if measured (a fetch of 2 ms per 4 MiB is not under -race)
		maxJobs    int           // chunks of the largest read-ahead job allowed
		minJobs    int           // ... and the largest expected at least
	}{
		{"small", "small.bin", small, 2 * time.Millisecond, 1 << 30, raJobBytes / bigChunk, raJobBytes / bigChunk},
		{"big", "big.bin", big, 2 * time.Millisecond, 1 << 30, bigRAJobBytes / bigChunk, raJobBytes/bigChunk + 1},
		// 4 MiB in 250 ms is 17 MB/s: the link never shows itself fast.
		{"big-slow-link", "big.bin", big, 250 * time.Millisecond, 0, raJobBytes / bigChunk, raJobBytes / bigChunk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &callSizes{BlobFetcher: fstest.NewBlobFetcher(l.blob), rate: tc.rate}
			f.SetLatency(tc.latency)
			dir, _ := mountFetcher(t, l, f, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache()})
			mustRead(t, filepath.Join(dir, tc.file), tc.want)
			if m := f.max(); m > tc.maxJobs || m < tc.minJobs {
				t.Errorf("largest fetch %d chunks of %d KiB, want %d to %d", m, bigChunk>>10, tc.minJobs, tc.maxJobs)
			}
		})
	}
}
