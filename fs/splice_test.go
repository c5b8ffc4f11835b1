package fs

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// lockedBuffer is a bytes.Buffer for a logger written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// mountOnce mounts l over cache and returns the file's path, the Root and
// an unmount function.
func mountOnce(t *testing.T, l *testLayer, cache Cache, logs *lockedBuffer) (string, *Root, func()) {
	t.Helper()
	requireFUSE(t)
	root, err := NewRoot([]Layer{{Name: "test/layer0", TOC: l.toc, Fetcher: l.fetcher}},
		Options{Cache: cache, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(dir, root, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unmount := func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
				unix.Unmount(dir, unix.MNT_DETACH)
			}
		})
	}
	t.Cleanup(unmount)
	return filepath.Join(dir, "big"), root, unmount
}

// waitInCache waits until cache holds every chunk of l.
func waitInCache(t *testing.T, cache *blobcache.Badger, l *testLayer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := range l.toc.Chunks {
		for {
			ok, err := cache.Has(context.Background(), l.toc.Chunks[i].Digest())
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("chunk %d not cached after 10 s", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// checkReads reads p (which must hold want) sequentially, through mmap in a
// child process (tensor-sized pieces in a random order) and with 8
// concurrent readers of different read sizes, each with the page cache of p
// dropped first.
func checkReads(t *testing.T, p string, want []byte) {
	t.Helper()
	dropCache(t, p)
	mustRead(t, p, want)

	// Page faults on a FUSE mount must come from another process (see
	// mmapLoad).
	dropCache(t, p)
	if _, err := mmapLoad(t, p, want, 3); err != nil {
		t.Fatal(err)
	}

	dropCache(t, p)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for r := range 8 {
		wg.Go(func() {
			g, err := os.Open(p)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer g.Close()
			buf := make([]byte, (r+1)*37<<10)
			var off int64
			for off < int64(len(want)) {
				n, err := g.ReadAt(buf, off)
				if n == 0 && err != nil {
					errs <- err.Error()
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- "reader " + string(rune('0'+r)) + ": bytes differ"
					return
				}
				off += int64(n)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

// TestSpliceRead reads a file whose chunks this process cached (through an
// earlier mount over the same cache) sequentially, through mmap and
// concurrently: the bytes are right, READs are spliced from the segment
// files, and nothing is fetched. Chunks of 100 KiB put the pieces of one
// READ at offsets within pages.
func TestSpliceRead(t *testing.T) {
	for _, chunk := range []int{256 << 10, 100 << 10} {
		t.Run(fmt.Sprintf("chunk-%dK", chunk>>10), func(t *testing.T) {
			data := toctest.Random(uint64(chunk), 5<<20+1234)
			l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("big", 0o644, data)}), chunk)
			cache, err := blobcache.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			var logs lockedBuffer
			p, _, unmount := mountOnce(t, l, cache, &logs)
			mustRead(t, p, data)
			waitInCache(t, cache, l)
			unmount()

			p, root, _ := mountOnce(t, l, cache, &logs)
			checkReads(t, p, data)
			s := root.Stats()
			if s.FetchedChunks != 0 {
				t.Fatalf("fetched %d chunks of a cached file", s.FetchedChunks)
			}
			if s.Spliced == 0 || s.Spliced < s.Reads/2 {
				t.Fatalf("%d of %d READs spliced", s.Spliced, s.Reads)
			}
			if strings.Contains(logs.String(), "trySplice") {
				t.Fatalf("go-fuse could not splice a reply:\n%s", logs.String())
			}
		})
	}
}

// TestSpliceChecksFirst damages a chunk's bytes in a segment file while the
// cache is closed: the next process reads every chunk through the cache's
// check before it splices any, so the damage is refetched, never served.
func TestSpliceChecksFirst(t *testing.T) {
	data := toctest.Random(11, 4<<20)
	l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("big", 0o644, data)}), 256<<10)
	dir := t.TempDir()
	cache, err := blobcache.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	p, _, unmount := mountOnce(t, l, cache, &logs)
	mustRead(t, p, data)
	waitInCache(t, cache, l)
	unmount()
	if err := cache.Close(); err != nil {
		t.Fatal(err)
	}

	// Flip a byte in the middle of the third chunk where it lies on disk.
	segs, err := filepath.Glob(filepath.Join(dir, "segments", "*.seg"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment files: %v", err)
	}
	needle := data[2*256<<10 : 2*256<<10+64]
	damaged := false
	for _, s := range segs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, needle); i >= 0 {
			b[i+1000] ^= 0x20
			if err := os.WriteFile(s, b, 0o600); err != nil {
				t.Fatal(err)
			}
			damaged = true
		}
	}
	if !damaged {
		t.Fatal("chunk bytes not found in any segment file")
	}

	cache, err = blobcache.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	p, root, _ := mountOnce(t, l, cache, &logs)
	dropCache(t, p)
	mustRead(t, p, data)
	if s := root.Stats(); s.Spliced != 0 || s.FetchedChunks != 1 {
		t.Fatalf("first read after reopen: %d READs spliced, %d chunks fetched; want 0 and 1 (the damaged one)", s.Spliced, s.FetchedChunks)
	}
	waitInCache(t, cache, l)
	checkReads(t, p, data)
	if s := root.Stats(); s.Spliced == 0 || s.FetchedChunks != 1 {
		t.Fatalf("after the check: %d READs spliced, %d chunks fetched", s.Spliced, s.FetchedChunks)
	}
}
