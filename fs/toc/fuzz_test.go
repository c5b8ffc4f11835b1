package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// seedTOC returns an encoded TOC covering every entry type.
func seedTOC(t testing.TB) (*toc.Result, []byte) {
	blob, res := toctest.Convert(t, toctest.Tar(t, toctest.AllTypes(20<<10)), toc.WithChunkSize(toc.MinChunkSize))
	return res, blob
}

// FuzzUnmarshal: any bytes either decode into a consistent TOC that
// re-encodes to the same bytes, or fail with an error; never a panic.
func FuzzUnmarshal(f *testing.F) {
	res, _ := seedTOC(f)
	good := res.TOC.Marshal()
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("LZFSTOC\x00\x01"))
	_, lib := toctest.Convert(f, toctest.Tar(f, []toctest.File{
		{Hdr: tar.Header{Name: "usr/lib/libx.so.1", Typeflag: tar.TypeReg, Mode: 0o755}, Data: toctest.Random(3, 20<<10)},
		{Hdr: tar.Header{Name: "etc/x", Typeflag: tar.TypeReg, Mode: 0o644}, Data: toctest.Random(4, 20<<10)},
	}), toc.WithChunkSize(2*toc.MinChunkSize), toc.WithLibraryChunkSize(toc.MinChunkSize))
	f.Add(lib.TOC.Marshal()) // with the library chunk size flag
	for _, b := range sparseTOCSeeds(f) {
		f.Add(b) // with a sparse map
	}
	raw, _, _ := hostileSeeds(f)
	for _, b := range raw {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tc, err := toc.Unmarshal(b)
		if err != nil {
			return
		}
		for i := range tc.Entries {
			e := &tc.Entries[i]
			if _, err := toc.CleanName(e.Name); err != nil {
				t.Fatalf("accepted unsafe name %q", e.Name)
			}
			for _, c := range tc.EntryChunks(e) {
				if c.Offset+int64(c.Size) > tc.TarSize {
					t.Fatalf("accepted chunk beyond the tar")
				}
			}
		}
		tc2, err := toc.Unmarshal(tc.Marshal())
		if err != nil {
			t.Fatalf("re-encoded toc does not decode: %v", err)
		}
		if len(tc2.Entries) != len(tc.Entries) || len(tc2.Chunks) != len(tc.Chunks) {
			t.Fatal("re-encoding changed the toc")
		}
	})
}

// FuzzParseFooter: never a panic; a parsed footer round-trips.
func FuzzParseFooter(f *testing.F) {
	res, blob := seedTOC(f)
	f.Add(blob[len(blob)-toc.FooterSize:])
	f.Add(toc.AppendFooter(nil, toc.Footer{Location: res.Location, Version: 2}))
	f.Add(make([]byte, toc.FooterSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, err := toc.ParseFooter(b)
		if err != nil {
			return
		}
		if !bytes.Equal(toc.AppendFooter(nil, ft), b) {
			t.Fatal("footer does not round-trip")
		}
	})
}

// FuzzReadTOC: a whole blob tail (footer + toc frame) from untrusted bytes.
func FuzzReadTOC(f *testing.F) {
	_, blob := seedTOC(f)
	f.Add(blob)
	enc, _ := zstd.NewWriter(nil)
	f.Add(enc.EncodeAll([]byte("hello"), nil))
	_, tails, _ := hostileSeeds(f)
	for _, b := range tails {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = toc.ReadTOC(context.Background(), bytes.NewReader(b), int64(len(b)), nil)
	})
}

// FuzzVerify: any blob either verifies (its TOC describes the tar it
// decompresses to) or fails with an error; never a panic.
func FuzzVerify(f *testing.F) {
	for _, b := range verifySeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tc, _, err := toc.Verify(context.Background(), bytes.NewReader(b), int64(len(b)), nil)
		if err == nil && tc == nil {
			t.Fatal("nil toc without an error")
		}
	})
}

// verifySeeds: an honest blob, one whose TOC lies, and one with a sparse map.
func verifySeeds(t testing.TB) [][]byte {
	blob, res := toctest.Convert(t, toctest.Tar(t, toctest.AllTypes(9000)), toc.WithChunkSize(toc.MinChunkSize))
	lying, _ := toctest.Relabel(t, blob, res, func(tc *toc.TOC) { tc.Entries[1].Mode |= 0o4000 })
	sparse, _ := toctest.Convert(t, sparseTar(t, "1.0", 1<<20, toctest.Random(7, 3000)), toc.WithChunkSize(toc.MinChunkSize))
	return [][]byte{blob, lying, sparse}
}

// FuzzConvert: arbitrary tar bytes convert or fail cleanly; a successful
// conversion decompresses to the input.
func FuzzConvert(f *testing.F) {
	f.Add(toctest.Tar(f, toctest.AllTypes(9000)))
	f.Add([]byte{})
	for _, b := range sparseTarSeeds(f) {
		f.Add(b)
	}
	_, _, tars := hostileSeeds(f)
	for _, b := range tars {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		res, err := toc.Convert(context.Background(), bytes.NewReader(b), &out, toc.WithChunkSize(toc.MinChunkSize),
			toc.WithLevel(zstd.SpeedFastest), toc.WithStartupLevel(zstd.SpeedFastest), toc.WithConcurrency(1))
		if err != nil {
			return
		}
		d, _ := zstd.NewReader(nil)
		defer d.Close()
		got, err := d.DecodeAll(out.Bytes(), nil)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("converted stream does not decompress to the input: %v", err)
		}
		if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(out.Bytes()), res.Size, nil); err != nil {
			t.Fatalf("own toc rejected: %v", err)
		}
	})
}

// sparseTarSeeds: small sparse files in each map format.
func sparseTarSeeds(t testing.TB) [][]byte {
	var tars [][]byte
	for _, v := range []string{"1.0", "0.1", "gnu"} {
		tars = append(tars, sparseTar(t, v, 1<<20, toctest.Random(6, 3000)))
	}
	return tars
}

// sparseTOCSeeds: a TOC with a sparse map.
func sparseTOCSeeds(t testing.TB) [][]byte {
	_, res := toctest.Convert(t, sparseTar(t, "1.0", 1<<20, toctest.Random(5, 3000)), toc.WithChunkSize(toc.MinChunkSize))
	return [][]byte{res.TOC.Marshal()}
}
