package image_test

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// BenchmarkColdRead1G reads a 1 GiB file sequentially from a fresh lazy
// mount (empty badger cache, page cache dropped, registry on loopback) and,
// in the same iteration, downloads the same converted blob whole the way
// `crane blob` does (ggcr, one GET). Metrics: MB/s of each (of the blob's
// compressed bytes, which both move) and lazy/crane, the speed ratio.
func BenchmarkColdRead1G(b *testing.B) {
	needFUSE(b)
	reg := newRegistry(b)
	size := 1 << 30
	if v, err := strconv.Atoi(os.Getenv("LAZYFS_BENCH_MIB")); err == nil && v > 0 {
		size = v << 20 // a smaller file for quick runs
	}
	data := toctest.Random(77, size)
	tb := toctest.Tar(b, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "model.bin", Mode: 0o644}, Data: data}})
	data = nil
	img, _ := mutate.AppendLayers(empty.Image, static.NewLayer(tb, types.OCIUncompressedLayer))
	src, dst := reg.host+"/cold:plain", reg.host+"/cold:lazy"
	ref, _ := name.ParseReference(src)
	if err := ggcrremote.Write(ref, img); err != nil {
		b.Fatal(err)
	}
	tb = nil
	rep, err := convert.Image(context.Background(), src, dst)
	if err != nil {
		b.Fatal(err)
	}
	blobSize := rep.Images[0].Layers[0].Size
	blobRef, _ := name.NewDigest(reg.host + "/cold@" + rep.Images[0].Layers[0].Digest)

	var lazyT, craneT time.Duration
	buf := make([]byte, 1<<20)
	for b.Loop() {
		// crane blob: one GET of the whole blob.
		start := time.Now()
		l, err := ggcrremote.Layer(blobRef)
		if err != nil {
			b.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, rc); err != nil || n != blobSize {
			b.Fatalf("crane blob: %d bytes, %v", n, err)
		}
		rc.Close()
		craneT += time.Since(start)

		// lazyfs: mount with an empty cache, read the file through.
		cache, err := openBenchCache(b)
		if err != nil {
			b.Fatal(err)
		}
		dir := filepath.Join(b.TempDir(), "mnt")
		os.Mkdir(dir, 0o755)
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
		start = time.Now()
		m, err := image.Mount(context.Background(), dst, dir, image.Options{Fetcher: remote.New(), Cache: cache})
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(filepath.Join(dir, "model.bin"))
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for {
			k, err := f.Read(buf)
			n += int64(k)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
		lazyT += time.Since(start)
		if n != int64(size) {
			b.Fatalf("read %d bytes", n)
		}
		st := m.Stats()
		b.Logf("lazy: %v, %d requests, %d bytes fetched, %d chunks fetched, fs %+v", time.Since(start), st.Remote.Requests, st.Remote.BytesFetched, st.Remote.ChunksFetched, st.FS)
		m.Close()
		cache.Close()
	}
	mbps := func(d time.Duration) float64 { return float64(blobSize) * float64(b.N) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(craneT), "crane-MB/s")
	b.ReportMetric(mbps(lazyT), "lazy-MB/s")
	b.ReportMetric(craneT.Seconds()/lazyT.Seconds(), "lazy/crane")

}

// openBenchCache opens the cache the benchmark reads through: badger in a
// temp dir, or memory with LAZYFS_BENCH_CACHE=memory.
func openBenchCache(b *testing.B) (interface {
	fs.Cache
	Close() error
}, error) {
	if os.Getenv("LAZYFS_BENCH_CACHE") == "memory" {
		return blobcache.NewMemory(blobcache.WithCapacity(4 << 30)), nil
	}
	return blobcache.Open(b.TempDir(), blobcache.WithCapacity(4<<30))
}
