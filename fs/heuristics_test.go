package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestLibraryNoReadAhead: in a mount with a start-up profile, a shared
// library read sequentially gets no read-ahead (the loader faults in parts
// of it; the kernel's read-around is all it gets, and the profile names what
// start-up reads), while a file of the same size that is not a library
// does, and so does the library in a mount without a profile.
func TestLibraryNoReadAhead(t *testing.T) {
	data := toctest.Random(7, 64*testChunk)
	tarball := toctest.Tar(t, []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "lib/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/libbig.so.1", Mode: 0o644}, Data: data},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/big.bin", Mode: 0o644}, Data: data},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/profiled", Mode: 0o644}, Data: []byte("x")},
	})
	for _, tc := range []struct {
		name    string
		profile bool
		ahead   bool
	}{{"lib/libbig.so.1", true, false}, {"lib/big.bin", true, true}, {"lib/libbig.so.1", false, true}} {
		t.Run(fmt.Sprintf("%s/profile=%v", filepath.Base(tc.name), tc.profile), func(t *testing.T) {
			layer := convertLayer(t, tarball, testChunk)
			dir, root := mountLayers(t, []*testLayer{layer}, Options{NeighbourWindow: -1, Cache: fstest.NewMemCache(), ReadAhead: 32})
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
			// As TestReadAhead: a few sequential reads, a pause for the
			// read-ahead to run, then the rest.
			got := make([]byte, 4*testChunk)
			for i := range 4 {
				if _, err := io.ReadFull(f, got[i*testChunk:(i+1)*testChunk]); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(2 * time.Second)
			for root.Stats().Prefetched == base && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			rest, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(got, rest...), data) {
				t.Fatal("wrong bytes")
			}
			if s := root.Stats(); (s.Prefetched > base) != tc.ahead {
				t.Errorf("%s: %d chunks read ahead, want read-ahead %v: %+v", tc.name, s.Prefetched-base, tc.ahead, s)
			}
		})
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
	var spans []ChunkSpan
	for _, n := range names[:4] {
		spans = append(spans, fileSpan(t, l, n))
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
	read("app/x.py") // profiled, and so is the next file: a window over y.py
	if s := r.Stats(); s.ChunkMisses == 0 || s.NeighbourJobs != 1 {
		t.Fatalf("miss of a profiled file: %d misses, %d neighbour jobs; want a miss and one", s.ChunkMisses, s.NeighbourJobs)
	}
	read("app/y.py") // profiled, the next file is not: no window
	if s := r.Stats(); s.NeighbourJobs != 1 {
		t.Fatalf("miss before the profile's end: %d neighbour jobs, want still 1", s.NeighbourJobs)
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
