package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/opencontainers/go-digest"
)

const pfChunk = 16 << 10

// prefetchLayer converts a layer of a few small files and one big file of
// nBig chunks.
func prefetchLayer(t testing.TB, nBig int) (*testLayer, map[string][]byte) {
	t.Helper()
	files := map[string][]byte{
		"app/big.bin": toctest.Random(1, nBig*pfChunk),
		"app/a.py":    toctest.Random(2, 3000),
		"app/b.py":    toctest.Random(3, 2*pfChunk+100),
		"lib/c.so":    toctest.Random(4, 5*pfChunk),
		"lib/d.so":    toctest.Random(5, pfChunk),
	}
	var tf []toctest.File
	for _, d := range []string{"app/", "lib/"} {
		tf = append(tf, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}})
	}
	for _, n := range []string{"app/big.bin", "app/a.py", "app/b.py", "lib/c.so", "lib/d.so"} {
		tf = append(tf, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: files[n]})
	}
	return convertLayer(t, toctest.Tar(t, tf), pfChunk), files
}

// fileSpan returns the span of all chunks of the file named path in l.
func fileSpan(t testing.TB, l *testLayer, path string) ChunkSpan {
	t.Helper()
	for _, e := range l.toc.Entries {
		if e.Name == path {
			return ChunkSpan{Layer: 0, First: int(e.FirstChunk), Last: int(e.FirstChunk + e.NumChunks)}
		}
	}
	t.Fatalf("no file %s", path)
	return ChunkSpan{}
}

func newTestRoot(t testing.TB, l *testLayer, fetcher ChunkFetcher, opts Options) *Root {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	r, err := NewRoot([]Layer{{Name: "test/layer0", TOC: l.toc, Fetcher: fetcher}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// mountFetcher mounts layer l served by fetcher f (instead of its own) in a
// temporary directory, unmounted when the test ends.
func mountFetcher(t testing.TB, l *testLayer, f ChunkFetcher, opts Options) (string, *Root) {
	t.Helper()
	requireFUSE(t)
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	r, err := NewRoot([]Layer{{Name: "test/layer0", TOC: l.toc, Fetcher: f}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(dir, r, MountOptions{})
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	return dir, r
}

func waitPrefetch(t testing.TB, p *Prefetcher) PrefetchStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return p.Stats()
}

// noBackground turns off read-ahead and neighbour prefetch, so that every
// fetch in a test is the profile's or a foreground read's.
var noBackground = Options{ReadAhead: -1, NeighbourWindow: -1}

// A profile of N contiguous chunks is fetched in about N / (chunks per
// batch) requests, however finely its spans were recorded.
func TestPrefetchCoalescesProfile(t *testing.T) {
	const n = 64
	l, _ := prefetchLayer(t, n)
	big := fileSpan(t, l, "app/big.bin")
	var comp int64
	for i := big.First; i < big.Last; i++ {
		comp += int64(l.toc.Chunks[i].CompressedSize)
	}
	const maxBatch = 128 << 10
	want := (comp + maxBatch - 1) / maxBatch // N / (chunks per batch), in bytes
	for _, fine := range []bool{false, true} {
		t.Run(fmt.Sprintf("one-chunk spans=%v", fine), func(t *testing.T) {
			spans := []ChunkSpan{big}
			if fine {
				spans = nil
				for i := big.First; i < big.Last; i++ {
					spans = append(spans, ChunkSpan{Layer: 0, First: i, Last: i + 1})
				}
			}
			f := fstest.NewBlobFetcher(l.blob)
			opts := noBackground
			opts.Cache = fstest.NewMemCache()
			r := newTestRoot(t, l, f, opts)
			p, err := r.StartPrefetch(spans, PrefetchOptions{MaxBatch: maxBatch})
			if err != nil {
				t.Fatal(err)
			}
			st := waitPrefetch(t, p)
			reqs, chunks, _ := f.Stats()
			t.Logf("%d chunks (%d compressed bytes) in %d requests; bound %d bytes, expected ≈%d", n, comp, reqs, maxBatch, want)
			if chunks != n || st.ProfileChunks != n || st.ProfileLocal != n {
				t.Fatalf("fetched %d chunks, stats %+v; want %d", chunks, st, n)
			}
			if reqs < want || reqs > want+1 {
				t.Fatalf("%d requests for %d contiguous chunks, want %d (compressed bytes / %d-byte bound) or one more", reqs, n, want, maxBatch)
			}
			if st.Phase != "done" || st.Batches != reqs {
				t.Fatalf("stats %+v, want phase done and %d batches", st, reqs)
			}
		})
	}
}

// gatedFetcher holds back fetches made under the background context
// (profile, fill) until the gate opens; foreground reads pass.
type gatedFetcher struct {
	*fstest.BlobFetcher
	gate    chan struct{}
	started chan struct{}
	fg      atomic.Int64 // chunks delivered to foreground reads
}

// startHeld starts a prefetch of the files at paths (one worker, 64 KiB
// batches) through g and returns once g holds its first batch.
func startHeld(t testing.TB, r *Root, g *gatedFetcher, l *testLayer, paths []string) *Prefetcher {
	t.Helper()
	var spans []ChunkSpan
	for _, p := range paths {
		spans = append(spans, fileSpan(t, l, p))
	}
	p, err := r.StartPrefetch(spans, PrefetchOptions{Workers: 1, MaxBatch: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the prefetch never started fetching")
	}
	return p
}

type bgKey struct{}

func markBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, bgKey{}, true)
}

// FetchChunksOwned goes through FetchChunks above (the embedded fetcher's
// would bypass it).
func (g *gatedFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return g.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (g *gatedFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	if ctx.Value(bgKey{}) == nil {
		g.fg.Add(int64(len(chunks)))
	}
	if err := g.hold(ctx); err != nil {
		return err
	}
	return g.BlobFetcher.FetchChunks(ctx, chunks, fn)
}

// hold holds a background fetch until the gate opens.
func (g *gatedFetcher) hold(ctx context.Context) error {
	if ctx.Value(bgKey{}) == nil {
		return nil
	}
	select {
	case g.started <- struct{}{}:
	default:
	}
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mountGated mounts a layer of small files and a 32-chunk big.bin, served
// through a gatedFetcher (as fetcher wraps it) that holds background
// fetches back until its gate opens.
func mountGated(t *testing.T, fetcher func(*gatedFetcher) ChunkFetcher) (*testLayer, map[string][]byte, *gatedFetcher, string, *Root) {
	t.Helper()
	l, files := prefetchLayer(t, 32)
	g := &gatedFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), gate: make(chan struct{}), started: make(chan struct{}, 1)}
	l.fetcher = nil
	opts := noBackground
	opts.Cache = fstest.NewMemCache()
	opts.PrefetchContext = markBackground
	dir, r := mountFetcher(t, l, fetcher(g), opts)
	return l, files, g, dir, r
}

// A foreground read of a chunk at the end of the profile does not wait for
// the queue: it gets the right bytes while the prefetch is still held back,
// and the prefetch then finds the chunk cached instead of fetching it again.
// Once prefetched, the profiled files read correctly with the registry gone.
func TestPrefetchForegroundJumpsQueue(t *testing.T) {
	l, files, g, dir, r := mountGated(t, func(g *gatedFetcher) ChunkFetcher { return g })

	profiled := []string{"app/big.bin", "app/a.py", "lib/d.so"}
	p := startHeld(t, r, g, l, profiled)
	// lib/d.so is the profile's last file, behind every batch of big.bin.
	got, err := os.ReadFile(filepath.Join(dir, "lib/d.so"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, files["lib/d.so"]) {
		t.Fatal("foreground read during prefetch returned wrong bytes")
	}
	if st := p.Stats(); st.ProfileLocal != 0 || st.Phase != "profile" {
		t.Fatalf("the read waited for the prefetch: %+v", st)
	}
	close(g.gate)
	st := waitPrefetch(t, p)
	d := fileSpan(t, l, "lib/d.so")
	_, delivered, _ := g.Stats()
	if want := st.ProfileChunks; delivered != want || g.fg.Load() != int64(d.Last-d.First) {
		t.Fatalf("%d chunks delivered (%d to the foreground), want %d: the prefetch fetched the read's chunk again", delivered, g.fg.Load(), want)
	}
	if st.ProfileLocal != st.ProfileChunks {
		t.Fatalf("profile not all local: %+v", st)
	}
	if err := r.FlushCache(context.Background()); err != nil {
		t.Fatal(err)
	}

	// The registry is gone: profiled files still read, others do not.
	g.SetFailing(true)
	for _, name := range profiled {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("profiled %s with the registry gone: %v", name, err)
		}
		if !bytes.Equal(got, files[name]) {
			t.Fatalf("profiled %s: wrong bytes", name)
		}
	}
	if _, err := os.ReadFile(filepath.Join(dir, "lib/c.so")); err == nil {
		t.Fatal("a file outside the profile read without the registry: the check above proves nothing")
	}
}

// claimGatedFetcher is a gatedFetcher that takes claims as fs/remote does:
// a background fetch claims its chunks only once it passes the gate, as a
// request does once it has its slot.
type claimGatedFetcher struct{ *gatedFetcher }

func (g claimGatedFetcher) FetchChunksClaimed(ctx context.Context, chunks []toc.Chunk, claim func(int) bool, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	if err := g.hold(ctx); err != nil {
		return err
	}
	return FetchClaimedFirst(ctx, g.BlobFetcher, chunks, claim, nil, fn)
}

// A reader never waits for a background fetch that has not started: with a
// fetcher that claims chunks as requests start (fs/remote, whose background
// requests wait for a slot behind others), a read of a chunk in a profile
// batch held back gets it at once, and the batch then skips it instead of
// fetching it again. (Claimed before the wait, the read would wait for the
// gate.)
func TestPrefetchQueuedBatchClaimsNothing(t *testing.T) {
	l, files, g, dir, r := mountGated(t, func(g *gatedFetcher) ChunkFetcher { return claimGatedFetcher{g} })

	// One worker, 64 KiB batches: the held batch is big.bin's first four
	// chunks.
	p := startHeld(t, r, g, l, []string{"app/big.bin", "lib/d.so"})
	read := make(chan error, 1)
	go func() {
		f, err := os.Open(filepath.Join(dir, "app/big.bin"))
		if err != nil {
			read <- err
			return
		}
		defer f.Close()
		got := make([]byte, 4*pfChunk)
		if _, err := io.ReadFull(f, got); err != nil {
			read <- err
			return
		}
		if !bytes.Equal(got, files["app/big.bin"][:4*pfChunk]) {
			read <- errors.New("wrong bytes")
		}
		read <- nil
	}()
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(g.gate)
		t.Fatal("the read waited for a held background batch that had claimed its chunks")
	}
	if fg := g.fg.Load(); fg < 4 {
		t.Fatalf("the read fetched %d chunks, want at least the 4 it read", fg)
	}
	close(g.gate)
	st := waitPrefetch(t, p)
	if _, delivered, _ := g.Stats(); delivered != int64(st.ProfileChunks) {
		t.Fatalf("%d chunks delivered for a profile of %d: the batch fetched the read's chunks again", delivered, st.ProfileChunks)
	}
	if st.ProfileLocal != st.ProfileChunks {
		t.Fatalf("profile not all local: %+v", st)
	}
}

// Spans naming chunks the image lacks are ignored; the rest is prefetched.
func TestPrefetchIgnoresForeignSpans(t *testing.T) {
	l, _ := prefetchLayer(t, 4)
	opts := noBackground
	opts.Cache = fstest.NewMemCache()
	r := newTestRoot(t, l, fstest.NewBlobFetcher(l.blob), opts)
	a := fileSpan(t, l, "app/a.py")
	spans := []ChunkSpan{{Layer: 3, First: 0, Last: 1}, {Layer: 0, First: 0, Last: len(l.toc.Chunks) + 5}, {Layer: 0, First: -1, Last: 1}, a}
	p, err := r.StartPrefetch(spans, PrefetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if st.Ignored != 3 || st.ProfileChunks != int64(a.Last-a.First) || st.ProfileLocal != st.ProfileChunks || st.Phase != "done" {
		t.Fatalf("stats %+v: want 3 ignored and a.py prefetched", st)
	}
}

// slowCache is a cache whose Put takes a while, like a busy disk.
type slowCache struct {
	*fstest.MemCache
	delay time.Duration
}

func (c *slowCache) Put(ctx context.Context, d digest.Digest, data []byte) error {
	time.Sleep(c.delay)
	return c.MemCache.Put(ctx, d, data)
}

// A fill whose batches outrun the cache writer drops nothing: a chunk it
// fetches waits for room in the writer's queue while the writer makes
// progress, so every chunk is cached, each fetched once. (With batches
// that only checked for room before they started, four of 128 chunks each
// overfilled the 256-place queue, and the chunks left over were fetched
// and dropped.)
func TestFillSlowCacheDropsNothing(t *testing.T) {
	l, _ := prefetchLayer(t, 1024)
	f := fstest.NewBlobFetcher(l.blob)
	cache := &slowCache{MemCache: fstest.NewMemCache(), delay: 200 * time.Microsecond}
	opts := noBackground
	opts.Cache = cache
	r := newTestRoot(t, l, f, opts)
	p, err := r.StartPrefetch([]ChunkSpan{fileSpan(t, l, "lib/d.so")}, PrefetchOptions{Fill: true, FillWorkers: 4, MaxBatch: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if err := r.FlushCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.CacheSkipped != 0 || st.ImageLocal != st.ImageChunks {
		t.Fatalf("%d chunks fetched and not cached; prefetch %+v", s.CacheSkipped, st)
	}
	if _, delivered, _ := f.Stats(); delivered != st.ImageChunks {
		t.Fatalf("%d chunks delivered for an image of %d", delivered, st.ImageChunks)
	}
	for i := range l.toc.Chunks {
		if ok, _ := cache.Has(context.Background(), l.toc.Chunks[i].Digest()); !ok {
			t.Fatalf("chunk %d filled and not cached", i)
		}
	}
}

// Fill fetches the whole image after the profile; then every read is local.
func TestFillCompletesThenAllLocal(t *testing.T) {
	l, files := prefetchLayer(t, 24)
	l.fetcher = fstest.NewBlobFetcher(l.blob)
	opts := noBackground
	opts.Cache = blobcache.NewMemory(blobcache.WithCapacity(64 << 20))
	dir, r := mountLayers(t, []*testLayer{l}, opts)
	p, err := r.StartPrefetch([]ChunkSpan{fileSpan(t, l, "lib/c.so")}, PrefetchOptions{Fill: true, MaxBatch: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if st.Phase != "done" || st.FillStopped != "" || st.ImageLocal != st.ImageChunks || st.ImageChunks != int64(len(l.toc.Chunks)) {
		t.Fatalf("fill did not complete: %+v", st)
	}
	if err := r.FlushCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	reqs, chunks, _ := l.fetcher.Stats()
	if chunks != int64(len(l.toc.Chunks)) {
		t.Fatalf("fill fetched %d chunks in %d requests, want each of the %d once", chunks, reqs, len(l.toc.Chunks))
	}
	// The fill's chunks left the hot set once stored: it holds the
	// profile's (not fetched ahead of readers) and what the cache skipped.
	prof := fileSpan(t, l, "lib/c.so")
	r.hot.mu.Lock()
	held := int64(len(r.hot.m))
	r.hot.mu.Unlock()
	if max := int64(prof.Last-prof.First) + r.Stats().CacheSkipped; held > max {
		t.Errorf("after the fill: %d chunks in the hot set, want at most the profile's %d and the %d not cached", held, prof.Last-prof.First, r.Stats().CacheSkipped)
	}
	l.fetcher.SetFailing(true)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s after fill with the registry gone: %v (equal %v)", name, err, bytes.Equal(got, want))
		}
	}
	if s := r.Stats(); s.ChunkMisses != 0 {
		t.Fatalf("%d reads missed after fill", s.ChunkMisses)
	}
}

// Fill stops before the cache would evict anything.
func TestFillStopsBeforeEviction(t *testing.T) {
	l, _ := prefetchLayer(t, 64)
	cache := blobcache.NewMemory(blobcache.WithCapacity(20 * pfChunk))
	opts := noBackground
	opts.Cache = cache
	r := newTestRoot(t, l, fstest.NewBlobFetcher(l.blob), opts)
	p, err := r.StartPrefetch(nil, PrefetchOptions{Fill: true, FillWorkers: 1, MaxBatch: 4 * pfChunk})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if err := r.FlushCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs := cache.Stats()
	if st.FillStopped == "" || cs.Evictions != 0 || st.ImageLocal >= st.ImageChunks || st.ImageLocal == 0 {
		t.Fatalf("prefetch %+v, cache evictions %d: want fill stopped early without evicting", st, cs.Evictions)
	}
	t.Logf("fill stopped: %s (%d of %d chunks local)", st.FillStopped, st.ImageLocal, st.ImageChunks)
}

// Stop ends a prefetch held in a fetch, and Root.Close ends one too.
func TestPrefetchStop(t *testing.T) {
	l, _ := prefetchLayer(t, 8)
	g := &gatedFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), gate: make(chan struct{}), started: make(chan struct{}, 1)}
	opts := noBackground
	opts.Cache = fstest.NewMemCache()
	opts.PrefetchContext = markBackground
	r := newTestRoot(t, l, g, opts)
	p, err := r.StartPrefetch([]ChunkSpan{fileSpan(t, l, "app/big.bin")}, PrefetchOptions{Fill: true})
	if err != nil {
		t.Fatal(err)
	}
	<-g.started
	p.Stop()
	if st := p.Stats(); st.Phase != "stopped" {
		t.Fatalf("after Stop: %+v", st)
	}
	p2, err := r.StartPrefetch([]ChunkSpan{fileSpan(t, l, "app/big.bin")}, PrefetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	<-g.started
	r.Close()
	waitPrefetch(t, p2)
}

// Chunks of identical content are fetched once and all count as local.
func TestFillDuplicateChunks(t *testing.T) {
	same := toctest.Random(42, 3*pfChunk)
	tf := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a.bin", Mode: 0o644}, Data: same},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "b.bin", Mode: 0o644}, Data: same},
	}
	l := convertLayer(t, toctest.Tar(t, tf), pfChunk)
	opts := noBackground
	opts.Cache = fstest.NewMemCache()
	r := newTestRoot(t, l, l.fetcher, opts)
	p, err := r.StartPrefetch(nil, PrefetchOptions{Fill: true})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if _, chunks, _ := l.fetcher.Stats(); chunks != 3 || st.ImageLocal != st.ImageChunks || st.ImageChunks != 6 {
		t.Fatalf("fetched %d chunks, stats %+v: want 3 fetched and 6 of 6 local", chunks, st)
	}
}

// orderFetcher records the chunks of each FetchChunks call, in call order.
type orderFetcher struct {
	*fstest.BlobFetcher
	l     *testLayer
	mu    sync.Mutex
	calls [][]int
}

// FetchChunksOwned goes through FetchChunks above (the embedded fetcher's
// would bypass it).
func (o *orderFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, _ func(int) []byte, fn func(int, []byte, bool) error) error {
	return o.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
}

func (o *orderFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	var idx []int
	for _, c := range chunks {
		for i := range o.l.toc.Chunks {
			if o.l.toc.Chunks[i].CompressedOffset == c.CompressedOffset {
				idx = append(idx, i)
			}
		}
	}
	o.mu.Lock()
	o.calls = append(o.calls, idx)
	o.mu.Unlock()
	return o.BlobFetcher.FetchChunks(ctx, chunks, fn)
}

// A profile that alternates between two places of the blob (as a start-up
// faulting in two libraries does) is fetched as one run per place, not one
// request per switch, and the run holding the profile's first chunk goes
// first.
func TestPrefetchRunsAcrossProfile(t *testing.T) {
	l, _ := prefetchLayer(t, 32)
	big := fileSpan(t, l, "app/big.bin")
	a, b := big.First+20, big.First // b's run comes first in the blob, a's first in the profile
	var spans []ChunkSpan
	for k := range 4 {
		spans = append(spans, ChunkSpan{Layer: 0, First: a + k, Last: a + k + 1}, ChunkSpan{Layer: 0, First: b + k, Last: b + k + 1})
	}
	f := &orderFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), l: l}
	opts := noBackground
	opts.Cache = fstest.NewMemCache()
	r := newTestRoot(t, l, f, opts)
	p, err := r.StartPrefetch(spans, PrefetchOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	st := waitPrefetch(t, p)
	if st.ProfileLocal != 8 {
		t.Fatalf("stats %+v, want 8 chunks local", st)
	}
	want := [][]int{{a, a + 1, a + 2, a + 3}, {b, b + 1, b + 2, b + 3}}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("fetch calls %v, want %v (one run per place, the profile's first place first)", f.calls, want)
	}
}

// On a far link (more per round trip than farLinkBytes) the profile's
// batches go farLinkWorkers times as many at once; on a near one, Workers.
func TestPrefetchFarLink(t *testing.T) {
	const n = 64
	l, _ := prefetchLayer(t, n)
	big := fileSpan(t, l, "app/big.bin")
	for _, far := range []bool{false, true} {
		t.Run(fmt.Sprintf("far=%v", far), func(t *testing.T) {
			f := &concurrencyFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob)}
			opts := noBackground
			opts.Cache = fstest.NewMemCache()
			r := newTestRoot(t, l, f, opts)
			if far {
				r.link.max.Store(100 << 20)
				r.link.rtt.Store(int64(30 * time.Millisecond)) // 3 MiB per round trip
			}
			// One chunk per batch: n batches, 2 at first.
			p, err := r.StartPrefetch([]ChunkSpan{big}, PrefetchOptions{Workers: 2, MaxBatch: 1, MaxGap: -1})
			if err != nil {
				t.Fatal(err)
			}
			if st := waitPrefetch(t, p); st.ProfileLocal != n {
				t.Fatalf("profile: %+v", st)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if !far && f.max > 2 {
				t.Errorf("near link: %d batches at once, want at most Workers (2)", f.max)
			}
			if far && (f.max <= 2 || f.max > 2*farLinkWorkers) {
				t.Errorf("far link: %d batches at once, want more than Workers (2), at most %d", f.max, 2*farLinkWorkers)
			}
		})
	}
}
