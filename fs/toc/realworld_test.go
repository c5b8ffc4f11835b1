package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestUnsupportedEntryTypes: an entry whose typeflag no runtime unpacks
// (GNU volume labels, dump directories, multi-volume continuations,
// Solaris extended headers, vendor types) fails the conversion naming the
// entry, its type and its offset, as containerd and Docker refuse such a
// layer ("unhandled tar header type"), instead of becoming a lazy file
// whose reads fail. The types runtimes do unpack convert.
func TestUnsupportedEntryTypes(t *testing.T) {
	for _, typ := range []byte{'V', 'D', 'M', 'N', 'X', 'A', 'z'} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range []tar.Header{
			{Typeflag: tar.TypeReg, Name: "first", Mode: 0o644, Size: 1, Format: tar.FormatGNU},
			{Typeflag: typ, Name: "odd-entry", Mode: 0o644, Format: tar.FormatGNU},
		} {
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte("x")[:h.Size])
		}
		tw.Close()
		_, err := toc.Convert(context.Background(), bytes.NewReader(buf.Bytes()), io.Discard)
		if !errors.Is(err, toc.ErrUnsupportedEntry) || !strings.Contains(err.Error(), `"odd-entry"`) ||
			!strings.Contains(err.Error(), "offset 1024") || !strings.Contains(err.Error(), "'"+string(typ)+"'") {
			t.Errorf("type %q: %v", typ, err)
		}
	}
	files := toctest.AllTypes(5000)
	files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeCont, Name: "contiguous", Mode: 0o644, Size: 1}, Data: []byte("c")})
	if _, err := toc.Convert(context.Background(), bytes.NewReader(toctest.Tar(t, files)), io.Discard); err != nil {
		t.Fatalf("supported types: %v", err)
	}
}

// TestEmptyTarStartsWithAFrame: a zero-byte tar (some tools push such
// layers) converts to a blob that starts with an ordinary zstd frame, not
// with the TOC's skippable frame: clients that tell zstd from an
// uncompressed layer by its first four bytes (go-containerregistry, hence
// crane and ko; containers/image) would otherwise take the blob for a tar
// and fail its diffID.
func TestEmptyTarStartsWithAFrame(t *testing.T) {
	for name, tarball := range map[string][]byte{"zero bytes": nil, "end blocks only": make([]byte, 1024)} {
		blob, res := toctest.Convert(t, tarball)
		if !bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Errorf("%s: blob starts with % x", name, blob[:4])
		}
		d, _ := zstd.NewReader(bytes.NewReader(blob))
		out, err := io.ReadAll(d)
		d.Close()
		if err != nil || !bytes.Equal(out, tarball) {
			t.Errorf("%s: decompressed %d bytes, %v", name, len(out), err)
		}
		if _, diffID, err := toc.Verify(context.Background(), bytes.NewReader(blob), int64(len(blob)), &res.Location); err != nil || diffID != res.DiffID {
			t.Errorf("%s: verify: %v (%s, want %s)", name, err, diffID, res.DiffID)
		}
	}
}
