package blobcache

import (
	"context"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
)

// Extent is where the bytes of a cached chunk lie in a segment file, for a
// reader that moves them without copying them through its own memory (with
// splice(2) into a pipe). The bytes [Off, Off+Size) of File do not change;
// the file stays open until Release.
type Extent struct {
	File *os.File
	Off  int64
	Size int64

	c *Badger
	s *segment
}

// Release lets the segment file go (it may be deleted once the chunk is
// evicted or moved). Bytes already spliced out stay valid.
func (x Extent) Release() {
	if x.s == nil {
		return
	}
	x.c.mu.Lock()
	x.c.unref(x.s)
	x.c.mu.Unlock()
}

// Extent returns where chunk d's bytes lie, when they are in a segment file
// and this process has checked them: it wrote them (after Put verified
// their sha256), or read them back through Get with their CRC-32C matching.
// A reader of the extent skips that check, so ok is false for a chunk not
// checked yet (Get checks it; the next Extent then succeeds), and always
// under VerifySHA256, whose promise is a check on every read. A hit counts
// as one in Stats.
func (c *Badger) Extent(ctx context.Context, d digest.Digest) (Extent, bool) {
	var xs [1]Extent
	ok := c.Extents(ctx, []digest.Digest{d}, xs[:])
	return xs[0], ok
}

// Extents is Extent for chunks ds at once, into xs (as long as ds): all or
// none. Unless every chunk has an extent it returns false, holding and
// counting nothing, so that a reader that then reads them through Get does
// not count them twice.
func (c *Badger) Extents(ctx context.Context, ds []digest.Digest, xs []Extent) bool {
	if c.cfg.verify == VerifySHA256 || ctx.Err() != nil || len(xs) < len(ds) {
		return false
	}
	var ks [8]key
	keys := ks[:0]
	for _, d := range ds {
		k, err := parseDigest(d)
		if err != nil {
			return false
		}
		keys = append(keys, k)
	}
	if c.begin() != nil {
		return false
	}
	defer c.life.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range keys {
		e := c.idx.m[k]
		if e == nil || e.seg == nil || !e.checked || e.seg.dead {
			return false
		}
		xs[i] = Extent{File: e.seg.f, Off: e.off + segHdrLen, Size: e.size, c: c, s: e.seg}
	}
	now := time.Now().UnixNano()
	for i, k := range keys {
		c.idx.touch(c.idx.m[k], now)
		xs[i].s.refs++ // keeps the file open if the chunk is evicted meanwhile
		c.st.hits.Add(1)
		c.st.bytesOut.Add(xs[i].Size)
	}
	return true
}
