package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

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
