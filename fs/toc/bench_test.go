package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// synthTOC builds a TOC shaped like a distro image: n entries, a tenth of
// them directories, the rest files of a few KiB to a few MiB.
func synthTOC(n int) *toc.TOC {
	t := &toc.TOC{ChunkSize: toc.DefaultChunkSize}
	var off, coff int64
	for i := range n {
		e := toc.Entry{Type: tar.TypeReg, Mode: 0o644, Uname: "root", Gname: "root", ModTimeSec: 1700000000, HeaderOffset: off}
		dir := i / 10
		e.Name = fmt.Sprintf("usr/lib/python3/dist-packages/pkg%04d/module_%06d.py", dir, i)
		if i%10 == 0 {
			e.Type, e.Mode, e.Name = tar.TypeDir, 0o755, fmt.Sprintf("usr/lib/python3/dist-packages/pkg%04d", dir)
		} else {
			// Mostly small files (python modules, headers), one in 200 big (shared libraries).
			e.Size = int64(200 + (i*7919)%30000)
			if i%200 == 1 {
				e.Size = int64(1<<20 + (i*104729)%(8<<20))
			}
		}
		off += 512
		if e.Size > 0 {
			e.FirstChunk = uint32(len(t.Chunks))
			for left := e.Size; left > 0; left -= toc.DefaultChunkSize {
				sz := min(left, toc.DefaultChunkSize)
				c := toc.Chunk{Offset: off, Size: uint32(sz), CompressedOffset: coff, CompressedSize: uint32(sz / 3)}
				c.Sum[0], c.Sum[1] = byte(i), byte(left)
				t.Chunks = append(t.Chunks, c)
				off += sz
				coff += sz/3 + 20
				e.NumChunks++
			}
			off = (off + 511) &^ 511
		}
		t.Entries = append(t.Entries, e)
	}
	t.TarSize = off + 1024
	return t
}

// BenchmarkUnmarshal100k decodes a 100,000-entry TOC; the custom metrics
// report the heap it keeps per decode.
func BenchmarkUnmarshal100k(b *testing.B) {
	raw := synthTOC(100_000).Marshal()
	enc, _ := zstd.NewWriter(nil)
	payload := enc.EncodeAll(raw, nil)
	b.ReportMetric(float64(len(raw)), "toc-bytes")
	b.ReportMetric(float64(len(payload)), "toc-zstd-bytes")
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := toc.Unmarshal(raw); err != nil {
			b.Fatal(err)
		}
	}
	// Retained heap of one decoded TOC.
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	keep, _ := toc.Unmarshal(raw)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), "MiB-heap")
	runtime.KeepAlive(keep)
}

// BenchmarkDecodeTOC100k is the whole reader path for a 100,000-entry TOC:
// sha256 of the fetched bytes, zstd decompression, decoding.
func BenchmarkDecodeTOC100k(b *testing.B) {
	raw := synthTOC(100_000).Marshal()
	enc, _ := zstd.NewWriter(nil)
	payload := enc.EncodeAll(raw, nil)
	d := digest.FromBytes(payload)
	b.ReportMetric(float64(len(payload)), "toc-zstd-bytes")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := toc.DecodeTOC(payload, d); err != nil {
			b.Fatal(err)
		}
	}
}

// benchTar is a ~64 MiB layer of binary-like and text-like files.
func benchTar(b *testing.B) []byte {
	var files []toctest.File
	for i := range 48 {
		data := toctest.Random(uint64(i), 1<<20+i*4096)
		if i%3 == 0 { // text-like: highly compressible
			data = bytes.Repeat([]byte(fmt.Sprintf("line %d of a python module: import os, sys\n", i)), (1<<20)/40)
		}
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f/%d", i), Mode: 0o644}, Data: data})
	}
	for i := range 4000 {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("small/%d.py", i), Mode: 0o644}, Data: toctest.Random(uint64(i), 3000)})
	}
	return toctest.Tar(b, files)
}

// BenchmarkConvert measures conversion throughput (MB/s of uncompressed tar);
// BenchmarkRecompress is the floor any converter pays: gzip decode + one
// zstd stream encode of the same tar. Compare the two in one run.
func BenchmarkConvert(b *testing.B) {
	tarball := benchTar(b)
	b.SetBytes(int64(len(tarball)))
	for b.Loop() {
		if _, err := toc.Convert(context.Background(), bytes.NewReader(tarball), io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkConvertFromGzip(b *testing.B) {
	tarball := benchTar(b)
	gz := gzipBytes(b, tarball)
	b.SetBytes(int64(len(tarball)))
	for b.Loop() {
		zr, _ := gzip.NewReader(bytes.NewReader(gz))
		if _, err := toc.Convert(context.Background(), zr, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecompress(b *testing.B) {
	tarball := benchTar(b)
	gz := gzipBytes(b, tarball)
	b.SetBytes(int64(len(tarball)))
	for b.Loop() {
		zr, _ := gzip.NewReader(bytes.NewReader(gz))
		zw, _ := zstd.NewWriter(io.Discard, zstd.WithEncoderLevel(zstd.SpeedDefault))
		if _, err := io.Copy(zw, zr); err != nil {
			b.Fatal(err)
		}
		zw.Close()
	}
}

func gzipBytes(b *testing.B, p []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(p)
	zw.Close()
	return buf.Bytes()
}

// BenchmarkConvertChunkSize compares conversion throughput across chunk
// sizes in one run (per-frame encoder setup costs show at small sizes).
func BenchmarkConvertChunkSize(b *testing.B) {
	tarball := benchTar(b)
	for _, cs := range []int{64 << 10, 128 << 10, 256 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", cs>>10), func(b *testing.B) {
			b.SetBytes(int64(len(tarball)))
			var size int64
			for b.Loop() {
				res, err := toc.Convert(context.Background(), bytes.NewReader(tarball), io.Discard, toc.WithChunkSize(cs))
				if err != nil {
					b.Fatal(err)
				}
				size = res.Size
			}
			b.ReportMetric(float64(size)/float64(len(tarball)), "ratio")
		})
	}
}
