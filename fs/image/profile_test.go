package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func mountWith(t testing.TB, ref string, po image.ProfileOptions) *image.Mounted {
	t.Helper()
	return mountLogged(t, ref, po, io.Discard)
}

// syncWriter serialises writes of the mount's loggers.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func mountLogged(t testing.TB, ref string, po image.ProfileOptions, w io.Writer) *image.Mounted {
	t.Helper()
	return mountCache(t, ref, po, w, fstest.NewMemCache())
}

func mountCache(t testing.TB, ref string, po image.ProfileOptions, w io.Writer, cache fs.Cache) *image.Mounted {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	m, err := image.Mount(context.Background(), ref, dir, image.Options{
		Fetcher: remote.New(remote.WithRetry(2, 10*time.Millisecond, 2*time.Second)), Cache: cache,
		FS: fs.Options{NeighbourWindow: -1, ReadAhead: -1}, Profiles: po,
		Logger: slog.New(slog.NewTextHandler(&syncWriter{w: w}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// A mount learns the first-read order of a scripted workload on the node;
// the next cold mount of the image prefetches it, after which the workload's
// files read with the registry gone.
func TestProfileLearnedOnNode(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	files := map[string][]byte{}
	var layer []toctest.File
	for i, n := range []string{"bin/app", "lib/a.so", "lib/b.so", "lib/c.so", "etc/conf", "share/unused"} {
		files[n] = toctest.Random(uint64(10+i), (i+1)*50<<10)
		layer = append(layer, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: files[n]})
	}
	ref := pushConverted(t, reg, "learn", layer)
	store, err := profile.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	workload := []string{"etc/conf", "bin/app", "lib/c.so", "lib/a.so"}
	m := mountWith(t, ref, image.ProfileOptions{Store: store})
	for _, n := range workload {
		if got, err := os.ReadFile(filepath.Join(m.Dir(), n)); err != nil || !bytes.Equal(got, files[n]) {
			t.Fatalf("read %s: %v", n, err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	p, err := store.Load(digest.Digest(m.Image().Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Paths(); !slices.Equal(got, workload) {
		t.Fatalf("recorded %v, want %v", got, workload)
	}

	// Next cold start on the node: a fresh cache, the stored profile.
	cache := blobcache.NewMemory()
	m2 := mountCache(t, ref, image.ProfileOptions{Store: store}, io.Discard, cache)
	pf := m2.Prefetcher()
	if pf == nil || m2.ProfileSource() != "node" {
		t.Fatalf("no prefetch of the stored profile (source %q)", m2.ProfileSource())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pf.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	st := m2.Stats()
	if st.Prefetch == nil || st.Prefetch.ProfileLocal != int64(p.Chunks()) || st.Prefetch.Ignored != 0 {
		t.Fatalf("prefetch stats %+v, want all %d profile chunks local", st.Prefetch, p.Chunks())
	}
	if err := m2.FlushCache(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cache.Stats().Pinned; got != int64(p.Chunks()) {
		t.Fatalf("%d chunks pinned in the cache, want the profile's %d", got, p.Chunks())
	}
	reg.down.Store(true)
	for _, n := range workload {
		if got, err := os.ReadFile(filepath.Join(m2.Dir(), n)); err != nil || !bytes.Equal(got, files[n]) {
			t.Fatalf("profiled %s with the registry down: %v", n, err)
		}
	}
	if _, err := os.ReadFile(filepath.Join(m2.Dir(), "share/unused")); err == nil {
		t.Fatal("an unprofiled file read with the registry down: the check proves nothing")
	}
	m2.Close()
	if got := cache.Stats().Pinned; got != 0 {
		t.Fatalf("%d chunks still pinned after unmount", got)
	}
}

// A corrupt, truncated, oversized or foreign profile is ignored with a
// warning; the mount works.
func TestBadProfileIgnored(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	data := toctest.Random(7, 100<<10)
	ref := pushConverted(t, reg, "bad", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: data}})
	good := &profile.Profile{Layers: []string{digest.FromString("other layer").String()}, Spans: []profile.Span{{Layer: 0, Path: "f", Chunk: 0, N: 1}}}
	gb, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	huge := bytes.Repeat([]byte(" "), profile.MaxSize+10)
	cases := map[string][]byte{
		"corrupt":   []byte("{\"version\":1,\"layers\":[\"sha256:zz\"]"),
		"truncated": gb[:len(gb)/2],
		"oversized": huge,
		"foreign":   gb, // valid, but names a layer the image lacks
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			store, _ := profile.NewStore(dir)
			// Find the digest under which the mount looks.
			m0 := mountWith(t, ref, image.ProfileOptions{})
			d := m0.Image().Digest
			m0.Close()
			if err := os.WriteFile(filepath.Join(dir, d.Algorithm+"-"+d.Hex+".json"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			lw := &syncWriter{w: &logs}
			m := mountLogged(t, ref, image.ProfileOptions{Store: store}, lw)
			if got, err := os.ReadFile(filepath.Join(m.Dir(), "f")); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read with a %s profile: %v", name, err)
			}
			lw.mu.Lock()
			out := logs.String()
			lw.mu.Unlock()
			if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "profile") {
				t.Fatalf("no warning about the %s profile; log:\n%s", name, out)
			}
		})
	}
}

// Through the registry fetcher, a profile of N contiguous chunks costs about
// (compressed bytes / batch bound) range requests.
func TestProfileRangeRequests(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	data := toctest.Random(21, 64*(64<<10)) // 64 chunks of 64 KiB
	ref := pushConverted(t, reg, "ranges", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big.so", Mode: 0o644}, Data: data}})
	m0 := mountWith(t, ref, image.ProfileOptions{})
	d := m0.Image().Layers[0].Digest.String()
	m0.Close()
	p := &profile.Profile{Layers: []string{d}, Spans: []profile.Span{{Layer: 0, Path: "big.so", Chunk: 0, N: 64}}}
	const batch = 1 << 20
	before := reg.blobs.Load()
	m := mountWith(t, ref, image.ProfileOptions{
		Source:   func(context.Context, *remote.Image) (*profile.Profile, error) { return p, nil },
		Prefetch: fs.PrefetchOptions{MaxBatch: batch},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Prefetcher().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	st := m.Stats()
	reqs := reg.blobs.Load() - before - 1 // the TOC is one range request
	want := (st.Remote.BytesFetched + batch - 1) / batch
	t.Logf("64 contiguous chunks, %d compressed bytes: %d range requests (bound %d bytes: %d)", st.Remote.BytesFetched, reqs, batch, want)
	if st.Prefetch.ProfileLocal != 64 || reqs < want || reqs > want+1 {
		t.Fatalf("%d range requests for 64 contiguous chunks, want %d or %d; prefetch %+v", reqs, want, want+1, st.Prefetch)
	}
}
