package convert_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// benchLayerTar is a ~96 MiB tar: binary-like big files, text-like files and
// a few thousand small ones, like a distro layer.
func benchLayerTar(b *testing.B) []byte {
	var files []toctest.File
	for i := range 64 {
		data := toctest.Random(uint64(i), 1<<20+i*4096)
		if i%3 == 0 {
			data = bytes.Repeat([]byte(fmt.Sprintf("def f%d(x): return x + %d  # a python module line\n", i, i)), (1<<20)/48)
		}
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("lib/%d.so", i), Mode: 0o755}, Data: data})
	}
	for i := range 8000 {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("py/%d.py", i), Mode: 0o644}, Data: toctest.Random(uint64(i), 4000)})
	}
	return toctest.Tar(b, files)
}

// BenchmarkConvertImage converts a one-layer gzip image through the
// in-process registry (pull, convert, push). MB/s is of uncompressed tar.
// BenchmarkRecompressLayer is the floor any converter pays for the same
// layer: gzip decode and one zstd stream encode, no registry.
func BenchmarkConvertImage(b *testing.B) {
	reg := newRegistry(b)
	tb := benchLayerTar(b)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tb)), nil })
	if err != nil {
		b.Fatal(err)
	}
	img, _ := mutate.AppendLayers(empty.Image, l)
	push(b, reg.ref("bench:src"), img)
	b.SetBytes(int64(len(tb)))
	i := 0
	for b.Loop() {
		i++ // a new destination each time, so every push really uploads
		if _, err := convert.Image(context.Background(), reg.ref("bench:src"), reg.ref(fmt.Sprintf("bench-%d:lazy", i))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecompressLayer(b *testing.B) {
	tb := benchLayerTar(b)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb)
	zw.Close()
	b.SetBytes(int64(len(tb)))
	for b.Loop() {
		zr, _ := gzip.NewReader(bytes.NewReader(gz.Bytes()))
		enc, _ := zstd.NewWriter(io.Discard)
		if _, err := io.Copy(enc, zr); err != nil {
			b.Fatal(err)
		}
		enc.Close()
	}
}
