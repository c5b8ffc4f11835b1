package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

func needFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// faultyRegistry is an in-process registry that can be switched to refuse
// blob requests (as if down) or to flip bytes in blob responses.
type faultyRegistry struct {
	host   string
	down   atomic.Bool
	tamper atomic.Bool
	blobs  atomic.Int64
}

func newRegistry(t testing.TB) *faultyRegistry {
	r := &faultyRegistry{}
	reg := registrytest.New(t, registrytest.WithMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			isBlob := strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet
			if isBlob {
				r.blobs.Add(1)
			}
			if isBlob && r.down.Load() {
				// Like a dead server: drop the connection.
				if hj, ok := w.(http.Hijacker); ok {
					c, _, _ := hj.Hijack()
					c.Close()
					return
				}
			}
			if isBlob && r.tamper.Load() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				body := rec.Body.Bytes()
				for i := 0; i < len(body); i += 97 {
					body[i] ^= 0x5a
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(body)
				return
			}
			h.ServeHTTP(w, req)
		})
	}))
	r.host = reg.Host
	return r
}

// pushConverted pushes an image built from files and converts it; it returns the lazy ref.
func pushConverted(t testing.TB, r *faultyRegistry, repo string, files ...[]toctest.File) string {
	t.Helper()
	tars := make([][]byte, len(files))
	for i, fl := range files {
		tars[i] = toctest.Tar(t, fl)
	}
	src, dst := r.host+"/"+repo+":plain", r.host+"/"+repo+":lazy"
	registrytest.PushTars(t, src, tars...)
	if _, err := convert.Image(context.Background(), src, dst, convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	return dst
}

func mount(t testing.TB, ref string, fetcher *remote.Fetcher) *image.Mounted {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	// No neighbour prefetch: these tests count exactly what reads fetch.
	m, err := image.Mount(context.Background(), ref, dir, image.Options{Fetcher: fetcher, Cache: fstest.NewMemCache(), FS: fs.Options{NeighbourWindow: -1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRegistryDownAfterMount(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	a, b := toctest.Random(1, 300<<10), toctest.Random(2, 300<<10)
	ref := pushConverted(t, reg, "app", []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "cached.bin", Mode: 0o644}, Data: a},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "uncached.bin", Mode: 0o644}, Data: b},
	})
	f := remote.New(remote.WithRetry(3, 10*time.Millisecond, 2*time.Second))
	m := mount(t, ref, f)
	dir := m.Dir()

	if got, err := os.ReadFile(filepath.Join(dir, "cached.bin")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read before the fault: %v", err)
	}
	reg.down.Store(true)
	dropPageCache(t, dir)
	// Cached chunks are still served; uncached reads fail with EIO (within
	// the fetcher's deadline) and the mount stays up.
	if got, err := os.ReadFile(filepath.Join(dir, "cached.bin")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("cached file with the registry down: %v", err)
	}
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(dir, "uncached.bin"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("uncached read with the registry down: %v, want EIO", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("EIO after %v: the deadline was not applied", d)
	}
	if _, err := os.Stat(filepath.Join(dir, "cached.bin")); err != nil {
		t.Fatalf("mount is gone: %v", err)
	}
	reg.down.Store(false)
	if got, err := os.ReadFile(filepath.Join(dir, "uncached.bin")); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read after the registry came back: %v", err)
	}
}

func TestTamperedBlobIsEIO(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	data := toctest.Random(3, 200<<10)
	ref := pushConverted(t, reg, "tamper", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: data}})
	m := mount(t, ref, remote.New(remote.WithRetry(2, time.Millisecond, time.Second)))
	reg.tamper.Store(true)
	got, err := os.ReadFile(filepath.Join(m.Dir(), "f"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("tampered registry: read %d bytes, err %v; want EIO", len(got), err)
	}
	if m.Stats().Remote.VerifyFailures == 0 {
		t.Error("no verification failure counted")
	}
	reg.tamper.Store(false)
	if got, err := os.ReadFile(filepath.Join(m.Dir(), "f")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the registry is honest again: %v", err)
	}
}

func TestLazyAndMerged(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	big := toctest.Random(4, 4<<20)
	ref := pushConverted(t, reg, "lazy",
		[]toctest.File{
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big.so", Mode: 0o755}, Data: big},
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "gone", Mode: 0o644}, Data: []byte("old")},
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/conf", Mode: 0o644}, Data: []byte("v1")},
		},
		[]toctest.File{
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone", Mode: 0o644}},
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/conf", Mode: 0o644}, Data: []byte("v2")},
		})
	m := mount(t, ref, remote.New())
	dir := m.Dir()
	if got, err := os.ReadFile(filepath.Join(dir, "etc/conf")); err != nil || string(got) != "v2" {
		t.Fatalf("upper layer wins: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone")); !os.IsNotExist(err) {
		t.Fatalf("whiteout not applied: %v", err)
	}
	st := m.Stats()
	if st.Remote.BytesFetched*10 > st.ImageSize {
		t.Fatalf("reading a 2-byte file fetched %d of %d bytes", st.Remote.BytesFetched, st.ImageSize)
	}
	if st.Layers != 2 || st.Entries < 4 {
		t.Errorf("stats %+v", st)
	}
}

// TestLinkRateShown: a mount shows its fetcher's measure of the link
// (passed through the mount's counting wrapper) once a read took responses
// of 1 MiB or more.
func TestLinkRateShown(t *testing.T) {
	needFUSE(t)
	reg := newRegistry(t)
	data := toctest.Random(5, 8<<20)
	ref := pushConverted(t, reg, "weights", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "w.bin", Mode: 0o644}, Data: data}})
	f := remote.New()
	m := mount(t, ref, f)
	if st := m.Stats(); st.FS.LinkBytesPerSecond != 0 {
		t.Fatalf("before any read: LinkBytesPerSecond %d", st.FS.LinkBytesPerSecond)
	}
	if got, err := os.ReadFile(filepath.Join(m.Dir(), "w.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("w.bin: %v", err)
	}
	// Every blob of the registry shares the fetcher's measure.
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	rate, n, rtt := f.Blob(r.Context(), v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}, 0).LinkRate()
	if st := m.Stats(); n <= 0 || st.FS.LinkBytesPerSecond != rate || st.FS.LinkRTTSeconds != rtt.Seconds() || st.FS.SlowLink {
		t.Errorf("after an 8 MiB read on loopback: LinkBytesPerSecond %d, LinkRTTSeconds %v, SlowLink %v; the fetcher measured %d B/s in %d responses, %v",
			st.FS.LinkBytesPerSecond, st.FS.LinkRTTSeconds, st.FS.SlowLink, rate, n, rtt)
	}
}

// dropPageCache evicts the mount's files from the page cache, so reads go to FUSE again.
func dropPageCache(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Logf("drop_caches: %v", err)
	}
}

// BenchmarkMount100k reports the time from image.Mount's call to a ready
// mount for an image of 100,000 files on a loopback (in-process) registry.
func BenchmarkMount100k(b *testing.B) {
	needFUSE(b)
	reg := newRegistry(b)
	var files []toctest.File
	for i := range 100_000 {
		if i%100 == 0 {
			files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%04d/", i/100), Mode: 0o755}})
			continue
		}
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%04d/file-%06d.py", i/100, i), Mode: 0o644}, Data: []byte(fmt.Sprintf("x = %d\n", i))})
	}
	ref := pushConverted(b, reg, "many", files)
	f := remote.New()
	dir := filepath.Join(b.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	var total time.Duration
	for b.Loop() {
		start := time.Now()
		m, err := image.Mount(context.Background(), ref, dir, image.Options{Fetcher: f})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		if m.Stats().Entries != 100_000 {
			b.Fatalf("%d entries", m.Stats().Entries)
		}
		m.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-to-ready")
}
