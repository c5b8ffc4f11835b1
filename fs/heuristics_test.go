package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestLibraryNoReadAhead: in a mount with a start-up profile, a shared
// library read sequentially gets no read-ahead (the loader faults in parts
// of it; the kernel's read-around is all it gets, and the profile names what
// start-up reads), while a file of the same size that is not a library
// does. Without a profile a library gets read-ahead only once a stream in it
// has run longRun bytes: a few short runs (the loader's faults) get none, a
// program reading it through does.
func TestLibraryNoReadAhead(t *testing.T) {
	data := toctest.Random(7, 512*testChunk) // 8 MiB: more than longRun plus the kernel's read-ahead
	tarball := toctest.Tar(t, []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "lib/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/libbig.so.1", Mode: 0o644}, Data: data},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/big.bin", Mode: 0o644}, Data: data},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/profiled", Mode: 0o644}, Data: []byte("x")},
	})
	layer := convertLayer(t, tarball, testChunk)
	for _, tc := range []struct {
		name    string
		profile bool
		run     int // chunks read before the pause for read-ahead
		ahead   bool
	}{
		{"lib/libbig.so.1", true, 4, false},
		{"lib/big.bin", true, 4, true},
		{"lib/libbig.so.1", false, 4, false},
		{"lib/libbig.so.1", false, longRun/testChunk + 8, true},
	} {
		t.Run(fmt.Sprintf("%s/profile=%v/run=%d", filepath.Base(tc.name), tc.profile, tc.run), func(t *testing.T) {
			dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, WholeLibrary: -1, Cache: fstest.NewMemCache(), ReadAhead: 32})
			if tc.profile {
				p, err := root.StartPrefetch([]ChunkSpan{fileSpan(t, layer, "etc/profiled")}, PrefetchOptions{})
				if err != nil {
					t.Fatal(err)
				}
				waitPrefetch(t, p)
			}
			base := root.Stats().Prefetched // the profile's own chunk
			f, err := os.Open(filepath.Join(dir, tc.name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// As TestReadAhead: sequential reads, a pause for the
			// read-ahead to run, then the rest.
			got := make([]byte, tc.run*testChunk)
			for i := range tc.run {
				if _, err := io.ReadFull(f, got[i*testChunk:(i+1)*testChunk]); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(2 * time.Second)
			for root.Stats().Prefetched == base && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			ahead := root.Stats().Prefetched > base
			rest, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(got, rest...), data) {
				t.Fatal("wrong bytes")
			}
			if ahead != tc.ahead {
				t.Errorf("%s: read ahead after %d chunks %v, want %v: %+v", tc.name, tc.run, ahead, tc.ahead, root.Stats())
			}
		})
	}
}

// TestWholeLibrary: opening a shared library of at most WholeLibrary
// compressed bytes fetches all of it in one request in the background, so
// that the reads the loader then makes are all hits; a bigger library, a
// file that is not a library, and any library in a mount with a start-up
// profile (Lean) are not fetched at open.
func TestWholeLibrary(t *testing.T) {
	files := map[string][]byte{
		"lib/libsmall.so.1": toctest.Random(1, 8*testChunk),
		"lib/libbig.so.2":   toctest.Random(2, 64*testChunk),
		"lib/data.bin":      toctest.Random(3, 8*testChunk),
	}
	tf := []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "lib/", Mode: 0o755}}}
	for _, n := range []string{"lib/data.bin", "lib/libbig.so.2", "lib/libsmall.so.1"} {
		tf = append(tf, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: files[n]})
	}
	l := convertLayer(t, toctest.Tar(t, tf), testChunk)
	for _, lean := range []bool{false, true} {
		t.Run(fmt.Sprintf("lean=%v", lean), func(t *testing.T) {
			f := fstest.NewBlobFetcher(l.blob)
			opts := Options{ReadAhead: -1, NeighbourWindow: -1, WholeLibrary: 16 * testChunk, Lean: lean, Cache: fstest.NewMemCache()}
			dir, r := mountFetcher(t, l, f, opts)
			for _, n := range []string{"lib/libbig.so.2", "lib/data.bin", "lib/libsmall.so.1"} {
				fh, err := os.Open(filepath.Join(dir, n))
				if err != nil {
					t.Fatal(err)
				}
				fh.Close()
			}
			small := fileSpan(t, l, "lib/libsmall.so.1")
			want := int64(0)
			if !lean {
				want = 1
				waitCached(t, r, l, "lib/libsmall.so.1")
			}
			if s := r.Stats(); s.LibraryJobs != want {
				t.Fatalf("%d whole-library jobs, want %d (only libsmall.so.1, and none when lean)", s.LibraryJobs, want)
			}
			if req, chunks, _ := f.Stats(); req != want || chunks != want*int64(small.Last-small.First) {
				t.Fatalf("%d requests for %d chunks at open, want %d for the small library's %d", req, chunks, want, small.Last-small.First)
			}
			got, err := os.ReadFile(filepath.Join(dir, "lib/libsmall.so.1"))
			if err != nil || !bytes.Equal(got, files["lib/libsmall.so.1"]) {
				t.Fatalf("libsmall.so.1: %v (or wrong bytes)", err)
			}
			if s := r.Stats(); !lean && s.ChunkMisses != 0 {
				t.Fatalf("reading the library fetched at open missed %d chunks", s.ChunkMisses)
			}
		})
	}
}

// stallFetcher delivers a background job's chunks one at a time, each after
// a signal on next, and reports on ready when it waits for the next one.
type stallFetcher struct {
	*fstest.BlobFetcher
	ready, next chan struct{}
}

// FetchChunksOwned goes through FetchChunks above (the embedded fetcher's
// would bypass it).
func (s *stallFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return s.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (s *stallFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	if ctx.Value(bgKey{}) == nil {
		return s.BlobFetcher.FetchChunks(ctx, chunks, fn)
	}
	return s.BlobFetcher.FetchChunks(ctx, chunks, func(i int, data []byte) error {
		select {
		case s.ready <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-s.next:
		case <-ctx.Done():
			return ctx.Err()
		}
		return fn(i, data)
	})
}

// TestPrefetchLandsEachChunk: a reader waiting for a chunk that a background
// job is fetching gets it as soon as that chunk arrives, not when the whole
// job ends.
func TestPrefetchLandsEachChunk(t *testing.T) {
	data := toctest.Random(4, 8*testChunk)
	l := convertLayer(t, toctest.Tar(t, []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "libx.so", Mode: 0o644}, Data: data},
	}), testChunk)
	s := &stallFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), ready: make(chan struct{}), next: make(chan struct{})}
	dir, r := mountFetcher(t, l, s, Options{ReadAhead: -1, NeighbourWindow: -1, WholeLibrary: 1 << 20, Cache: fstest.NewMemCache(), PrefetchContext: markBackground})
	f, err := os.Open(filepath.Join(dir, "libx.so")) // queues the whole-library job
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// One page, no kernel read-ahead: the READ needs chunk 0 only.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.ready: // the job holds every chunk's flight, chunk 0 not delivered yet
	case <-time.After(10 * time.Second):
		t.Fatal("the whole-library job never started")
	}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		_, err := f.ReadAt(buf, 0)
		if err == nil && !bytes.Equal(buf, data[:4096]) {
			err = fmt.Errorf("wrong bytes")
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the reader find the job's flight and wait on it
	s.next <- struct{}{}              // deliver chunk 0 only
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-s.ready: // the job waits to deliver chunk 1: the reader must be done
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the reader of chunk 0 still waits while the job is stalled on chunk 1")
		}
		s.next <- struct{}{}
	}
	// Let the rest of the job through.
	go func() {
		for {
			select {
			case <-s.ready:
				select { // the fetcher may give up (Root closed) after ready
				case s.next <- struct{}{}:
				case <-r.ctx.Done():
					return
				}
			case <-r.ctx.Done():
				return
			}
		}
	}()
	if req, _, _ := s.Stats(); req != 1 || r.Stats().ChunkMisses != 1 {
		t.Fatalf("%d requests, %d chunk misses: want chunk 0 one miss served by the job's request", req, r.Stats().ChunkMisses)
	}
}

// TestProfileNeighbours: a miss of a chunk the start-up profile names gets
// a neighbour window that ends where the profile's chunks end (the reader is
// ahead of the prefetch: bring what start-up reads next, nothing else), and
// none when the next chunk is not profiled; a miss outside the profile gets
// the usual window. The kernel read-ahead drops to 32 KiB once the profile
// starts.
func TestProfileNeighbours(t *testing.T) {
	files := map[string][]byte{"app/big.bin": toctest.Random(1, 32*pfChunk)}
	names := []string{"app/big.bin", "app/w.py", "app/x.py", "app/y.py", "app/z.py", "app/zz.py"}
	tf := []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755}}}
	for i, n := range names {
		if files[n] == nil {
			files[n] = toctest.Random(uint64(10+i), 3000)
		}
		tf = append(tf, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: files[n]})
	}
	l := convertLayer(t, toctest.Tar(t, tf), pfChunk)
	g := &gatedFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), gate: make(chan struct{}), started: make(chan struct{}, 1)}
	dir, r := mountFetcher(t, l, g, Options{ReadAhead: -1, NeighbourWindow: 64 << 10, Cache: fstest.NewMemCache(), PrefetchContext: markBackground})
	if ra := bdiReadAhead(t, dir); ra != "1024" {
		t.Errorf("kernel read-ahead before the profile %s KiB, want 1024", ra)
	}
	// The profile: big.bin, w.py, then x.py and y.py; z.py and zz.py are not
	// in it. The prefetch is held at its first batch.
	p := startHeld(t, r, g, l, names[:4])
	if ra := bdiReadAhead(t, dir); ra != "32" {
		t.Errorf("kernel read-ahead with a profile %s KiB, want 32", ra)
	}
	read := func(name string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Fatalf("%s: %v (or wrong bytes)", name, err)
		}
	}
	// y.py before x.py: x.py's window over y.py is a background job, held
	// by g like the profile; a read of y.py after it would wait for its
	// flight, and the gate opens only below.
	read("app/y.py") // profiled, the next file is not: no window
	if s := r.Stats(); s.ChunkMisses == 0 || s.NeighbourJobs != 0 {
		t.Fatalf("miss before the profile's end: %d misses, %d neighbour jobs; want a miss and none", s.ChunkMisses, s.NeighbourJobs)
	}
	read("app/x.py") // profiled, and so is the next file: a window over y.py
	if s := r.Stats(); s.NeighbourJobs != 1 {
		t.Fatalf("miss of a profiled file: %d neighbour jobs, want one", s.NeighbourJobs)
	}
	close(g.gate)
	waitPrefetch(t, p)
	z := fileSpan(t, l, "app/z.py")
	if c := &l.toc.Chunks[z.First]; r.cacheHas(context.Background(), c) || r.hot.has(c.Sum) {
		t.Fatal("z.py, outside the profile, was fetched by a profiled miss's window")
	}
	read("app/z.py") // outside the profile: the usual window
	if s := r.Stats(); s.NeighbourJobs != 2 {
		t.Fatalf("miss outside the profile: %d neighbour jobs, want 2", s.NeighbourJobs)
	}
}

// bdiReadAhead returns the read_ahead_kb of the mount at dir.
func bdiReadAhead(t testing.TB, dir string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestReadAheadStaysInProfile: a sequential reader inside the start-up
// profile reads ahead only over the profile's chunks, never past what
// start-up read.
func TestReadAheadStaysInProfile(t *testing.T) {
	l, files := prefetchLayer(t, 64)
	big := fileSpan(t, l, "app/big.bin")
	f := fstest.NewBlobFetcher(l.blob)
	dir, r := mountFetcher(t, l, f, Options{NeighbourWindow: -1, ReadAhead: 64, Cache: fstest.NewMemCache()})
	const profiled = 32
	p, err := r.StartPrefetch([]ChunkSpan{{Layer: 0, First: big.First, Last: big.First + profiled}}, PrefetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPrefetch(t, p)
	fh, err := os.Open(filepath.Join(dir, "app/big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 16*pfChunk)
	for i := range 16 {
		if _, err := io.ReadFull(fh, buf[i*pfChunk:(i+1)*pfChunk]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf, files["app/big.bin"][:len(buf)]) {
		t.Fatal("wrong bytes")
	}
	time.Sleep(200 * time.Millisecond) // let any read-ahead run
	if _, delivered, _ := f.Stats(); delivered != profiled {
		t.Fatalf("%d chunks fetched, want the profile's %d: read-ahead went past the profile", delivered, profiled)
	}
}

// TestNeighbourCrossing: a neighbour window stops before the chunks of a
// big file until the big-file chunks that windows brought turn out to be
// read (a program reading everything), then crosses; every neighbourProbe-th
// window crosses anyway to gather that evidence.
func TestNeighbourCrossing(t *testing.T) {
	tf := []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "pkg/", Mode: 0o755}}}
	for _, n := range []string{"a", "b", "c"} {
		tf = append(tf,
			toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "pkg/" + n + ".py", Mode: 0o644}, Data: toctest.Random(uint64(n[0]), 3000)},
			toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "pkg/" + n + "_big.bin", Mode: 0o644}, Data: toctest.Random(uint64(n[0])+50, 32*testChunk)})
	}
	l := convertLayer(t, toctest.Tar(t, tf), testChunk)
	f := fstest.NewBlobFetcher(l.blob)
	// A window of 16 chunks: it cannot reach past a big file of 32.
	dir, r := mountFetcher(t, l, f, Options{ReadAhead: -1, WholeLibrary: -1, NeighbourWindow: 16 * testChunk, Cache: fstest.NewMemCache()})
	fetched := func(path string) int {
		n, _ := cachedChunks(t, r, l, path)
		return n
	}
	miss := func(name string, jobs int64) {
		t.Helper()
		if _, err := os.ReadFile(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for r.Stats().NeighbourJobs < jobs {
			if time.Now().After(deadline) {
				t.Fatalf("neighbour job %d never queued: %+v", jobs, r.Stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // let the job's fetch land
	}
	// The first window is a probe: it crosses into a_big.bin.
	miss("pkg/a.py", 1)
	if n := fetched("pkg/a_big.bin"); n == 0 {
		t.Fatal("the first window (a probe) stopped before a big file")
	}
	// No evidence that big neighbours are read: the next window stops at
	// b_big.bin, which follows b.py at once (so there is no job at all).
	miss("pkg/b.py", 1)
	if n := fetched("pkg/b_big.bin"); n != 0 {
		t.Fatalf("%d chunks of b_big.bin fetched without evidence that big neighbours are read", n)
	}
	// Evidence that they are: crossing.
	r.nb.nbrought.Store(neighbourMinSample)
	r.nb.used.Store(neighbourMinSample)
	miss("pkg/c.py", 2)
	if n := fetched("pkg/c_big.bin"); n == 0 {
		t.Fatal("the window stopped before c_big.bin although big neighbours were read")
	}
	// Reads of brought chunks count as use.
	used := r.nb.used.Load()
	if _, err := os.ReadFile(filepath.Join(dir, "pkg/c_big.bin")); err != nil {
		t.Fatal(err)
	}
	if r.nb.used.Load() <= used {
		t.Fatal("reading c_big.bin, brought by a window, was not counted as use")
	}
}

// cachedChunks counts the chunks of the file at path that r holds (cache or
// hot set), out of its total.
func cachedChunks(t testing.TB, r *Root, l *testLayer, path string) (cached, total int) {
	t.Helper()
	sp := fileSpan(t, l, path)
	for i := sp.First; i < sp.Last; i++ {
		if r.cacheHas(context.Background(), &l.toc.Chunks[i]) {
			cached++
		}
	}
	return cached, sp.Last - sp.First
}

// waitCached waits (10 s at most) until r holds every chunk of the file at
// path, which background work is fetching.
func waitCached(t testing.TB, r *Root, l *testLayer, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, total := cachedChunks(t, r, l, path)
		if n == total {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d chunks fetched after 10 s: %+v", path, n, total, r.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// concurrencyFetcher counts the FetchChunks calls in flight, each held for
// a while, and remembers the most at once.
type concurrencyFetcher struct {
	*fstest.BlobFetcher
	mu       sync.Mutex
	now, max int
}

// FetchChunksOwned goes through FetchChunks above (the embedded fetcher's
// would bypass it).
func (f *concurrencyFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return f.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (f *concurrencyFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	f.mu.Lock()
	f.now++
	f.max = max(f.max, f.now)
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.now--; f.mu.Unlock() }()
	time.Sleep(20 * time.Millisecond)
	return f.BlobFetcher.FetchChunks(ctx, chunks, fn)
}

// TestSlowLinkBackgroundJobs: once the link shows itself slow, at most
// slowLinkJobs background fetches run at once without a profile; before,
// all the workers do.
func TestSlowLinkBackgroundJobs(t *testing.T) {
	var files []toctest.File
	for i := range 32 {
		files = append(files, reg(fmt.Sprintf("d/f%02d", i), 0o644, toctest.Random(uint64(i), 8<<10)))
	}
	l := convertLayer(t, toctest.Tar(t, files), toc.DefaultChunkSize)
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprintf("slow=%v", slow), func(t *testing.T) {
			f := &concurrencyFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob)}
			r := newTestRoot(t, l, f, Options{Cache: fstest.NewMemCache(), PrefetchWorkers: 8})
			r.link.slow.Store(slow)
			var wg sync.WaitGroup
			for i := range len(l.toc.Chunks) {
				wg.Add(1)
				if !r.queuePrefetch(prefetchJob{l: r.t.layers[0], first: i, last: i + 1, done: wg.Done}) {
					t.Fatal("prefetch queue full")
				}
			}
			wg.Wait()
			f.mu.Lock()
			defer f.mu.Unlock()
			if slow && f.max > slowLinkJobs {
				t.Errorf("%d background fetches at once on a slow link, want at most %d", f.max, slowLinkJobs)
			}
			if !slow && f.max <= slowLinkJobs {
				t.Errorf("%d background fetches at once on a fast link, want more than %d", f.max, slowLinkJobs)
			}
		})
	}
}

// meterFetcher is a fetcher whose calls take delay and that reports the
// link rate the test sets (a LinkMeter, like fs/remote's Blob).
type meterFetcher struct {
	b                  *fstest.BlobFetcher
	delay              time.Duration
	rate, samples, rtt atomic.Int64
}

func (f *meterFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	time.Sleep(f.delay)
	return f.b.FetchChunks(ctx, chunks, fn)
}

func (f *meterFetcher) LinkRate() (int64, int64, time.Duration) {
	return f.rate.Load(), f.samples.Load(), time.Duration(f.rtt.Load())
}

// TestLinkMeter: with a fetcher that measures the link (fs/remote times a
// response's body without its round trip), the Root judges the link by that
// measure, not by its own fetches' durations, and starts from what the
// fetcher knew; a wrapper with nothing behind it (samples < 0) leaves the
// Root timing its own fetches.
func TestLinkMeter(t *testing.T) {
	const cs = 256 << 10
	l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("w", 0o644, toctest.Random(9, 8*cs))}), cs)
	all := make([]int, len(l.toc.Chunks))
	for i := range all {
		all[i] = i
	}
	// 2 MiB in 100 ms per call: 20 MiB/s by the Root's own clock.
	fetchSlowly := func(r *Root) {
		t.Helper()
		for range linkSamples {
			if _, err := r.fetch(context.Background(), r.t.layers[0], all, nil); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The fetcher measures the link fast (its round trips were the slow
	// part): the Root's slow clock does not count.
	f := &meterFetcher{b: fstest.NewBlobFetcher(l.blob), delay: 100 * time.Millisecond}
	f.rate.Store(100 << 20)
	f.samples.Store(linkSamples)
	r := newTestRoot(t, l, f, Options{})
	fetchSlowly(r)
	if st := r.Stats(); st.SlowLink || st.LinkBytesPerSecond != 100<<20 {
		t.Errorf("fetcher measured 100 MiB/s: Stats() SlowLink %v, LinkBytesPerSecond %d", st.SlowLink, st.LinkBytesPerSecond)
	}

	// Too few samples yet: not slow; once the fetcher has linkSamples of
	// them all below slowLinkRate, the next fetch makes the link slow.
	f.rate.Store(20 << 20)
	f.samples.Store(linkSamples - 1)
	r = newTestRoot(t, l, f, Options{})
	fetchSlowly(r)
	if r.Stats().SlowLink {
		t.Errorf("fetcher with %d samples: slow already", linkSamples-1)
	}
	f.samples.Store(linkSamples)
	if _, err := r.fetch(context.Background(), r.t.layers[0], all[:1], nil); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); !st.SlowLink || st.LinkBytesPerSecond != 20<<20 {
		t.Errorf("fetcher measured 20 MiB/s over %d samples: Stats() SlowLink %v, LinkBytesPerSecond %d", linkSamples, st.SlowLink, st.LinkBytesPerSecond)
	}

	// A new Root on a fetcher that already knows the link slow (a daemon's
	// earlier mounts) is slow before its first read; with a round trip
	// short for the rate too.
	f.rtt.Store(int64(time.Millisecond)) // 20 KiB per round trip
	if r := newTestRoot(t, l, f, Options{}); !r.Stats().SlowLink || r.KernelReadAheadKB() != slowReadAheadKB {
		t.Errorf("Root on a fetcher that knew the link slow: SlowLink %v, kernel read-ahead %d KiB", r.Stats().SlowLink, r.KernelReadAheadKB())
	}
	// A far link (1 MiB per 50 ms round trip at 20 MiB/s) is never slow:
	// round trips cost more there than the bytes the slow-link behaviours
	// save.
	f.rtt.Store(int64(50 * time.Millisecond))
	r = newTestRoot(t, l, f, Options{})
	fetchSlowly(r)
	if st := r.Stats(); st.SlowLink || st.LinkRTTSeconds != 0.05 || r.KernelReadAheadKB() != farLinkScale*bigReadAheadKB {
		t.Errorf("far link: SlowLink %v, LinkRTTSeconds %v, kernel read-ahead %d KiB", st.SlowLink, st.LinkRTTSeconds, r.KernelReadAheadKB())
	}
	// A short round trip is the registry's own time, not distance, however
	// much it would carry (40 MiB/s × 8 ms = 320 KiB): slow.
	f.rate.Store(40 << 20)
	f.rtt.Store(int64(8 * time.Millisecond))
	if r := newTestRoot(t, l, f, Options{}); !r.Stats().SlowLink {
		t.Errorf("40 MiB/s, 8 ms round trip: not slow")
	}
	f.rate.Store(20 << 20)
	f.rtt.Store(0)

	// samples < 0: no measure behind the fetcher; the Root's own clock.
	f.samples.Store(-1)
	r = newTestRoot(t, l, f, Options{})
	fetchSlowly(r)
	if st := r.Stats(); !st.SlowLink || st.LinkBytesPerSecond <= 0 || st.LinkBytesPerSecond >= slowLinkRate {
		t.Errorf("no measure, 2 MiB per 100 ms: Stats() SlowLink %v, LinkBytesPerSecond %d", st.SlowLink, st.LinkBytesPerSecond)
	}
}

// TestFarLink: on a far link (a round trip of ≥ farLinkRTT carrying ≥
// farLinkBytes) a start without a profile takes farLinkScale times more
// per round trip: whole libraries up to that many times WholeLibrary, and a
// kernel read-ahead that many times bigReadAheadKB (set through Mount's
// hook when the link turns out far); a near link keeps the defaults.
func TestFarLink(t *testing.T) {
	lib := toctest.Random(4, 40*testChunk)
	tf := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "lib/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/libmid.so.1", Mode: 0o644}, Data: lib},
	}
	l := convertLayer(t, toctest.Tar(t, tf), testChunk)
	span := fileSpan(t, l, "lib/libmid.so.1")
	for _, far := range []bool{false, true} {
		t.Run(fmt.Sprintf("far=%v", far), func(t *testing.T) {
			f := fstest.NewBlobFetcher(l.blob)
			opts := Options{ReadAhead: -1, NeighbourWindow: -1, WholeLibrary: 16 * testChunk, Cache: fstest.NewMemCache()}
			dir, r := mountFetcher(t, l, f, opts)
			var set atomic.Int64
			r.setKernelRA(func(kb int) { set.Store(int64(kb)) })
			rtt := time.Millisecond // the registry's own time: near
			if far {
				rtt = 30 * time.Millisecond // 3 MiB per round trip
			}
			r.link.rtt.Store(int64(rtt))
			r.noteLink(100<<20, 1)
			wantRA := int64(bigReadAheadKB)
			if far {
				wantRA = farLinkScale * bigReadAheadKB
				if set.Load() != wantRA {
					t.Errorf("far link: Mount's kernel read-ahead set to %d KiB, want %d", set.Load(), wantRA)
				}
			}
			if got := r.KernelReadAheadKB(); int64(got) != wantRA {
				t.Errorf("KernelReadAheadKB() = %d, want %d", got, wantRA)
			}
			fh, err := os.Open(filepath.Join(dir, "lib/libmid.so.1"))
			if err != nil {
				t.Fatal(err)
			}
			fh.Close()
			// 40 chunks: over WholeLibrary (16), within 4 times it.
			want := int64(0)
			if far {
				want = 1
				waitCached(t, r, l, "lib/libmid.so.1")
			}
			if s := r.Stats(); s.LibraryJobs != want {
				t.Fatalf("%d whole-library jobs for a 40-chunk library, want %d", s.LibraryJobs, want)
			}
			if _, chunks, _ := f.Stats(); chunks != want*int64(span.Last-span.First) {
				t.Fatalf("%d chunks fetched at open, want %d", chunks, want*int64(span.Last-span.First))
			}
			if got, err := os.ReadFile(filepath.Join(dir, "lib/libmid.so.1")); err != nil || !bytes.Equal(got, lib) {
				t.Fatalf("libmid.so.1: %v (or wrong bytes)", err)
			}
		})
	}
}

// TestFarLinkNeighbours: on a far link the neighbour window after a
// small-file miss is farLinkScale times NeighbourWindow.
func TestFarLinkNeighbours(t *testing.T) {
	tf := []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "py/", Mode: 0o755}}}
	for i := range 24 {
		tf = append(tf, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("py/f%02d.py", i), Mode: 0o644}, Data: toctest.Random(uint64(100+i), 4<<10)})
	}
	l := convertLayer(t, toctest.Tar(t, tf), testChunk)
	for _, far := range []bool{false, true} {
		t.Run(fmt.Sprintf("far=%v", far), func(t *testing.T) {
			f := fstest.NewBlobFetcher(l.blob)
			// 16 KiB: the next ~3 files of 4 KiB; 64 KiB when far: ~15.
			opts := Options{ReadAhead: -1, NeighbourWindow: 16 << 10, WholeLibrary: -1, Cache: fstest.NewMemCache()}
			dir, r := mountFetcher(t, l, f, opts)
			if far {
				r.link.rtt.Store(int64(30 * time.Millisecond))
				r.noteLink(100<<20, 1)
			}
			if _, err := os.ReadFile(filepath.Join(dir, "py/f00.py")); err != nil {
				t.Fatal(err)
			}
			waitCached(t, r, l, "py/f02.py") // in either window; its job has ended
			if far {
				waitCached(t, r, l, "py/f12.py")
				return
			}
			if n, _ := cachedChunks(t, r, l, "py/f12.py"); n != 0 {
				t.Errorf("near link: py/f12.py fetched by a 16 KiB window")
			}
		})
	}
}

// TestFarScale: a start without a profile takes the round trip's bytes over
// farLinkBytes (rounded) times its defaults per round trip, 1 to
// farLinkScale, and 1 on a link that is not far.
func TestFarScale(t *testing.T) {
	l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("f", 0o644, []byte("x"))}), testChunk)
	for _, tc := range []struct {
		rate int64
		rtt  time.Duration
		want int64
	}{
		{100 << 20, time.Millisecond, 1},      // the registry's own time: near
		{100 << 20, 8 * time.Millisecond, 1},  // 800 KiB, but under farLinkRTT
		{20 << 20, 12 * time.Millisecond, 1},  // 246 KiB: near
		{25 << 20, 20 * time.Millisecond, 2},  // 512 KiB
		{25 << 20, 30 * time.Millisecond, 3},  // 768 KiB
		{30 << 20, 32 * time.Millisecond, 4},  // 983 KiB: 3.84, rounded
		{100 << 20, 30 * time.Millisecond, 4}, // 3 MiB: at most farLinkScale
	} {
		r := newTestRoot(t, l, noFetcher{}, Options{})
		r.link.rtt.Store(int64(tc.rtt))
		r.noteLink(tc.rate, 1)
		if got := r.farScale(); got != tc.want {
			t.Errorf("%d B/s, %v: farScale() = %d, want %d", tc.rate, tc.rtt, got, tc.want)
		}
	}
}

// gateFetcher holds fetches of the chunks in hold until gate closes.
type gateFetcher struct {
	*fstest.BlobFetcher
	hold    map[[32]byte]bool
	gate    chan struct{}
	blocked atomic.Int32
}

// FetchChunksOwned goes through FetchChunks (the embedded fetcher's would
// bypass it).
func (f *gateFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return f.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (f *gateFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	for _, c := range chunks {
		if f.hold[c.Sum] {
			f.blocked.Add(1)
			select {
			case <-f.gate:
			case <-ctx.Done():
				return ctx.Err()
			}
			break
		}
	}
	return f.BlobFetcher.FetchChunks(ctx, chunks, fn)
}

// TestSlowLinkQueuedJobHoldsNoChunk: on a slow link, a background job
// waiting for one of the slowLinkJobs tokens has claimed none of its
// chunks, so a reader that needs one fetches it at once instead of
// waiting behind the background fetches that hold the tokens.
func TestSlowLinkQueuedJobHoldsNoChunk(t *testing.T) {
	var files []toctest.File
	for i := range 8 {
		files = append(files, reg(fmt.Sprintf("d/f%d", i), 0o644, toctest.Random(uint64(100+i), 8<<10)))
	}
	l := convertLayer(t, toctest.Tar(t, files), toc.DefaultChunkSize)
	chunk := map[string]int{}
	for _, e := range l.toc.Entries {
		if e.NumChunks == 1 {
			chunk[e.Name] = int(e.FirstChunk)
		}
	}
	f := &gateFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), gate: make(chan struct{}), hold: map[[32]byte]bool{}}
	defer close(f.gate)
	for i := range slowLinkJobs {
		f.hold[l.toc.Chunks[chunk[fmt.Sprintf("d/f%d", i)]].Sum] = true
	}
	r := newTestRoot(t, l, f, Options{Cache: fstest.NewMemCache(), PrefetchWorkers: 8})
	r.link.slow.Store(true)
	ly := r.t.layers[0]
	for i := range slowLinkJobs {
		c := chunk[fmt.Sprintf("d/f%d", i)]
		if !r.queuePrefetch(prefetchJob{l: ly, first: c, last: c + 1}) {
			t.Fatal("prefetch queue full")
		}
	}
	for deadline := time.Now().Add(10 * time.Second); f.blocked.Load() < slowLinkJobs; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d background fetches started, want %d", f.blocked.Load(), slowLinkJobs)
		}
	}
	// Both tokens are held: the next job waits for one.
	c := chunk["d/f7"]
	if !r.queuePrefetch(prefetchJob{l: ly, first: c, last: c + 1}) {
		t.Fatal("prefetch queue full")
	}
	time.Sleep(50 * time.Millisecond) // a worker has taken the job
	dir, ok := r.t.child(0, "d")
	if !ok {
		t.Fatal("no d")
	}
	k, ok := r.t.child(dir, "f7")
	if !ok {
		t.Fatal("no d/f7")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 8<<10)
	n, _, _, errno := r.readFile(ctx, r.t.nodes[k].data, buf, 0, nil)
	if errno != 0 || !bytes.Equal(buf[:n], files[7].Data) {
		t.Fatalf("read of a chunk queued behind two held background fetches: %d bytes, errno %v (want its bytes at once)", n, errno)
	}
}

// TestCompiledSources: a Python source with its compiled copy in the
// __pycache__ beside it is one a neighbour window does not run into
// unless such files turn out to be read or the link is judged (known slow
// or shown fast); one without stays an ordinary small file.
func TestCompiledSources(t *testing.T) {
	small := func(name string, seed uint64) toctest.File {
		return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Data: toctest.Random(seed, 3000)}
	}
	tf := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "pkg/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "pkg/__pycache__/", Mode: 0o755}},
		small("pkg/__pycache__/__init__.cpython-311.pyc", 1),
		small("pkg/__pycache__/a.cpython-311.pyc", 2),
		small("pkg/__pycache__/b.cpython-311.opt-1.pyc", 3),
		small("pkg/__init__.py", 4),
		small("pkg/a.py", 5),
		small("pkg/a.pyi", 6),
		small("pkg/b.py", 7),
		small("pkg/c.py", 8),
		small("pkg/sub/a.py", 9),
		small("pkg/z.txt", 10),
	}
	l := convertLayer(t, toctest.Tar(t, tf), testChunk)
	var got []string
	for _, e := range compiledSources(l.toc) {
		got = append(got, e.Name)
	}
	if want := []string{"pkg/__init__.py", "pkg/a.py", "pkg/b.py"}; !slices.Equal(got, want) {
		t.Fatalf("compiled sources %q, want %q", got, want)
	}

	for _, link := range []string{"unknown", "slow", "fast"} {
		dir, r := mountFetcher(t, l, fstest.NewBlobFetcher(l.blob), Options{ReadAhead: -1, WholeLibrary: -1, NeighbourWindow: 16 * testChunk, Cache: fstest.NewMemCache()})
		switch link {
		case "slow":
			r.link.slow.Store(true)
		case "fast":
			r.link.max.Store(slowLinkRate)
		}
		r.nb.windows.Store(1) // the next window is not a probe
		if _, err := os.ReadFile(filepath.Join(dir, "pkg/__pycache__/__init__.cpython-311.pyc")); err != nil {
			t.Fatal(err)
		}
		waitCached(t, r, l, "pkg/__pycache__/b.cpython-311.opt-1.pyc")
		if link != "unknown" {
			// On a link judged the window runs on (prefetchNeighbours).
			waitCached(t, r, l, "pkg/z.txt")
			continue
		}
		time.Sleep(100 * time.Millisecond) // nothing more arrives
		for _, p := range []string{"pkg/__init__.py", "pkg/a.py", "pkg/z.txt"} {
			if n, _ := cachedChunks(t, r, l, p); n != 0 {
				t.Errorf("%s fetched by the window after a .pyc miss", p)
			}
		}
		// Once the sources turn out to be read, windows run on into them.
		r.nb.nbrought.Store(neighbourMinSample)
		r.nb.used.Store(neighbourMinSample)
		if _, err := os.ReadFile(filepath.Join(dir, "pkg/__init__.py")); err != nil {
			t.Fatal(err)
		}
		waitCached(t, r, l, "pkg/z.txt")
	}
}
