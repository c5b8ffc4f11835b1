package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

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

// hostileTOCs returns encoded TOCs built to make a decoder allocate far
// more than their size: long prefix-shared names, and a flood of all-zero
// entries (each decodes to a whole Entry).
func hostileTOCs(t testing.TB) map[string][]byte {
	long := strings.Repeat(strings.Repeat("a", 250)+"/", 16) // 4016 bytes, components of 250
	tc := &toc.TOC{ChunkSize: toc.DefaultChunkSize}
	for i := range 40000 {
		tc.Entries = append(tc.Entries, toc.Entry{Name: fmt.Sprintf("%s%05d", long, i), Type: tar.TypeReg, Mode: 0o644, HeaderOffset: int64(i) * 512})
	}
	tc.TarSize = int64(len(tc.Entries))*512 + 1024
	prefixShared := tc.Marshal()

	zero := []byte("LZFSTOC\x00")
	zero = binary.AppendUvarint(zero, toc.Version)
	zero = append(zero, 0, 0, 0) // flags, chunk size, tar size
	zero = append(zero, 1, 0)    // a string table holding ""
	zero = append(zero, 0)       // no chunks
	const n = 5_000_000
	zero = binary.AppendUvarint(zero, n)
	zero = append(zero, make([]byte, n*toc.MinEntryBytes)...)

	return map[string][]byte{"prefix-shared names": prefixShared, "zero entries": zero}
}

func compressTOC(t testing.TB, raw []byte) ([]byte, digest.Digest) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	p := enc.EncodeAll(raw, nil)
	return p, digest.FromBytes(p)
}

// TestTOCAmplification: tiny hostile TOCs are refused with bounded memory
// (a 37 KB TOC of 40,000 long prefix-shared names took 3.3 GB; 2 KB of zero
// entries 816 MB).
func TestTOCAmplification(t *testing.T) {
	for name, raw := range hostileTOCs(t) {
		payload, d := compressTOC(t, raw)
		if name == "zero entries" {
			// Also without the frame's content size: the decoder must stop
			// at the limit by itself.
			var buf bytes.Buffer
			zw, _ := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
			zw.Write(raw)
			zw.Close()
			p := buf.Bytes()
			var err error
			n := allocated(func() { _, err = toc.DecodeTOC(p, digest.FromBytes(p)) })
			t.Logf("%s, streamed: %d bytes compressed: allocated %d KiB: %v", name, len(p), n>>10, err)
			if !errors.Is(err, toc.ErrBadTOC) || n > raceAllocFactor*64<<20 {
				t.Errorf("%s, streamed: err %v, allocated %d MiB; want ErrBadTOC and under 64 MiB", name, err, n>>20)
			}
		}
		var err error
		n := allocated(func() { _, err = toc.DecodeTOC(payload, d) })
		t.Logf("%s: %d bytes compressed, %d decompressed: allocated %d KiB: %v", name, len(payload), len(raw), n>>10, err)
		if !errors.Is(err, toc.ErrBadTOC) {
			t.Errorf("%s: err %v, want ErrBadTOC", name, err)
		}
		if n > raceAllocFactor*64<<20 {
			t.Errorf("%s: decoding a %d-byte toc allocated %d MiB", name, len(payload), n>>20)
		}
	}
}

// TestTOCNameLimits: a path over 4096 bytes or a component over 255 is
// refused by the decoder, and by the converter before it makes such a TOC.
func TestTOCNameLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
		{strings.Repeat(strings.Repeat("b", 255)+"/", 16)[:4096], true},
		{strings.Repeat(strings.Repeat("b", 255)+"/", 16) + "c", false},
	} {
		raw := (&toc.TOC{Entries: []toc.Entry{{Name: strings.TrimSuffix(tc.name, "/"), Type: tar.TypeDir}}}).Marshal()
		if _, err := toc.Unmarshal(raw); (err == nil) != tc.ok {
			t.Errorf("Unmarshal(name of %d bytes): err %v, want ok=%v", len(tc.name), err, tc.ok)
		}
		tarball := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: tc.name + "/", Mode: 0o755, Format: tar.FormatPAX}}})
		_, err := toc.Convert(context.Background(), bytes.NewReader(tarball), &toctest.Discard{})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, toc.ErrTooLarge)) {
			t.Errorf("Convert(name of %d bytes): err %v, want ok=%v or ErrTooLarge", len(tc.name), err, tc.ok)
		}
	}
}

// hostileSeeds are small versions of the hostile inputs of these tests,
// for the fuzzers' seed corpora: raw TOCs for FuzzUnmarshal, blob tails
// for FuzzReadTOC, tars for FuzzConvert.
func hostileSeeds(t testing.TB) (raw, tails, tars [][]byte) {
	long := strings.Repeat(strings.Repeat("a", 250)+"/", 16)
	tc := &toc.TOC{ChunkSize: toc.DefaultChunkSize}
	for i := range 300 {
		tc.Entries = append(tc.Entries, toc.Entry{Name: fmt.Sprintf("%s%05d", long, i), Type: tar.TypeReg, HeaderOffset: int64(i) * 512})
	}
	tc.TarSize = 300*512 + 1024
	raw = append(raw, tc.Marshal())
	zero := func(n int) []byte {
		z := []byte("LZFSTOC\x00")
		z = binary.AppendUvarint(z, toc.Version)
		z = append(z, 0, 0, 0, 1, 0, 0)
		z = binary.AppendUvarint(z, uint64(n))
		return append(z, make([]byte, n*toc.MinEntryBytes)...)
	}
	raw = append(raw, zero(2000))
	raw = append(raw, (&toc.TOC{Entries: []toc.Entry{{Name: strings.Repeat("c", 256), Type: tar.TypeDir}}}).Marshal())
	res, _ := seedTOC(t)
	huge := *res.TOC
	huge.Chunks = append([]toc.Chunk(nil), res.TOC.Chunks...)
	huge.Chunks[len(huge.Chunks)-1].CompressedSize = 512 << 20
	raw = append(raw, huge.Marshal())

	// Blob tails: padding, the TOC frame of 5 million zero entries (2 KB
	// compressed), with and without a content size, and the footer.
	big := zero(5_000_000)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	var streamed bytes.Buffer
	zw, _ := zstd.NewWriter(&streamed, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	zw.Write(big)
	zw.Close()
	for _, payload := range [][]byte{enc.EncodeAll(big, nil), streamed.Bytes()} {
		b := make([]byte, 8)
		b = binary.LittleEndian.AppendUint32(b, toc.TOCFrameMagic)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
		loc := toc.Location{Offset: int64(len(b)), Length: int64(len(payload)), Digest: digest.FromBytes(payload)}
		b = append(b, payload...)
		tails = append(tails, toc.AppendFooter(b, toc.Footer{Location: loc, Version: toc.Version}))
	}
	enc.Close()

	data := toctest.Random(3, 600)
	for _, v := range []string{"1.0", "0.1", "gnu"} {
		tars = append(tars, sparseTar(t, v, 8<<40, data), sparseTar(t, v, 1<<50, data))
	}
	tars = append(tars, toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.Repeat("d", 256) + "/", Mode: 0o755, Format: tar.FormatPAX}}}))
	return raw, tails, tars
}

// TestTOCStringTableBound: a string table of 1-byte strings (16 bytes of
// string header each once decoded) is bounded.
func TestTOCStringTableBound(t *testing.T) {
	b := []byte("LZFSTOC\x00")
	b = binary.AppendUvarint(b, toc.Version)
	b = append(b, 0, 0, 0)
	b = binary.AppendUvarint(b, toc.MaxTOCStrings+1)
	for range toc.MaxTOCStrings + 1 {
		b = append(b, 1, 'x')
	}
	b = append(b, 0, 0) // no chunks, no entries
	if _, err := toc.Unmarshal(b); !errors.Is(err, toc.ErrBadTOC) || !strings.Contains(err.Error(), "string table") {
		t.Fatalf("err %v, want ErrBadTOC (string table)", err)
	}
}
