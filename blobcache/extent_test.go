package blobcache

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"
)

// readExtentT reads the bytes an Extent points at.
func readExtentT(t *testing.T, x Extent) []byte {
	t.Helper()
	b := make([]byte, x.Size)
	if _, err := x.File.ReadAt(b, x.Off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExtent checks that Extent points at a segment chunk's bytes, only once
// this process has checked them (written, or read back through Get), never
// for chunks in badger or under VerifySHA256, and never for damaged bytes.
func TestExtent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data, ds := chunksT(3, 256<<10, 7)
	small, sds := chunksT(1, 1<<10, 8)
	c := openT(t, dir, WithCapacity(8<<20))
	putAllT(t, c, data, ds)
	putAllT(t, c, small, sds)
	for i, d := range ds {
		x, ok := c.Extent(ctx, d)
		if !ok {
			t.Fatalf("chunk %d: no extent right after Put", i)
		}
		if got := readExtentT(t, x); !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d: extent holds other bytes", i)
		}
		x.Release()
	}
	if _, ok := c.Extent(ctx, sds[0]); ok {
		t.Fatal("extent for a chunk kept in badger")
	}
	if got := c.Stats().Hits; got != 3 {
		t.Fatalf("%d hits counted, want 3", got)
	}
	closeT(t, c)

	// A new process has checked nothing: Get checks, then Extent serves.
	if n := corruptFiles(t, dir, data[1][:32], 1000); n != 1 {
		t.Fatalf("damaged %d places", n)
	}
	c = openT(t, dir, WithCapacity(8<<20))
	for i, d := range ds {
		if _, ok := c.Extent(ctx, d); ok {
			t.Fatalf("chunk %d: extent before any check in this process", i)
		}
	}
	getAllT(t, c, data[:1], ds[:1])
	x, ok := c.Extent(ctx, ds[0])
	if !ok {
		t.Fatal("no extent after Get checked the chunk")
	}
	if got := readExtentT(t, x); !bytes.Equal(got, data[0]) {
		t.Fatal("extent holds other bytes after reopen")
	}
	x.Release()
	// All or none: with chunk 2 not checked yet, nothing is held or counted.
	hits := c.Stats().Hits
	var xs [2]Extent
	if c.Extents(ctx, []digest.Digest{ds[0], ds[2]}, xs[:]) {
		t.Fatal("extents for a set with an unchecked chunk")
	}
	if got := c.Stats().Hits; got != hits {
		t.Fatalf("a refused Extents counted %d hits", got-hits)
	}
	if _, err := c.Get(ctx, ds[1]); err == nil {
		t.Fatal("damaged chunk served")
	}
	if _, ok := c.Extent(ctx, ds[1]); ok {
		t.Fatal("extent for a damaged chunk")
	}
	closeT(t, c)

	c = openT(t, dir, WithCapacity(8<<20), WithVerify(VerifySHA256))
	getAllT(t, c, data[2:], ds[2:])
	if _, ok := c.Extent(ctx, ds[2]); ok {
		t.Fatal("extent under VerifySHA256")
	}
}

// TestExtentOutlivesEviction holds an extent while its chunk is evicted and
// its segment deleted: the file stays readable until Release.
func TestExtentOutlivesEviction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data, ds := chunksT(8, 256<<10, 9)
	c := openT(t, dir, WithCapacity(1<<20), WithValueLogFileSize(1<<20))
	putAllT(t, c, data[:1], ds[:1])
	x, ok := c.Extent(ctx, ds[0])
	if !ok {
		t.Fatal("no extent")
	}
	putAllT(t, c, data[1:], ds[1:])
	if ok, _ := c.Has(ctx, ds[0]); ok {
		t.Fatal("chunk 0 not evicted")
	}
	if got := readExtentT(t, x); !bytes.Equal(got, data[0]) {
		t.Fatal("extent holds other bytes after eviction")
	}
	seg := c.segPath(x.s.id)
	if _, err := os.Stat(seg); err != nil {
		t.Fatalf("segment deleted under a held extent: %v", err)
	}
	x.Release()
	if _, err := os.Stat(seg); !os.IsNotExist(err) {
		t.Fatalf("segment of an evicted chunk kept after Release: %v", err)
	}
}

// TestExtentOutlivesClose: closing the cache leaves the file of a held
// extent open (a reader may be splicing from it: a closed descriptor's
// number could be reused by another file) until the extent is released.
func TestExtentOutlivesClose(t *testing.T) {
	ctx := context.Background()
	data, ds := chunksT(2, 64<<10, 11)
	c := openT(t, t.TempDir())
	putAllT(t, c, data, ds)
	x, ok := c.Extent(ctx, ds[0])
	if !ok {
		t.Fatal("no extent")
	}
	y, ok := c.Extent(ctx, ds[1])
	if !ok {
		t.Fatal("no extent")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readExtentT(t, x); !bytes.Equal(got, data[0]) {
		t.Fatal("extent holds other bytes after Close")
	}
	x.Release()
	if x.s == y.s {
		if got := readExtentT(t, y); !bytes.Equal(got, data[1]) {
			t.Fatal("second extent of the segment unreadable after the first's Release")
		}
	}
	y.Release()
	if _, err := x.File.ReadAt(make([]byte, 1), x.Off); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("segment file still open after Close and the last Release: %v", err)
	}
}
