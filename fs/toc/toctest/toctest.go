// Package toctest builds tar streams and converted layers for tests of lazyfs
// packages: a corpus with every tar entry type, and helpers to convert it.
package toctest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// File is one tar entry to write: a header and, for regular files, contents.
type File struct {
	Hdr  tar.Header
	Data []byte
}

// Tar writes files as a tar stream (with the writer's default formats, so
// PAX headers appear where names, xattrs or numbers need them).
func Tar(t testing.TB, files []File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.Hdr
		if h.Typeflag == tar.TypeReg || h.Typeflag == 0 {
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if len(f.Data) > 0 {
			if _, err := tw.Write(f.Data); err != nil {
				t.Fatalf("tar data %q: %v", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Random returns n pseudo-random bytes that compress a little (like binaries).
func Random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		if (v>>60)&3 == 0 { // a quarter of the words are zero: some redundancy
			v = 0
		}
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

var epoch = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func hdr(typ byte, name string, mode int64) tar.Header {
	return tar.Header{Typeflag: typ, Name: name, Mode: mode, Uid: 1000, Gid: 1000, Uname: "user", Gname: "group", ModTime: epoch, Format: tar.FormatPAX}
}

// AllTypes returns a corpus covering every entry type and attribute lazyfs
// must carry: directories, empty, small and multi-chunk files, hardlinks,
// symlinks, char and block devices, fifos, setuid/setgid/sticky modes,
// xattrs (incl. security.capability), PAX records, non-ASCII and 255-byte
// names, long paths, a whiteout and an opaque-directory marker. big sets the
// size of the largest file (use a few chunk sizes).
func AllTypes(big int) []File {
	long255 := strings.Repeat("n", 251) + ".bin"
	deep := strings.Repeat("deep/", 30) + "leaf.txt"
	bin := Random(1, big)
	files := []File{
		{Hdr: hdr(tar.TypeDir, "./", 0o755)},
		{Hdr: hdr(tar.TypeDir, "bin/", 0o755)},
		{Hdr: hdr(tar.TypeReg, "bin/tool", 0o4755), Data: bin},
		{Hdr: hdr(tar.TypeLink, "bin/tool-hardlink", 0o4755)},
		{Hdr: hdr(tar.TypeSymlink, "bin/sh", 0o777)},
		{Hdr: hdr(tar.TypeDir, "etc/", 0o2775)},
		{Hdr: hdr(tar.TypeReg, "etc/empty", 0o644)},
		{Hdr: hdr(tar.TypeReg, "etc/hostname", 0o644), Data: []byte("lazyfs\n")},
		{Hdr: hdr(tar.TypeDir, "tmp/", 0o1777)},
		{Hdr: hdr(tar.TypeDir, "dev/", 0o755)},
		{Hdr: hdr(tar.TypeChar, "dev/null", 0o666)},
		{Hdr: hdr(tar.TypeBlock, "dev/sda", 0o660)},
		{Hdr: hdr(tar.TypeFifo, "dev/fifo", 0o600)},
		{Hdr: hdr(tar.TypeReg, "ünïcødé/日本語.txt", 0o644), Data: []byte("こんにちは\n")},
		{Hdr: hdr(tar.TypeReg, long255, 0o600), Data: []byte("long name\n")},
		{Hdr: hdr(tar.TypeReg, deep, 0o644), Data: []byte("deep\n")},
		{Hdr: hdr(tar.TypeReg, "usr/bin/ping", 0o755), Data: Random(2, 3000)},
		{Hdr: hdr(tar.TypeReg, ".wh.removed", 0o644)},
		{Hdr: hdr(tar.TypeDir, "opaque/", 0o755)},
		{Hdr: hdr(tar.TypeReg, "opaque/.wh..wh..opq", 0o644)},
		{Hdr: hdr(tar.TypeReg, "text/zeros", 0o644), Data: make([]byte, big/2+17)},
	}
	files[0].Hdr.Name = "./"
	files[3].Hdr.Linkname = "bin/tool"
	files[4].Hdr.Linkname = "/bin/busybox"
	files[10].Hdr.Devmajor, files[10].Hdr.Devminor = 1, 3
	files[11].Hdr.Devmajor, files[11].Hdr.Devminor = 8, 0
	files[16].Hdr.PAXRecords = map[string]string{
		"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
		"SCHILY.xattr.user.comment":        "pinger",
		"comment":                          "a PAX comment record",
	}
	files[16].Hdr.Uid, files[16].Hdr.Gid = 3000000, 3000001 // needs PAX
	files[7].Hdr.ModTime = time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)
	return files
}

// Convert converts tarball and returns the blob and the result.
func Convert(t testing.TB, tarball []byte, opts ...toc.Option) ([]byte, *toc.Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := toc.Convert(context.Background(), bytes.NewReader(tarball), &out, opts...)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	return out.Bytes(), res
}

// ReadFile reassembles entry e's contents from a converted blob by decoding
// its chunks (a sparse file expanded by its map, holes as zeros).
func ReadFile(t testing.TB, blob []byte, tc *toc.TOC, e *toc.Entry) []byte {
	t.Helper()
	var out []byte
	for _, c := range tc.EntryChunks(e) {
		var err error
		out, err = toc.DecodeChunk(&c, blob[c.CompressedOffset:c.CompressedOffset+int64(c.CompressedSize)], out)
		if err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
	}
	if e.Flags&toc.FlagSparseMap == 0 {
		return out
	}
	// A sparse file: its regions, one after the other, then holes between.
	if e.Size > 1<<30 {
		t.Fatalf("%s: a sparse file of %d bytes is too big to expand in a test", e.Name, e.Size)
	}
	full := make([]byte, e.Size)
	var p int64
	for _, r := range e.SparseMap() {
		copy(full[r.Offset:r.Offset+r.Length], out[p:p+r.Length])
		p += r.Length
	}
	return full
}

// Discard is an io.Writer that counts what it is given.
type Discard struct{ N int64 }

func (d *Discard) Write(p []byte) (int, error) { d.N += int64(len(p)); return len(p), nil }

var _ io.Writer = (*Discard)(nil)

// Relabel returns blob (a converted layer) with its TOC replaced by the one
// mutate makes of a copy of res.TOC, and the new TOC location: a layer
// whose chunks are intact but whose TOC may lie about the tar.
func Relabel(t testing.TB, blob []byte, res *toc.Result, mutate func(*toc.TOC)) ([]byte, toc.Location) {
	t.Helper()
	tc := *res.TOC
	tc.Entries = append([]toc.Entry(nil), res.TOC.Entries...)
	tc.Chunks = append([]toc.Chunk(nil), res.TOC.Chunks...)
	mutate(&tc)
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := enc.EncodeAll(tc.Marshal(), nil)
	enc.Close()
	start := res.Location.Offset - 8 // the TOC frame's header
	out := append([]byte(nil), blob[:start]...)
	out = binary.LittleEndian.AppendUint32(out, toc.TOCFrameMagic)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(payload)))
	loc := toc.Location{Offset: int64(len(out)), Length: int64(len(payload)), Digest: digest.FromBytes(payload)}
	out = append(out, payload...)
	out = toc.AppendFooter(out, toc.Footer{Location: loc, Version: toc.Version})
	return out, loc
}
