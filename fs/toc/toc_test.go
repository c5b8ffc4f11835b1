package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

const testChunk = 64 << 10

// stockDecode decompresses with a plain streaming zstd decoder (and with the
// zstd command line tool when it is installed): the blob must be an ordinary
// zstd stream whose skippable frames are ignored.
func stockDecode(t *testing.T, blob []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatalf("stock zstd decoder: %v", err)
	}
	if path, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command(path, "-d", "-c", "-q")
		cmd.Stdin = bytes.NewReader(blob)
		cli, err := cmd.Output()
		if err != nil {
			t.Fatalf("zstd -d: %v", err)
		}
		if !bytes.Equal(cli, out) {
			t.Fatalf("zstd(1) and the Go decoder disagree: %d vs %d bytes", len(cli), len(out))
		}
	} else {
		t.Log("zstd(1) not installed: checked with the Go decoder only")
	}
	return out
}

func TestRoundTripAllTypes(t *testing.T) {
	for _, chunk := range []int{toc.MinChunkSize, testChunk, toc.DefaultChunkSize} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			files := toctest.AllTypes(3*chunk + 1234)
			tarball := toctest.Tar(t, files)
			blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(chunk))

			if got := stockDecode(t, blob); !bytes.Equal(got, tarball) {
				t.Fatalf("decompressed layer differs from the tar (%d vs %d bytes)", len(got), len(tarball))
			}
			if want := digest.FromBytes(tarball); res.DiffID != want {
				t.Errorf("diffID %s, want %s", res.DiffID, want)
			}
			if want := digest.FromBytes(blob); res.Digest != want || res.Size != int64(len(blob)) {
				t.Errorf("digest/size %s/%d, want %s/%d", res.Digest, res.Size, want, len(blob))
			}

			// The TOC read back through the footer and through the annotations
			// equals the one Convert returned.
			for _, viaAnnotations := range []bool{false, true} {
				var loc *toc.Location
				if viaAnnotations {
					l, ok, err := toc.LocationFromAnnotations(res.Annotations())
					if err != nil || !ok {
						t.Fatalf("annotations: %v %v", ok, err)
					}
					loc = &l
				}
				got, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(blob), int64(len(blob)), loc)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(res.TOC, got); diff != "" {
					t.Fatalf("toc read back differs (-convert +read):\n%s", diff)
				}
			}
			checkTOCAgainstTar(t, tarball, blob, res.TOC, chunk)
		})
	}
}

// checkTOCAgainstTar reads the tar with archive/tar and checks that the TOC
// describes every entry and every chunk.
func checkTOCAgainstTar(t *testing.T, tarball, blob []byte, tc *toc.TOC, chunk int) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(tarball))
	i := 0
	var chunks uint32
	for ; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if i >= len(tc.Entries) {
			t.Fatalf("toc has %d entries, tar has more", len(tc.Entries))
		}
		e := &tc.Entries[i]
		name, _ := toc.CleanName(h.Name)
		want := toc.Entry{
			Name: name, Type: h.Typeflag, Mode: h.Mode, UID: int64(h.Uid), GID: int64(h.Gid),
			Uname: h.Uname, Gname: h.Gname, Size: h.Size, Linkname: h.Linkname,
			ModTimeSec: h.ModTime.Unix(), ModTimeNsec: int32(h.ModTime.Nanosecond()),
			Devmajor: uint32(h.Devmajor), Devminor: uint32(h.Devminor),
		}
		got := *e
		got.HeaderOffset, got.FirstChunk, got.NumChunks, got.Ext = 0, 0, 0, nil
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("entry %d (%s) (-tar +toc):\n%s", i, h.Name, diff)
		}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if got, ok := e.Xattr(x); !ok || got != v {
					t.Errorf("%s: xattr %s = %q, want %q", name, x, got, v)
				}
			} else if k == "comment" {
				found := false
				for _, kv := range e.PAX() {
					found = found || (kv.Key == k && kv.Value == v)
				}
				if !found {
					t.Errorf("%s: PAX record %s missing", name, k)
				}
			}
		}
		if e.IsRegular() {
			wantChunks := (len(data) + chunk - 1) / chunk
			if int(e.NumChunks) != wantChunks || (wantChunks > 0 && e.FirstChunk != chunks) {
				t.Errorf("%s: chunks %d+%d, want %d+%d", name, e.FirstChunk, e.NumChunks, chunks, wantChunks)
			}
			chunks += e.NumChunks
			if got := toctest.ReadFile(t, blob, tc, e); !bytes.Equal(got, data) {
				t.Errorf("%s: contents from chunks differ", name)
			}
			for j, c := range tc.EntryChunks(e) {
				end := c.Offset + int64(c.Size)
				if !bytes.Equal(tarball[c.Offset:end], data[j*chunk:j*chunk+int(c.Size)]) {
					t.Errorf("%s chunk %d: tar offset %d does not hold its bytes", name, j, c.Offset)
				}
				if sha256.Sum256(tarball[c.Offset:end]) != c.Sum {
					t.Errorf("%s chunk %d: wrong digest", name, j)
				}
			}
		}
	}
	if i != len(tc.Entries) {
		t.Errorf("tar has %d entries, toc %d", i, len(tc.Entries))
	}
	if int(chunks) != len(tc.Chunks) {
		t.Errorf("entries use %d chunks, toc lists %d", chunks, len(tc.Chunks))
	}
	if tc.TarSize != int64(len(tarball)) {
		t.Errorf("tar size %d, want %d", tc.TarSize, len(tarball))
	}
	// Every header offset points at a tar header block (PAX or the entry's own).
	for _, e := range tc.Entries {
		if e.HeaderOffset%512 != 0 || e.HeaderOffset >= int64(len(tarball)) {
			t.Errorf("%s: header offset %d", e.Name, e.HeaderOffset)
			continue
		}
		if _, err := tar.NewReader(bytes.NewReader(tarball[e.HeaderOffset:])).Next(); err != nil {
			t.Errorf("%s: no tar header at %d: %v", e.Name, e.HeaderOffset, err)
		}
	}
}

func TestConvertIsDeterministic(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(200<<10))
	a, _ := toctest.Convert(t, tarball, toc.WithChunkSize(testChunk), toc.WithConcurrency(1))
	b, _ := toctest.Convert(t, tarball, toc.WithChunkSize(testChunk), toc.WithConcurrency(4))
	if !bytes.Equal(a, b) {
		t.Fatal("conversion output depends on concurrency")
	}
}

func TestSameContentSameChunks(t *testing.T) {
	data := toctest.Random(7, 300<<10)
	h := func(name string) tar.Header {
		return tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}
	}
	_, r1 := toctest.Convert(t, toctest.Tar(t, []toctest.File{{Hdr: h("a"), Data: data}}), toc.WithChunkSize(testChunk))
	_, r2 := toctest.Convert(t, toctest.Tar(t, []toctest.File{{Hdr: h("other/dir/b"), Data: []byte("x")}, {Hdr: h("b"), Data: data}}), toc.WithChunkSize(testChunk))
	e1, e2 := &r1.TOC.Entries[0], &r2.TOC.Entries[1]
	c1, c2 := r1.TOC.EntryChunks(e1), r2.TOC.EntryChunks(e2)
	if len(c1) != len(c2) {
		t.Fatalf("%d vs %d chunks", len(c1), len(c2))
	}
	for i := range c1 {
		if c1[i].Digest() != c2[i].Digest() {
			t.Errorf("chunk %d: identical content in two layers has different digests", i)
		}
	}
}

func TestRejectsUnsafePaths(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    tar.Header
	}{
		{"dotdot", tar.Header{Typeflag: tar.TypeReg, Name: "../evil", Mode: 0o644}},
		{"nested dotdot", tar.Header{Typeflag: tar.TypeReg, Name: "a/b/../../../evil", Mode: 0o644}},
		{"absolute dotdot", tar.Header{Typeflag: tar.TypeReg, Name: "/../etc/passwd", Mode: 0o644}},
		{"hardlink out", tar.Header{Typeflag: tar.TypeLink, Name: "link", Linkname: "../../etc/shadow"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tarball := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "ok/", Mode: 0o755}}, {Hdr: tc.h}})
			_, err := toc.Convert(context.Background(), bytes.NewReader(tarball), io.Discard)
			if !errors.Is(err, toc.ErrUnsafePath) {
				t.Fatalf("got %v, want ErrUnsafePath", err)
			}
			if !strings.Contains(err.Error(), "offset 512") {
				t.Errorf("error %q does not name the offset", err)
			}
		})
	}
	// Absolute paths and symlinks pointing anywhere are fine: they are contained at mount.
	ok := toctest.Tar(t, []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "/abs/file", Mode: 0o644}},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "s", Linkname: "../../../etc/passwd"}},
	})
	_, res := toctest.Convert(t, ok)
	if res.TOC.Entries[0].Name != "abs/file" || res.TOC.Entries[1].Linkname != "../../../etc/passwd" {
		t.Errorf("got %q -> %q", res.TOC.Entries[0].Name, res.TOC.Entries[1].Linkname)
	}
}

func TestBadTar(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(100<<10))
	// Cut in the middle of the big file's contents.
	_, err := toc.Convert(context.Background(), bytes.NewReader(tarball[:5000]), io.Discard)
	if !errors.Is(err, toc.ErrBadTar) || !strings.Contains(err.Error(), "bin/tool") {
		t.Fatalf("truncated tar: %v", err)
	}
	// A corrupted header checksum.
	bad := bytes.Clone(tarball)
	bad[148] ^= 0x55
	if _, err := toc.Convert(context.Background(), bytes.NewReader(bad), io.Discard); !errors.Is(err, toc.ErrBadTar) {
		t.Fatalf("bad checksum: %v", err)
	}
	// Not a tar at all.
	if _, err := toc.Convert(context.Background(), strings.NewReader(strings.Repeat("garbage!", 200)), io.Discard); !errors.Is(err, toc.ErrBadTar) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestWriteErrorIsReported(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(1<<20))
	_, err := toc.Convert(context.Background(), bytes.NewReader(tarball), failWriter{})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("got %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestCorruptionIsDetected(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(200<<10))
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(testChunk))
	size := int64(len(blob))

	// A flipped byte in a chunk frame: decode fails or the digest mismatches.
	c := res.TOC.Chunks[1]
	frame := bytes.Clone(blob[c.CompressedOffset : c.CompressedOffset+int64(c.CompressedSize)])
	frame[len(frame)/2] ^= 0xff
	if _, err := toc.DecodeChunk(&c, frame, nil); !errors.Is(err, toc.ErrBadChunk) && !errors.Is(err, toc.ErrDigestMismatch) {
		t.Fatalf("corrupt chunk: %v", err)
	}
	// A valid frame of other bytes: digest mismatch.
	other := res.TOC.Chunks[0]
	c.CompressedSize = other.CompressedSize
	c.Size = other.Size
	if _, err := toc.DecodeChunk(&c, blob[other.CompressedOffset:other.CompressedOffset+int64(other.CompressedSize)], nil); !errors.Is(err, toc.ErrDigestMismatch) {
		t.Fatalf("swapped chunk: %v", err)
	}

	// A flipped byte in the TOC: digest mismatch.
	bad := bytes.Clone(blob)
	bad[res.Location.Offset+3] ^= 1
	if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(bad), size, nil); !errors.Is(err, toc.ErrDigestMismatch) {
		t.Fatalf("corrupt toc: %v", err)
	}
	// A broken footer.
	bad = bytes.Clone(blob)
	bad[size-60] ^= 1
	if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(bad), size, nil); !errors.Is(err, toc.ErrNotChunked) {
		t.Fatalf("corrupt footer: %v", err)
	}
	// A plain zstd blob is reported as not chunked.
	enc, _ := zstd.NewWriter(nil)
	plain := enc.EncodeAll(tarball, nil)
	if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(plain), int64(len(plain)), nil); !errors.Is(err, toc.ErrNotChunked) {
		t.Fatalf("plain blob: %v", err)
	}
	// Annotations that point outside the blob.
	loc := res.Location
	loc.Offset = size
	if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(blob), size, &loc); !errors.Is(err, toc.ErrBadTOC) {
		t.Fatalf("bad location: %v", err)
	}
}

func TestUnmarshalRejectsInconsistentTOCs(t *testing.T) {
	_, res := toctest.Convert(t, toctest.Tar(t, toctest.AllTypes(200<<10)), toc.WithChunkSize(testChunk))
	good := res.TOC.Marshal()
	if _, err := toc.Unmarshal(good); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(*toc.TOC)) []byte {
		c, _ := toc.Unmarshal(good)
		f(c)
		return c.Marshal()
	}
	for name, b := range map[string][]byte{
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"empty":          nil,
		"bad magic":      append([]byte("XXXX"), good[4:]...),
		"escaping name":  mutate(func(c *toc.TOC) { c.Entries[2].Name = "../x" }),
		"unclean name":   mutate(func(c *toc.TOC) { c.Entries[2].Name = "a//b" }),
		"size mismatch":  mutate(func(c *toc.TOC) { c.Entries[2].Size++ }),
		"orphan chunk":   mutate(func(c *toc.TOC) { c.Entries[2].NumChunks-- }),
		"chunks on dir":  mutate(func(c *toc.TOC) { c.Entries[1].NumChunks = 1; c.Entries[2].NumChunks-- }),
		"tar too small":  mutate(func(c *toc.TOC) { c.TarSize = 10 }),
		"hardlink out":   mutate(func(c *toc.TOC) { c.Entries[3].Linkname = "../../x" }),
		"huge count":     append(bytes.Clone(good[:9]), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f),
		"future version": append([]byte("LZFSTOC\x00\x02"), good[9:]...),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := toc.Unmarshal(b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestChunkRange(t *testing.T) {
	data := toctest.Random(3, 10*testChunk+100)
	tarball := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: data}})
	_, res := toctest.Convert(t, tarball, toc.WithChunkSize(testChunk))
	e := &res.TOC.Entries[0]
	for _, tc := range []struct{ off, n, first, last int64 }{
		{0, 1, 0, 1},
		{0, testChunk, 0, 1},
		{0, testChunk + 1, 0, 2},
		{testChunk - 1, 2, 0, 2},
		{testChunk, 10, 1, 2},
		{10 * testChunk, 100, 10, 11},
		{10*testChunk + 99, 1000, 10, 11},
		{10*testChunk + 100, 1, 0, 0},
		{5, 0, 0, 0},
	} {
		f, l := res.TOC.ChunkRange(e, tc.off, tc.n)
		if int64(f) != tc.first || int64(l) != tc.last {
			t.Errorf("ChunkRange(%d, %d) = [%d, %d), want [%d, %d)", tc.off, tc.n, f, l, tc.first, tc.last)
		}
	}
}

// TestHugeFile converts a 4.5 GiB file (zeros with markers, so it stays
// small on disk) and checks the stream and the chunk offsets past 4 GiB.
func TestHugeFile(t *testing.T) {
	if testing.Short() {
		t.Skip("converts 4.5 GiB; skipped with -short")
	}
	const size = 4<<30 + 512<<20
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "huge.bin", Mode: 0o644, Size: size, Format: tar.FormatPAX})
		_, err := io.Copy(tw, io.LimitReader(&markerReader{}, size))
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	f, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tarHash := sha256.New()
	res, err := toc.Convert(context.Background(), io.TeeReader(pr, tarHash), f, toc.WithChunkSize(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	if got := digest.NewDigest(digest.SHA256, tarHash); got != res.DiffID {
		t.Fatalf("diffID %s, want %s", res.DiffID, got)
	}
	e := &res.TOC.Entries[0]
	if e.Size != size || int(e.NumChunks) != size/(4<<20) {
		t.Fatalf("size %d chunks %d", e.Size, e.NumChunks)
	}
	// Decode the chunk that straddles nothing but lies past 4 GiB.
	first, _ := res.TOC.ChunkRange(e, 4<<30+3, 1)
	c := res.TOC.Chunks[first]
	frame := make([]byte, c.CompressedSize)
	if _, err := f.ReadAt(frame, c.CompressedOffset); err != nil {
		t.Fatal(err)
	}
	data, err := toc.DecodeChunk(&c, frame, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, len(data))
	markerReader{off: c.Offset - res.TOC.DataOffset(e)}.fill(want)
	if !bytes.Equal(data, want) {
		t.Fatal("chunk past 4 GiB decodes to the wrong bytes")
	}
	// And the whole blob decompresses to the tar.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	d, _ := zstd.NewReader(f)
	defer d.Close()
	h := sha256.New()
	if _, err := io.Copy(h, d); err != nil {
		t.Fatal(err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != res.DiffID {
		t.Fatalf("decompressed %s, want %s", got, res.DiffID)
	}
}

// markerReader yields zeros with the offset written every 64 KiB.
type markerReader struct{ off int64 }

func (m markerReader) fill(p []byte) {
	clear(p)
	for i := range p {
		if o := m.off + int64(i); o%(64<<10) == 0 {
			for j := 0; j < 8 && i+j < len(p); j++ {
				p[i+j] = byte(o >> (8 * j))
			}
		}
	}
}

func (m *markerReader) Read(p []byte) (int, error) {
	m.fill(p)
	m.off += int64(len(p))
	return len(p), nil
}

func TestIsCleanNameMatchesCleanName(t *testing.T) {
	for _, n := range []string{"", "a", "a/b", "a//b", "a/./b", "a/../b", "../a", "/a", "a/", ".", "..", "a/..", "a/.b", "..a", "a/b..", "...", "a/.../b"} {
		c, err := toc.CleanName(n)
		want := err == nil && c == n
		if _, err := toc.Unmarshal((&toc.TOC{Entries: []toc.Entry{{Name: n, Type: tar.TypeDir}}}).Marshal()); (err == nil) != want {
			t.Errorf("%q: decoder accepts=%v, CleanName clean=%v", n, err == nil, want)
		}
	}
}
