package node_test

import (
	"archive/tar"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// BenchmarkLayerFSMount measures LayerFS.Mount+Unmount of one layer of a
// 10,000-file image on the in-process registry: "cold" with a new Node per
// iteration (manifest and TOC fetched), "shared" on one Node (both from the
// Resolver), and reports shared/cold.
func BenchmarkLayerFSMount(b *testing.B) {
	needFUSE(b)
	reg := imagetest.New(b)
	var files []toctest.File
	for i := range 10_000 {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/f%05d.py", i/100, i), Mode: 0o644}, Data: []byte(fmt.Sprintf("x = %d\n", i))})
	}
	ref := reg.PushConverted(b, "bench", files)
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		b.Fatal(err)
	}
	lb := labels(ref, img.Layers[0].Digest.String())
	dir := mountDir(b, "mnt")
	once := func(n *node.Node) time.Duration {
		start := time.Now()
		if err := n.LayerFS().Mount(context.Background(), dir, lb); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		if err := n.LayerFS().Unmount(context.Background(), dir); err != nil {
			b.Fatal(err)
		}
		return d
	}
	shared := newNode(b, f)
	once(shared) // fill its Resolver
	var cold, warm time.Duration
	for b.Loop() {
		n, err := node.New(context.Background(), node.Config{Root: b.TempDir(), CacheDir: node.MemoryCache, CacheSize: 1 << 30, Fetcher: f})
		if err != nil {
			b.Fatal(err)
		}
		cold += once(n)
		n.Close()
		warm += once(shared)
	}
	b.ReportMetric(float64(cold.Microseconds())/float64(b.N)/1000, "cold-ms/mount")
	b.ReportMetric(float64(warm.Microseconds())/float64(b.N)/1000, "shared-ms/mount")
	b.ReportMetric(warm.Seconds()/cold.Seconds(), "shared/cold")
}
