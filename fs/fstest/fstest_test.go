package fstest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func TestBlobFetcher(t *testing.T) {
	files := toctest.AllTypes(5*toc.MinChunkSize + 3)
	blob, res := toctest.Convert(t, toctest.Tar(t, files), toc.WithChunkSize(toc.MinChunkSize))
	f := NewBlobFetcher(blob)
	ctx := context.Background()
	var got [][]byte
	err := f.FetchChunks(ctx, res.TOC.Chunks, func(i int, data []byte) error {
		if i != len(got) {
			t.Fatalf("chunk %d delivered out of order", i)
		}
		got = append(got, bytes.Clone(data))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range res.TOC.Chunks {
		c := &res.TOC.Chunks[i]
		want, err := toc.DecodeChunk(c, blob[c.CompressedOffset:c.CompressedOffset+int64(c.CompressedSize)], nil)
		if err != nil || !bytes.Equal(got[i], want) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	if req, n, b := f.Stats(); req != 1 || n != int64(len(res.TOC.Chunks)) || b == 0 {
		t.Fatalf("stats %d %d %d", req, n, b)
	}
	one := res.TOC.Chunks[:1]
	f.SetFailing(true)
	if err := f.FetchChunks(ctx, one, func(int, []byte) error { return nil }); !errors.Is(err, ErrFetchFailed) {
		t.Fatalf("failing: %v", err)
	}
	f.SetFailing(false)
	f.SetTampered(true)
	if err := f.FetchChunks(ctx, one, func(int, []byte) error { t.Fatal("tampered chunk delivered"); return nil }); !errors.Is(err, toc.ErrDigestMismatch) && !errors.Is(err, toc.ErrBadChunk) {
		t.Fatalf("tampered: %v", err)
	}
	f.SetTampered(false)
	f.SetLying(true)
	if err := f.FetchChunks(ctx, one, func(_ int, d []byte) error {
		if bytes.Equal(d, got[0]) {
			t.Fatal("lying fetcher delivered the right bytes")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.SetLying(false)
	started := f.Block()
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error)
	go func() { errc <- f.FetchChunks(cctx, one, func(int, []byte) error { return nil }) }()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked fetch after cancel: %v", err)
	}
	f.Unblock()
}

func TestMemCache(t *testing.T) {
	c := NewMemCache()
	ctx := context.Background()
	d := toc.Chunk{Sum: [32]byte{1}}
	if _, err := c.Get(ctx, d.Digest()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("miss: %v", err)
	}
	if err := c.Put(ctx, d.Digest(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Get(ctx, d.Digest()); err != nil || string(b) != "x" {
		t.Fatalf("hit: %q %v", b, err)
	}
	if ok, _ := c.Has(ctx, d.Digest()); !ok || c.Len() != 1 {
		t.Fatal("has")
	}
	c.Clear()
	if c.Len() != 0 {
		t.Fatal("clear")
	}
}
