package toc_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// compressible returns n bytes of text-like data that zstd levels compress
// differently.
func compressible(seed, n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "symbol_%d_%d relocation %x section .text%d\n", seed, i*7919%1000, i*i%4099, i%13)
	}
	return b.Bytes()[:n]
}

// TestStartupLevel: the chunks of shared libraries and of one-chunk files
// are compressed at the start-up level, big data files at the level; the
// bytes read back are the same either way.
func TestStartupLevel(t *testing.T) {
	const chunk = 64 << 10
	files := []toctest.File{
		{Hdr: tar.Header{Name: "usr/lib/libx.so.1", Typeflag: tar.TypeReg, Mode: 0o644}, Data: compressible(1, 300<<10)},
		{Hdr: tar.Header{Name: "app/small.py", Typeflag: tar.TypeReg, Mode: 0o644}, Data: compressible(2, 40<<10)},
		{Hdr: tar.Header{Name: "models/w.bin", Typeflag: tar.TypeReg, Mode: 0o644}, Data: compressible(3, 300<<10)},
	}
	tarball := toctest.Tar(t, files)
	sizes := func(opts ...toc.Option) map[string]int64 {
		blob, res := toctest.Convert(t, tarball, append([]toc.Option{toc.WithChunkSize(chunk)}, opts...)...)
		out := map[string]int64{}
		for i := range res.TOC.Entries {
			e := &res.TOC.Entries[i]
			for _, f := range files {
				if f.Hdr.Name == e.Name && !bytes.Equal(toctest.ReadFile(t, blob, res.TOC, e), f.Data) {
					t.Fatalf("%s: bytes differ", e.Name)
				}
			}
			for _, c := range res.TOC.EntryChunks(e) {
				out[e.Name] += int64(c.CompressedSize)
			}
		}
		return out
	}
	fast := sizes(toc.WithLevel(zstd.SpeedFastest))
	mixed := sizes(toc.WithLevel(zstd.SpeedFastest), toc.WithStartupLevel(zstd.SpeedBestCompression))
	for _, name := range []string{"usr/lib/libx.so.1", "app/small.py"} {
		if mixed[name] >= fast[name] {
			t.Errorf("%s: %d compressed bytes at the start-up level, %d at the level", name, mixed[name], fast[name])
		}
	}
	if name := "models/w.bin"; mixed[name] != fast[name] {
		t.Errorf("%s: %d compressed bytes, want %d (the level's)", name, mixed[name], fast[name])
	}
}
