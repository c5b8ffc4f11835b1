package toc_test

import (
	"archive/tar"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// allocated runs fn and returns the bytes it allocated on the heap (all
// goroutines: run it alone).
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestHugeCompressedSizeRefused: a chunk claiming a compressed size beyond
// the zstd bound of its size (or a size beyond MaxChunkSize) is refused by
// the TOC decoder and by DecodeChunk, before any allocation of that size.
func TestHugeCompressedSizeRefused(t *testing.T) {
	res, _ := seedTOC(t)
	for _, mut := range []func(c *toc.Chunk){
		func(c *toc.Chunk) { c.CompressedSize = 512 << 20 },
		func(c *toc.Chunk) { c.CompressedSize = toc.MaxCompressedSize(c.Size) + 1 },
	} {
		tc := *res.TOC
		tc.Chunks = append([]toc.Chunk(nil), res.TOC.Chunks...)
		last := &tc.Chunks[len(tc.Chunks)-1] // the last: no later offset moves
		mut(last)
		var err error
		n := allocated(func() { _, err = toc.Unmarshal(tc.Marshal()) })
		if !errors.Is(err, toc.ErrBadTOC) || !strings.Contains(err.Error(), "zstd bound") {
			t.Errorf("toc with a chunk of %d bytes compressed to %d: err %v, want ErrBadTOC (zstd bound)", last.Size, last.CompressedSize, err)
		}
		if n > 16<<20 {
			t.Errorf("decoding allocated %d MiB", n>>20)
		}
	}

	for _, c := range []toc.Chunk{
		{Size: 4096, CompressedSize: 512 << 20},
		{Size: 1 << 31, CompressedSize: 16},
	} {
		frame := make([]byte, min(c.CompressedSize, 1<<10))
		var err error
		n := allocated(func() { _, err = toc.DecodeChunk(&c, frame, nil) })
		if !errors.Is(err, toc.ErrBadChunk) {
			t.Errorf("DecodeChunk(size %d, compressed %d): err %v, want ErrBadChunk", c.Size, c.CompressedSize, err)
		}
		if n > 16<<20 {
			t.Errorf("DecodeChunk(size %d, compressed %d) allocated %d MiB", c.Size, c.CompressedSize, n>>20)
		}
	}
}

// TestOwnFramesWithinBound: the converter's frames of incompressible data
// stay within MaxCompressedSize, so the bound never refuses a real layer.
func TestOwnFramesWithinBound(t *testing.T) {
	for _, size := range []int{1, 100, 4095, 128 << 10, 128<<10 + 1, 256<<10 + 3, 4<<20 + 1} {
		tarball := toctest.Tar(t, []toctest.File{{Hdr: fileHdr("f"), Data: toctest.Random(uint64(size), size)}})
		_, res := toctest.Convert(t, tarball, toc.WithChunkSize(max(toc.MinChunkSize, min(size, 4<<20+4096))))
		for i, c := range res.TOC.Chunks {
			if c.CompressedSize > toc.MaxCompressedSize(c.Size) {
				t.Errorf("size %d: chunk %d: %d bytes compressed to %d, beyond the bound %d", size, i, c.Size, c.CompressedSize, toc.MaxCompressedSize(c.Size))
			}
		}
	}
}

func fileHdr(name string) tar.Header {
	return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}
}
