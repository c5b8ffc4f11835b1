package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func TestIsSharedLibrary(t *testing.T) {
	for name, want := range map[string]bool{
		"usr/lib/python3/dist-packages/torch/lib/libtorch_cpu.so":                                    true,
		"usr/lib/x86_64-linux-gnu/libLLVM-15.so.1":                                                   true,
		"usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30":                                               true,
		"usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so": true,
		"libc.so.6": true,
		"models/llama/model-00001-of-00002.safetensors": false,
		"models/qwen.gguf":          false,
		"data/so.bin":               false,
		"srv/weights.so-called.bin": false,
		"usr/lib/x.so/README":       false,
		"opt/app/pytorch_model.bin": false,
	} {
		if got := toc.IsSharedLibrary(name); got != want {
			t.Errorf("IsSharedLibrary(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestLibraryChunkSize: shared libraries are cut at the library chunk size,
// other files at the chunk size; the TOC carries both through Marshal and
// Unmarshal, Verify reproduces the cut, and a TOC whose library chunks were
// relabelled as ordinary ones (or the reverse) fails verification.
func TestLibraryChunkSize(t *testing.T) {
	const chunk, lib = 64 << 10, 16 << 10
	files := []toctest.File{
		{Hdr: tar.Header{Name: "usr/lib/libbig.so.1", Typeflag: tar.TypeReg, Mode: 0o644}, Data: toctest.Random(1, 200<<10)},
		{Hdr: tar.Header{Name: "models/w.bin", Typeflag: tar.TypeReg, Mode: 0o644}, Data: toctest.Random(2, 200<<10)},
	}
	tarball := toctest.Tar(t, files)
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(chunk), toc.WithLibraryChunkSize(lib))
	tc := res.TOC
	if tc.ChunkSize != chunk || tc.LibraryChunkSize != lib {
		t.Fatalf("sizes %d/%d, want %d/%d", tc.ChunkSize, tc.LibraryChunkSize, chunk, lib)
	}
	want := map[string]uint32{"usr/lib/libbig.so.1": 13, "models/w.bin": 4} // ceil(200/16), ceil(200/64)
	for i := range tc.Entries {
		e := &tc.Entries[i]
		if n, ok := want[e.Name]; ok && e.NumChunks != n {
			t.Errorf("%s: %d chunks, want %d", e.Name, e.NumChunks, n)
		}
		if e.Name == "usr/lib/libbig.so.1" {
			for _, c := range tc.EntryChunks(e)[:e.NumChunks-1] {
				if c.Size != lib {
					t.Errorf("library chunk of %d bytes, want %d", c.Size, lib)
				}
			}
		}
		if got := toctest.ReadFile(t, blob, tc, e); e.IsRegular() && !bytes.Equal(got, files[map[string]int{"usr/lib/libbig.so.1": 0, "models/w.bin": 1}[e.Name]].Data) {
			t.Errorf("%s: contents differ", e.Name)
		}
	}
	back, err := toc.Unmarshal(tc.Marshal())
	if err != nil || back.LibraryChunkSize != lib || back.ChunkSize != chunk {
		t.Fatalf("round trip: %v, sizes %d/%d", err, back.ChunkSize, back.LibraryChunkSize)
	}
	ctx := context.Background()
	if _, _, err := toc.Verify(ctx, bytes.NewReader(blob), int64(len(blob)), &res.Location); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// The same tar cut without library chunks claims a different cut.
	relabel, loc := toctest.Relabel(t, blob, res, func(c *toc.TOC) { c.LibraryChunkSize = c.ChunkSize })
	if _, _, err := toc.Verify(ctx, bytes.NewReader(relabel), int64(len(relabel)), &loc); !errors.Is(err, toc.ErrTOCMismatch) {
		t.Errorf("relabelled library chunk size: %v, want ErrTOCMismatch", err)
	}

	// Off: every file at the chunk size, and the TOC encodes no library size.
	_, plain := toctest.Convert(t, tarball, toc.WithChunkSize(chunk), toc.WithLibraryChunkSize(-1))
	if plain.TOC.LibraryChunkSize != chunk || len(plain.TOC.Chunks) != 8 {
		t.Errorf("library chunks off: library size %d, %d chunks; want %d, 8", plain.TOC.LibraryChunkSize, len(plain.TOC.Chunks), chunk)
	}
	if _, err := toc.Convert(ctx, bytes.NewReader(tarball), &toctest.Discard{}, toc.WithLibraryChunkSize(1)); err == nil {
		t.Error("library chunk size 1 accepted")
	}
}

// TestTOCFlags: a TOC with a flag bit this reader does not know is refused as
// an unsupported version (the layer is then served as a plain one), and a
// library chunk size above the chunk size is a bad TOC.
func TestTOCFlags(t *testing.T) {
	_, res := toctest.Convert(t, toctest.Tar(t, toctest.AllTypes(20<<10)), toc.WithChunkSize(64<<10), toc.WithLibraryChunkSize(-1))
	good := res.TOC.Marshal()
	// magic (8) + version (1) + flags (1)
	if good[9] != 0 {
		t.Fatalf("flags byte %#x, want 0 for a TOC without library chunks", good[9])
	}
	unknown := bytes.Clone(good)
	unknown[9] = 0x04
	if _, err := toc.Unmarshal(unknown); !errors.Is(err, toc.ErrUnsupportedVersion) {
		t.Errorf("unknown flag: %v, want ErrUnsupportedVersion", err)
	}
	c, _ := toc.Unmarshal(good)
	c.LibraryChunkSize = c.ChunkSize * 2
	if _, err := toc.Unmarshal(c.Marshal()); !errors.Is(err, toc.ErrBadTOC) {
		t.Errorf("library chunk size above the chunk size: %v, want ErrBadTOC", err)
	}
}
