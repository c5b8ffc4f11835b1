package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestBusybox runs a real program from a mounted busybox layer.
func TestBusybox(t *testing.T) {
	requireFUSE(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("needs busybox-static (/bin/busybox): %v", err)
	}
	if _, err := exec.LookPath("chroot"); err != nil {
		t.Skipf("needs chroot: %v", err)
	}
	files := []toctest.File{
		{Hdr: th(tar.TypeDir, "./", 0o755)},
		{Hdr: th(tar.TypeDir, "bin/", 0o755)},
		reg("bin/busybox", 0o755, bb),
		{Hdr: th(tar.TypeDir, "etc/", 0o755)},
		reg("etc/motd", 0o644, []byte("hello from lazyfs\n")),
		{Hdr: th(tar.TypeDir, "tmp/", 0o1777)},
	}
	for _, app := range []string{"sh", "cat", "ls", "wc", "sha256sum", "echo"} {
		files = append(files, link(tar.TypeSymlink, "bin/"+app, "busybox"))
	}
	files = append(files, link(tar.TypeLink, "bin/printf", "bin/busybox"))
	layer := convertLayer(t, toctest.Tar(t, files), toc.DefaultChunkSize)
	dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache()})
	out, err := exec.Command("chroot", dir, "/bin/sh", "-c",
		"cat /etc/motd; ls /bin | wc -l; /bin/printf 'via-hardlink\\n'; sha256sum /bin/busybox").CombinedOutput()
	if err != nil {
		t.Fatalf("chroot: %v\n%s", err, out)
	}
	want := fmt.Sprintf("hello from lazyfs\n8\nvia-hardlink\n%x  /bin/busybox\n", sha256.Sum256(bb))
	if string(out) != want {
		t.Fatalf("output %q, want %q", out, want)
	}
	if s := root.Stats(); s.EIO != 0 || s.FetchedChunks == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// bigCorpus returns a layer of many small files and a few big ones.
func bigCorpus(t testing.TB, files, bigFiles, bigSize int) *testLayer {
	var fs []toctest.File
	fs = append(fs, toctest.File{Hdr: th(tar.TypeDir, "./", 0o755)})
	for i := range files {
		fs = append(fs, reg(fmt.Sprintf("small/f%04d", i), 0o644, toctest.Random(uint64(100+i), 1000+i*37%20000)))
	}
	for i := range bigFiles {
		fs = append(fs, reg(fmt.Sprintf("big/b%d", i), 0o644, toctest.Random(uint64(7+i), bigSize+i*4099)))
	}
	return convertLayer(t, toctest.Tar(t, fs), testChunk)
}

// TestLazy checks that mounting fetches nothing and that reading one small
// file fetches a tiny fraction of the image.
func TestLazy(t *testing.T) {
	layer := bigCorpus(t, 200, 4, 4<<20)
	dir, root := mountLayers(t, []*testLayer{layer}, Options{Cache: fstest.NewMemCache(), NeighbourWindow: -1})
	if _, err := os.ReadDir(filepath.Join(dir, "small")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "big/b3")); err != nil {
		t.Fatal(err)
	}
	if req, _, _ := layer.fetcher.Stats(); req != 0 {
		t.Fatalf("%d fetches before any read", req)
	}
	b, err := os.ReadFile(filepath.Join(dir, "small/f0042"))
	if err != nil {
		t.Fatal(err)
	}
	if want := readEntry(t, layer, "small/f0042"); !bytes.Equal(b, want) {
		t.Fatal("wrong bytes")
	}
	_, chunks, fetched := layer.fetcher.Stats()
	if chunks != 1 || fetched*1000 > int64(len(layer.blob)) {
		t.Fatalf("read one small file: %d chunks, %d bytes of a %d-byte blob fetched", chunks, fetched, len(layer.blob))
	}
	t.Logf("fetched %d of %d bytes (%.3f%%)", fetched, len(layer.blob), 100*float64(fetched)/float64(len(layer.blob)))
	if s := root.Stats(); s.ChunkMisses != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestNeighbourPrefetch: a miss on a small file fetches the small files that
// follow it in the layer in the background, so reading them is a cache hit.
func TestNeighbourPrefetch(t *testing.T) {
	layer := bigCorpus(t, 200, 4, 4<<20)
	dir, root := mountLayers(t, []*testLayer{layer}, Options{Cache: fstest.NewMemCache(), NeighbourWindow: 64 << 10})
	if _, err := os.ReadFile(filepath.Join(dir, "small/f0042")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for root.Stats().Prefetched == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no neighbour prefetch after a small-file miss: %+v", root.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for root.Stats().Prefetched < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	before := root.Stats()
	if before.NeighbourJobs != 1 {
		t.Errorf("%d neighbour jobs for one miss", before.NeighbourJobs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "small/f0043"))
	if err != nil {
		t.Fatal(err)
	}
	if want := readEntry(t, layer, "small/f0043"); !bytes.Equal(b, want) {
		t.Fatal("wrong bytes")
	}
	after := root.Stats()
	if after.ChunkMisses != before.ChunkMisses || after.ChunkHits == before.ChunkHits {
		t.Fatalf("the next small file was not served from the neighbour prefetch: before %+v after %+v", before, after)
	}
	// The window bounds what was fetched.
	_, _, fetched := layer.fetcher.Stats()
	if fetched > 64<<10+200<<10 {
		t.Errorf("fetched %d compressed bytes for a 64 KiB window", fetched)
	}
}

func readEntry(t testing.TB, l *testLayer, name string) []byte {
	for i := range l.toc.Entries {
		if e := &l.toc.Entries[i]; e.Name == name {
			return toctest.ReadFile(t, l.blob, l.toc, e)
		}
	}
	t.Fatalf("no entry %s", name)
	return nil
}

// TestReadAhead checks that a sequential reader gets the following chunks fetched ahead.
func TestReadAhead(t *testing.T) {
	layer := bigCorpus(t, 1, 1, 64*testChunk)
	dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(), ReadAhead: 8})
	f, err := os.Open(filepath.Join(dir, "big/b0"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, testChunk)
	for range 4 {
		if _, err := io.ReadFull(f, buf); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for root.Stats().Prefetched == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := root.Stats(); s.Prefetched == 0 {
		t.Fatalf("no read-ahead after sequential reads: %+v", s)
	}
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
	if s := root.Stats(); s.ChunkHits == 0 {
		t.Fatalf("sequential read never hit a read-ahead chunk: %+v", s)
	}
}

// TestReadAheadWindowLogged: at debug level the mount logs each change of a
// stream's read-ahead window, so a slow ramp over a far link can be seen
// (docs/fs.md): a cold sequential read whose READs wait for the network
// logs the window doubling from initialWindow.
func TestReadAheadWindowLogged(t *testing.T) {
	layer, want := bigFileLayer(t, 16<<20, bigChunk)
	layer.fetcher.SetLatency(2 * time.Millisecond)
	t.Cleanup(func() { layer.fetcher.SetLatency(0) })
	logs := &lockedBuffer{}
	dir, _ := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	mustRead(t, filepath.Join(dir, "model.bin"), want)
	var grew []int
	for _, m := range regexp.MustCompile(`msg="read-ahead window" path=model.bin chunks=(\d+) at_chunk=\d+ why=grow`).FindAllStringSubmatch(logs.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		grew = append(grew, n)
	}
	if len(grew) < 2 || grew[0] != 2*initialWindow || slices.Max(grew) < 8*initialWindow {
		t.Errorf("window changes logged: %v; want the ramp from %d chunks up to at least %d\n%s", grew, 2*initialWindow, 8*initialWindow, logs.String())
	}
}

// TestFaults: a failing fetcher fails only uncached reads, with EIO, and the
// mount recovers; tampered or wrong bytes give EIO, never wrong data.
func TestFaults(t *testing.T) {
	layer := bigCorpus(t, 10, 2, 8*testChunk)
	cache := fstest.NewMemCache()
	logs := &countingHandler{}
	dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: cache, ReadAhead: -1, Logger: slog.New(logs)})
	cached, uncached := filepath.Join(dir, "big/b0"), filepath.Join(dir, "big/b1")
	want0, want1 := readEntry(t, layer, "big/b0"), readEntry(t, layer, "big/b1")
	mustRead(t, cached, want0)

	layer.fetcher.SetFailing(true)
	dropCache(t, cached)
	hits := root.Stats().ChunkHits
	mustRead(t, cached, want0)
	if root.Stats().ChunkHits == hits {
		t.Fatal("cached file was served from the page cache, not from the chunk cache")
	}
	if _, err := os.ReadFile(uncached); !errors.Is(err, syscall.EIO) {
		t.Fatalf("uncached read with the fetcher down: %v, want EIO", err)
	}
	if _, err := os.ReadFile(filepath.Join(dir, "small/f0003")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("uncached small read with the fetcher down: %v, want EIO", err)
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "small")); err != nil || len(ents) != 10 {
		t.Fatalf("readdir while the fetcher is down: %d entries, %v", len(ents), err)
	}
	if s := root.Stats(); s.EIO < 2 {
		t.Fatalf("stats %+v", s)
	}
	// Once more: counted again, but each failing chunk is logged only once.
	before := logs.errors()
	if _, err := os.ReadFile(filepath.Join(dir, "small/f0003")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("second read: %v", err)
	}
	if logs.errors() != before {
		t.Fatalf("EIO of the same chunk logged again (%d records, was %d)", logs.errors(), before)
	}
	if !logs.has("layer", "path", "chunk", "digest") {
		t.Fatalf("EIO record lacks layer/path/chunk/digest fields: %v", logs.last())
	}

	layer.fetcher.SetFailing(false)
	mustRead(t, uncached, want1)

	for _, mode := range []string{"tampered", "lying"} {
		if err := root.FlushCache(context.Background()); err != nil {
			t.Fatal(err)
		}
		cache.Clear()
		root.hot.clear() // and the chunks fetched recently, held in memory
		dropCache(t, cached)
		layer.fetcher.SetTampered(mode == "tampered")
		layer.fetcher.SetLying(mode == "lying")
		eio := root.Stats().EIO
		if b, err := os.ReadFile(cached); !errors.Is(err, syscall.EIO) {
			t.Fatalf("%s blob: read %d bytes, err %v; want EIO", mode, len(b), err)
		}
		if root.Stats().EIO == eio {
			t.Fatalf("%s: EIO not counted", mode)
		}
		if cache.Len() != 0 {
			t.Fatalf("%s: %d bad chunks reached the cache", mode, cache.Len())
		}
		layer.fetcher.SetTampered(false)
		layer.fetcher.SetLying(false)
		mustRead(t, cached, want0)
	}
}

func mustRead(t testing.TB, p string, want []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("read %s: %d bytes differ from the %d expected", p, len(b), len(want))
	}
}

// TestInterrupt: a read waiting on the network ends when its process is
// killed (the kernel's FUSE_INTERRUPT cancels the fetch). The kernel
// interrupts only synchronous READs, hence SyncRead.
func TestInterrupt(t *testing.T) {
	layer := bigCorpus(t, 1, 1, 4*testChunk)
	dir, root := mountLayersWith(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(), ReadAhead: -1}, MountOptions{SyncRead: true})
	started := layer.fetcher.Block()
	defer layer.fetcher.Unblock()
	cmd := exec.Command("cat", filepath.Join(dir, "big/b0"))
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the read never reached the fetcher")
	}
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for root.Stats().Interrupted == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := root.Stats(); s.Interrupted == 0 {
		t.Fatalf("blocked fetch was not cancelled by the interrupt: %+v", s)
	}
	layer.fetcher.Unblock()
	mustRead(t, filepath.Join(dir, "big/b0"), readEntry(t, layer, "big/b0"))
}

// TestConcurrentReads: 32 goroutines read random ranges of random files.
func TestConcurrentReads(t *testing.T) {
	requireFUSE(t)
	layer := bigCorpus(t, 40, 4, 20*testChunk)
	t.Run("memcache", func(t *testing.T) { concurrentReads(t, layer, fstest.NewMemCache()) })
	t.Run("badger", func(t *testing.T) {
		c, err := blobcache.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		concurrentReads(t, layer, c)
	})
}

func concurrentReads(t *testing.T, layer *testLayer, cache Cache) {
	dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: cache, ReadAhead: 4})
	var names []string
	want := map[string][]byte{}
	for i := range layer.toc.Entries {
		if e := &layer.toc.Entries[i]; e.IsRegular() {
			names = append(names, e.Name)
			want[e.Name] = toctest.ReadFile(t, layer.blob, layer.toc, e)
		}
	}
	iters := 200
	if testing.Short() {
		iters = 50
	}
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for it := range iters {
				name := names[rng.IntN(len(names))]
				w := want[name]
				f, err := os.Open(filepath.Join(dir, name))
				if err != nil {
					errc <- err
					return
				}
				off := rng.Int64N(int64(len(w)) + 1)
				n := rng.IntN(3*testChunk) + 1
				buf := make([]byte, n)
				got, err := f.ReadAt(buf, off)
				if err != nil && !errors.Is(err, io.EOF) {
					errc <- fmt.Errorf("%s at %d+%d: %w", name, off, n, err)
				} else if exp := w[off:min(off+int64(n), int64(len(w)))]; !bytes.Equal(buf[:got], exp) {
					errc <- fmt.Errorf("%s at %d+%d: %d bytes differ from the reference", name, off, n, got)
				}
				if it%16 == 0 {
					unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if s := root.Stats(); s.EIO != 0 || s.ChunkHits == 0 || s.ChunkMisses == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestPassthrough: a fully cached big file is copied to the spool and later
// opens are served by the kernel from it, with the right bytes; opens of
// both kinds never overlap on one inode.
func TestPassthrough(t *testing.T) {
	requireFUSE(t)
	var u unix.Utsname
	unix.Uname(&u)
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	if major < 6 || major == 6 && minor < 9 {
		t.Skipf("kernel %d.%d has no FUSE passthrough (needs 6.9)", major, minor)
	}
	layer := bigCorpus(t, 1, 1, 80*testChunk)
	dir, root := mountLayers(t, []*testLayer{layer},
		Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(), Passthrough: true, SpoolDir: t.TempDir()})
	p := filepath.Join(dir, "big/b0")
	want := readEntry(t, layer, "big/b0")

	// A cached-mode handle stays open while the copy is made.
	held, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	mustRead(t, p, want) // fills the chunk cache
	deadline := time.Now().Add(30 * time.Second)
	for {
		f, err := os.Open(p) // starts the copy; must not be passthrough while held is open
		if err != nil {
			t.Fatalf("open while a cached-mode handle is open: %v", err)
		}
		f.Close()
		ready := spoolReady(root)
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("spool copy never made")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := root.Stats().Passthrough; n != 0 {
		t.Fatalf("%d passthrough opens while a cached-mode handle was open", n)
	}
	mustRead(t, p, want)
	held.Close()

	waitSpooled(t, root, p)
	f1, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	dropCache(t, p)
	reads := root.Stats().Reads
	mustRead(t, p, want) // a second passthrough open while f1 is open
	if got := root.Stats().Reads; got != reads {
		t.Fatalf("%d READs reached the daemon through passthrough", got-reads)
	}
}

func spoolReady(r *Root) bool {
	r.spool.mu.Lock()
	defer r.spool.mu.Unlock()
	for _, s := range r.spool.files {
		if s.ready {
			return true
		}
	}
	return false
}

// countingHandler records the error-level log records.
type countingHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.mu.Lock()
		h.recs = append(h.recs, r)
		h.mu.Unlock()
	}
	return nil
}

func (h *countingHandler) errors() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.recs) }

func (h *countingHandler) last() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]string{}
	if len(h.recs) > 0 {
		h.recs[len(h.recs)-1].Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	}
	return m
}

func (h *countingHandler) has(keys ...string) bool {
	m := h.last()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return false
		}
	}
	return true
}

// TestPrefetchAndOnRead: Prefetch fills the cache for a path; OnRead sees
// every READ with its chunks.
func TestPrefetchAndOnRead(t *testing.T) {
	layer := bigCorpus(t, 3, 1, 10*testChunk)
	var mu sync.Mutex
	var events []ReadEvent
	onRead := func(ev ReadEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() }
	dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(), ReadAhead: -1, OnRead: onRead})
	if err := root.Prefetch(context.Background(), "big/b0"); err != nil {
		t.Fatal(err)
	}
	if err := root.Prefetch(context.Background(), "big/none"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("prefetch of a missing path: %v", err)
	}
	layer.fetcher.SetFailing(true)
	mustRead(t, filepath.Join(dir, "big/b0"), readEntry(t, layer, "big/b0"))
	mustRead(t, filepath.Join(dir, "big/b0"), readEntry(t, layer, "big/b0"))
	mu.Lock()
	defer mu.Unlock()
	if len(events) == 0 {
		t.Fatal("no read events")
	}
	var covered int64
	for _, ev := range events {
		if ev.Path != "big/b0" || ev.Layer != 0 || ev.LastChunk <= ev.FirstChunk {
			t.Fatalf("event %+v", ev)
		}
		covered += ev.Size
	}
	if covered < int64(10*testChunk) {
		t.Fatalf("events cover %d bytes of a %d-byte file", covered, 10*testChunk)
	}
}
