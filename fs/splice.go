package fs

import (
	"context"
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// Warm reads by splice (docs/fs.md, "Warm reads by splice"): a READ whose
// chunks all lie checked in the cache's segment files is answered without
// the chunk bytes ever entering the daemon. Each chunk's part is spliced
// from its segment file into a pipe (page references, no copy), and go-fuse
// splices the pipe to /dev/fuse, where the kernel copies once into the
// file's page cache. The copy path reads each whole chunk into memory,
// checks its CRC and copies it again to the kernel: three passes over the
// bytes against one.

// extentCache is the optional Cache method that says where a chunk's bytes
// lie in a file (blobcache.Badger's segment store), for chunks the cache
// has checked in this process.
type extentCache interface {
	Extents(ctx context.Context, ds []digest.Digest, xs []blobcache.Extent) bool
}

const (
	pageSize = 4096
	// maxSplicePieces bounds the chunks one spliced READ covers (a READ of
	// many small chunks takes the copy path).
	maxSplicePieces = 8
	// fuseOutHeader is the size of the reply header go-fuse writes into
	// its pipe before the data.
	fuseOutHeader = 16
)

// spliceMaxRead is the largest READ the kernel sends when replies are
// spliced: go-fuse grows its pipe to the reply plus a page, and a pipe grows
// to at most /proc/sys/fs/pipe-max-size (1 MiB by default, so 512 KiB
// READs). 0 when pipes cannot be resized: no splicing then.
func spliceMaxRead() int {
	if !splice.Resizable() {
		return 0
	}
	for n := 1 << 20; n >= 128<<10; n /= 2 {
		if n+fuseOutHeader+pageSize <= splice.MaxPipeSize() {
			return n
		}
	}
	return 0
}

// pipeSlots is the number of pipe buffers a pipe grown to hold n bytes has
// at least (the kernel rounds to a power of two pages).
func pipeSlots(n int) int {
	pages := (n + pageSize - 1) / pageSize
	s := 1
	for s < pages {
		s *= 2
	}
	return s
}

// spanPages is the number of pages [off, off+n) of a file touches: the pipe
// buffers a splice of it takes at most.
func spanPages(off, n int64) int {
	return int((off+n+pageSize-1)/pageSize - off/pageSize)
}

// spliceRead returns a reply to a READ of the file bytes [off, off+n), which
// lie in chunks [first, last) of t (base: the file's first chunk offset),
// spliced from the cache's segment files, or nil when a chunk is not there
// (in memory, not cached, not checked yet) and the copy path must serve it.
func (r *Root) spliceRead(ctx context.Context, t *toc.TOC, first, last int, base, off int64, n int) fuse.ReadResult {
	ec, ok := r.opts.Cache.(extentCache)
	if !ok || !r.splice.Load() || last-first > maxSplicePieces || n > r.spliceMax {
		return nil
	}
	var ds [maxSplicePieces]digest.Digest
	for i := first; i < last; i++ {
		c := &t.Chunks[i]
		if r.hot.has(c.Sum) {
			return nil // in memory: copying it beats reading the disk
		}
		ds[i-first] = c.Digest()
	}
	pieces := last - first
	var xs [maxSplicePieces]blobcache.Extent
	if !ec.Extents(ctx, ds[:pieces], xs[:pieces]) {
		return nil
	}
	defer func() {
		for _, x := range xs[:pieces] {
			x.Release()
		}
	}()
	var from [maxSplicePieces]int64
	var size [maxSplicePieces]int
	slots := 0
	end := off + int64(n)
	for k := range pieces {
		c, x := &t.Chunks[first+k], xs[k]
		if x.Size != int64(c.Size) {
			return nil
		}
		coff := c.Offset - base
		lo, hi := max(off, coff), min(end, coff+x.Size)
		from[k] = x.Off + lo - coff
		size[k] = int(hi - lo)
		slots += spanPages(from[k], hi-lo)
	}
	// go-fuse splices this pipe into its own, grown to the reply plus a
	// page, after the header: a pipe that fills up blocks the splice, and
	// the reader with it. Only replies that surely fit are spliced.
	if 1+slots > pipeSlots(fuseOutHeader+n+pageSize) {
		return nil
	}
	p, err := splice.Get()
	if err != nil {
		return nil
	}
	if err := p.Grow(slots * pageSize); err != nil {
		splice.Done(p)
		return nil
	}
	for k := range pieces {
		if !loadPipe(p, xs[k].File, from[k], size[k]) {
			splice.Done(p)
			return nil
		}
	}
	r.stats.spliced.Add(1)
	return fuse.ReadResultPipe(p, n)
}

// loadPipe splices n bytes of f at off into p.
func loadPipe(p *splice.Pair, f *os.File, off int64, n int) bool {
	fd := f.Fd()
	for n > 0 {
		m, err := p.LoadFromAt(fd, n, off)
		if err != nil || m <= 0 {
			return false
		}
		off += int64(m)
		n -= m
	}
	return true
}

// bytesResult is a reply of bytes in memory. go-fuse writes it to /dev/fuse
// with writev; its plain ReadResultData would first try (and fail) to splice
// when splicing is on.
type bytesResult [1][]byte

func (b *bytesResult) Size() int                          { return len(b[0]) }
func (b *bytesResult) Done()                              {}
func (b *bytesResult) Bytes([]byte) ([]byte, fuse.Status) { return b[0], fuse.OK }
func (b *bytesResult) Slices() ([][]byte, fuse.Status)    { return b[:], fuse.OK }
