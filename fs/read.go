package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// handle is one open file. It tracks up to maxStreams sequential streams
// for read-ahead: a plain reader makes one, a loader that faults in tensors
// of an mmapped file through several threads (or one after another) makes
// several, each a run of sequential READs at its own place.
type handle struct {
	r *Root
	d uint32
	// lib: the file is a shared library, which is read through mmap page
	// faults around the parts the loader touches: with a start-up profile,
	// the kernel's read-around is all the read-ahead it gets (leanLib).
	lib bool

	mu       sync.Mutex
	streams  [maxStreams]stream
	tick     uint64 // LRU clock of streams
	longRuns int    // streams that ran past longRun bytes
}

// stream is one sequential run of READs in a file.
type stream struct {
	next  int64  // offset just past the previous READ
	seq   int    // consecutive sequential READs
	raEnd int    // chunk index up to which read-ahead was queued
	win   int    // read-ahead window, chunks
	run   int64  // bytes read in this run
	used  uint64 // LRU tick
	long  bool   // counted in longRuns
}

const (
	maxStreams = 4
	// initialWindow is the read-ahead window of a new stream, in chunks.
	initialWindow = 4
	// longRun is the length of a sequential run after which it counts as a
	// tensor-like read; a big file with bulkRuns of them (at different
	// places) is read whole by a loader, and gets a bulk fill.
	longRun  = 2 << 20
	bulkRuns = 3
	// bulkMinSize is the smallest file a bulk fill is started for.
	bulkMinSize = 64 << 20
)

var (
	_ gofs.FileReader   = (*handle)(nil)
	_ gofs.FileReleaser = (*handle)(nil)
)

func (r *Root) open(ctx context.Context, d uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if r.spool != nil {
		if fh, ok := r.spool.open(ctx, r, d); ok {
			return fh, 0, 0
		}
	}
	l, e := r.t.dataEntry(d)
	lib := sharedObject(e.Name)
	if lib {
		r.prefetchLibrary(l, e, d)
	}
	return &handle{r: r, d: d, lib: lib}, fuse.FOPEN_KEEP_CACHE, 0
}

// prefetchLibrary queues a fetch of the whole of shared library e when it is
// at most Options.WholeLibrary compressed bytes and reads are not lean (a
// start-up profile names what to fetch): the loader opens a library and
// then reads nearly all of it through page faults, so one request now
// replaces a blocking round trip per fault. Chunks already cached or in
// flight are skipped by the job. The first time per Root that library d is
// fetched this way, its dependencies follow when the job ends
// (prefetchDeps).
func (r *Root) prefetchLibrary(l *layer, e *toc.Entry, d uint32) {
	if r.opts.WholeLibrary <= 0 || e.NumChunks == 0 || r.lean() {
		return
	}
	cs := l.toc.Chunks
	first, last := int(e.FirstChunk), int(e.FirstChunk+e.NumChunks)
	compressed := cs[last-1].CompressedOffset + int64(cs[last-1].CompressedSize) - cs[first].CompressedOffset
	limit := r.opts.WholeLibrary * r.farScale()
	if compressed > limit {
		return
	}
	j := prefetchJob{l: l, first: first, last: last, path: e.Name}
	_, seen := r.depsSeen.LoadOrStore(d, true)
	if !seen {
		j.done = func() { r.prefetchDeps(l, e, noSkip) }
	}
	if r.link.slow.Load() && compressed > partialLibMin {
		// On a slow link, bytes are the limit: the first chunk, then
		// (once the program headers are known) all but the code a start
		// does not run (prefetchLibraryRest).
		j.last, j.done = first+1, func() { r.prefetchLibraryRest(l, e, !seen) }
	}
	if r.queuePrefetch(j) {
		r.stats.libraryJobs.Add(1)
	} else if !seen {
		r.depsSeen.Delete(d)
	}
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.r.spool != nil {
		h.r.spool.release(h.d, false)
	}
	return 0
}

// Read returns exactly the bytes [off, off+len(dest)) of the file (fewer at its end).
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	st, seq := h.track(off, int64(len(dest)))
	var res fuse.ReadResult
	n, last, missed, errno := h.r.readFile(ctx, h.d, dest, off, &res)
	if errno != 0 {
		return nil, errno
	}
	if seq >= 2 && h.r.opts.ReadAhead > 0 && !h.leanLib() {
		h.readAhead(st, last, seq, missed)
	}
	if res == nil {
		res = &bytesResult{dest[:n]}
	}
	return res, 0
}

// leanLib reports whether the file is a shared library of a Root with a
// start-up profile: no read-ahead then. The profile names the parts of the
// library start-up reads. Without one, a library gets read-ahead only once
// a stream in it has run longRun bytes (readAhead): the loader's page
// faults come in short runs, each already widened by the kernel's
// read-around, and chunk read-ahead after them fetched 36 MB of libraries
// a torch import did not read; a program that reads a library through
// (a copy, a checksum) gets it.
func (h *handle) leanLib() bool { return h.lib && h.r.lean() }

// track finds the stream a READ continues (the kernel sends a sequential
// reader's READs a few at a time and not always in order: a READ within two
// request sizes of the end of a stream's previous one continues it), or
// starts a new one in place of the least recently used. It returns the
// stream's index and its count of consecutive sequential READs.
func (h *handle) track(off, n int64) (int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tick++
	best, lru := -1, 0
	for i := range h.streams {
		s := &h.streams[i]
		if s.used != 0 && off-s.next >= -2*n && off-s.next <= 2*n {
			best = i
			break
		}
		if s.used < h.streams[lru].used {
			lru = i
		}
	}
	if best < 0 {
		// A READ at offset 0 counts as continuing a stream: readers of a
		// whole file start there.
		seq := 0
		if off == 0 {
			seq = 1
		}
		h.streams[lru] = stream{next: off + n, seq: seq, win: initialWindow, run: n, used: h.tick}
		return lru, seq
	}
	s := &h.streams[best]
	s.seq++
	s.used = h.tick
	s.run += n
	s.next = max(s.next, off+n)
	if s.run >= longRun && !s.long {
		s.long = true
		h.longRuns++
		if h.longRuns == bulkRuns {
			h.r.startBulk(h.d, off)
		}
	}
	return best, s.seq
}

// readAhead queues the chunks after last (an index into the layer's chunks)
// that stream st has not queued yet. The window ramps up: it doubles with
// each of the first sequential READs, and afterwards with every READ that
// still had to wait for the network (the read-ahead was not far enough
// ahead for the link's bandwidth × round trip), up to ReadAhead; it halves
// when the read-ahead queue is full (the fetcher or the cache is behind).
func (h *handle) readAhead(st, last, seq int, missed bool) {
	r := h.r
	l, e := r.t.dataEntry(h.d)
	end := int(e.FirstChunk + e.NumChunks)
	// On a slow link a library's read-ahead stays out of its code: a long
	// run there is the loader reading its relocations, whose read-ahead
	// went on into code a start mostly does not run (import torch at
	// 200 Mbit/s: 8.5 MB of libgdal's code after its 3 MB of tables, a
	// fifth of it used). The code a start runs faults in.
	if h.lib && r.link.slow.Load() {
		a, b, ok := r.libraryCode(l, e, h.d)
		if ok && b > a {
			if last-1 >= a && last-1 < b {
				return
			}
			if last <= a {
				end = a
			}
		}
	}
	h.mu.Lock()
	grown := 0 // logged once the lock is released
	unlock := func() {
		h.mu.Unlock()
		if grown > 0 {
			r.logWindow(e.Name, grown, last, "grow")
		}
	}
	s := &h.streams[st]
	if h.lib && s.run < longRun {
		unlock()
		return
	}
	if seq < 6 || missed {
		if w := min(2*s.win, h.maxWindow(e)); w != s.win {
			s.win, grown = w, w
		}
	}
	window := s.win
	from := max(last, s.raEnd)
	to := min(last+window, end)
	if r.inProfile(l, last-1) {
		// The reader is inside the start-up profile: read ahead only over
		// the profile's chunks, which the prefetch would fetch anyway (a
		// reader that outruns the prefetch gets them in its own order,
		// in large requests), never past what start-up read.
		for k := from; k < to; k++ {
			if !r.inProfile(l, k) {
				to = k
				break
			}
		}
	}
	// Queue in batches of at least half the window (or up to the end of the
	// file): one large coalesced request costs the registry and the fetcher
	// less than many small ones for the same bytes.
	if from >= to || (to-from < window/2 && to < end && s.raEnd > last) {
		unlock()
		return
	}
	s.raEnd = to
	unlock()
	// Split into jobs of at most raJobBytes, which the prefetch workers
	// fetch in parallel: parallel range requests across one big file,
	// whatever the fetcher does within one call.
	step := max(1, h.jobBytes(e)/max(1, int(l.toc.ChunkSize)))
	paced := h.bigFile(e)
	for i := from; i < to; i += step {
		if !r.queuePrefetch(prefetchJob{l: l, first: i, last: min(i+step, to), path: e.Name, paced: paced}) {
			h.mu.Lock()
			s.win = max(initialWindow, s.win/2)
			s.raEnd = min(s.raEnd, i)
			w := s.win
			h.mu.Unlock()
			r.logWindow(e.Name, w, last, "back off: read-ahead queue full")
			return
		}
	}
}

// logWindow logs, at debug level, a stream's new read-ahead window (chunks,
// and the chunk the reader had reached): with the log's times it shows the
// ramp-up and the back-off (docs/fs.md, "Thirteenth session").
func (r *Root) logWindow(path string, chunks, at int, why string) {
	if r.log.Enabled(r.ctx, slog.LevelDebug) {
		r.log.Debug("read-ahead window", "path", path, "chunks", chunks, "at_chunk", at, "why", why)
	}
}

// slowLinkJobs bounds the background fetches running at once on a slow
// link without a profile (runPrefetch). Measured with `lazyfs bench --mode
// mount -n 3 --link 200mbit`, one build per variant in one session: torch
// 6.89, 7.11 and 6.85 s with 2 against 7.20 and 7.15 s with all 8 workers,
// 7.03 s with 4; reading all of /usr 4.19 against 4.30 s.
const slowLinkJobs = 2

// raJobBytes bounds one read-ahead job, so that one job is one range
// request: the window goes out in jobs that the prefetch workers fetch in
// parallel, as many as it holds, and a window grows while the reader still
// waits for the network, so a link whose connections are each slower than
// the link gets more requests in flight.
const raJobBytes = 4 << 20

// A big file (bigFile) is read in jobs of bigRAJobBytes, fs/remote's
// default request bound, in windows of up to bigFileWindow × ReadAhead
// chunks: such a file (model weights, a dataset) is read far, its window
// must cover the link's bandwidth × round trip (25 MB at 10 Gbit/s and
// 20 ms), and the registry's cost is per request as much as per byte. Cold
// `cat` of a 1 GiB file on loopback (bench/scripts/cold-read.sh, one run, 5
// rounds, medians): 4 MiB jobs 2.39 s and 1.76 s of the registry's CPU,
// 16 MiB jobs 2.21 s and 1.31 s, 16 MiB jobs in windows of up to 64 MiB
// 2.08 s and 1.17 s. Other files keep 4 MiB jobs: `import torch` without a
// profile at 1 Gbit/s (`lazyfs bench --mode mount -n 3`, builds
// interleaved), 16 MiB jobs everywhere 5.00 and 4.82 s, 16 MiB only in big
// files 4.70 and 4.62 s, and 4 MiB everywhere (before the CPU savings that
// came with it) 5.19 and 5.09 s.
const (
	bigRAJobBytes = 16 << 20
	bigFileWindow = 2
)

// bigFile reports whether the stream's file gets big-file read-ahead: at
// least bulkMinSize bytes and not a shared library (a program uses a small
// part of a big library), on a link that has shown itself fast (a fetch of
// ≥ 1 MiB at ≥ slowLinkRate). On a slow link, or before any such fetch, a
// 16 MiB request shared with three others could outlast the fetch deadline
// (60 s: 1.1 MB/s of link for four), and it saves nothing where the link,
// not the registry, is the limit.
func (h *handle) bigFile(e *toc.Entry) bool {
	return !h.lib && e.Size >= bulkMinSize && h.r.link.max.Load() >= slowLinkRate
}

// jobBytes returns the bytes of one read-ahead job in file e.
func (h *handle) jobBytes(e *toc.Entry) int {
	if h.bigFile(e) {
		return bigRAJobBytes
	}
	return raJobBytes
}

// maxWindow returns the largest read-ahead window, in chunks, of a stream in
// file e.
func (h *handle) maxWindow(e *toc.Entry) int {
	if h.bigFile(e) {
		return bigFileWindow * h.r.opts.ReadAhead
	}
	return h.r.opts.ReadAhead
}

// dataEntry returns the layer and entry holding node d's contents.
func (t *tree) dataEntry(d uint32) (*layer, *toc.Entry) {
	n := &t.nodes[d]
	l := t.layers[n.layer]
	return l, &l.toc.Entries[n.entry]
}

type chunkKey struct {
	l *layer
	i int
}

// readFile reads node d's contents at off into dest. It returns the number
// of bytes read, the index after the last chunk it used, and whether it had
// to fetch any. With spliced non-nil, a read served by splice (spliceRead)
// sets *spliced instead of filling dest.
func (r *Root) readFile(ctx context.Context, d uint32, dest []byte, off int64, spliced *fuse.ReadResult) (int, int, bool, syscall.Errno) {
	r.stats.reads.Add(1)
	l, e := r.t.dataEntry(d)
	if off < 0 {
		return 0, 0, false, syscall.EINVAL
	}
	if off >= e.Size || len(dest) == 0 {
		return 0, 0, false, 0
	}
	n := int(min(int64(len(dest)), e.Size-off))
	if e.Flags&toc.FlagSparse != 0 {
		if e.Flags&toc.FlagSparseMap == 0 {
			// A sparse file in a TOC from before sparse maps: its data
			// is not chunked, so it cannot be served.
			r.reportEIO(chunkKey{l, -1 - int(d)}, e.Name, -1, fmt.Errorf("%w: sparse file is not chunked", ErrChunkUnavailable))
			return 0, 0, false, syscall.EIO
		}
		return r.readSparse(ctx, l, e, dest[:n], off)
	}
	if e.NumChunks == 0 {
		r.reportEIO(chunkKey{l, -1 - int(d)}, e.Name, -1, fmt.Errorf("%w: file has no chunks", ErrChunkUnavailable))
		return 0, 0, false, syscall.EIO
	}
	t := l.toc
	first, last := t.ChunkRange(e, off, int64(n))
	if r.opts.OnRead != nil {
		r.opts.OnRead(ReadEvent{Layer: l.index, Path: e.Name, Offset: off, Size: int64(n), FirstChunk: first, LastChunk: last})
	}
	base := t.Chunks[e.FirstChunk].Offset
	if spliced != nil {
		if *spliced = r.spliceRead(ctx, t, first, last, base, off, n); *spliced != nil {
			for i := first; i < last; i++ {
				r.nb.read(t.Chunks[i].Sum)
			}
			r.stats.hits.Add(int64(last - first))
			r.stats.bytesRead.Add(int64(n))
			return n, last, false, 0
		}
	}
	fetched, errno := r.readChunks(ctx, l, e, first, last, dest[:n], off)
	if errno != 0 {
		return 0, 0, false, errno
	}
	r.stats.bytesRead.Add(int64(n))
	return n, last, fetched, 0
}

// readChunks fills dest with entry e's stored bytes from off (the file's
// bytes; a sparse file's regions, one after the other), which chunks
// [first, last) hold, from the cache or the network, and reports whether
// it fetched any.
func (r *Root) readChunks(ctx context.Context, l *layer, e *toc.Entry, first, last int, dest []byte, off int64) (bool, syscall.Errno) {
	t := l.toc
	n := len(dest)
	base := t.Chunks[e.FirstChunk].Offset
	var missing []int
	for i := first; i < last; i++ {
		c := &t.Chunks[i]
		r.nb.read(c.Sum)
		if r.cacheRead(ctx, c, dest[:n], off, c.Offset-base) {
			r.stats.hits.Add(1)
			continue
		}
		missing = append(missing, i)
	}
	if len(missing) > 0 {
		r.stats.misses.Add(int64(len(missing)))
		if e.NumChunks == 1 && r.opts.NeighbourWindow > 0 {
			r.prefetchNeighbours(l, int(e.FirstChunk)+1, e.Name, r.inProfile(l, missing[0]))
		}
		failed, err := r.fetchShared(ctx, l, missing, func(i int, data []byte) {
			copyChunk(dest[:n], off, t.Chunks[i].Offset-base, data)
		}, func(i int) bool {
			c := &t.Chunks[i]
			return r.cacheRead(ctx, c, dest[:n], off, c.Offset-base)
		})
		if err != nil {
			if ctx.Err() != nil {
				r.stats.interrupted.Add(1)
				return false, syscall.EINTR
			}
			r.reportEIO(chunkKey{l, failed}, e.Name, failed, err)
			return false, syscall.EIO
		}
	}
	for i := first; i < last; i++ {
		c := &t.Chunks[i]
		coff := c.Offset - base
		if lo, hi := max(off, coff), min(off+int64(n), coff+int64(c.Size)); lo < hi {
			r.hot.served(c.Sum, hi-lo)
		}
	}
	return len(missing) > 0, 0
}

// readSparse reads the bytes [off, off+len(dest)) of the sparse file e
// (FlagSparseMap): zeros in its holes, its regions' bytes from its chunks.
// It returns what readFile does.
func (r *Root) readSparse(ctx context.Context, l *layer, e *toc.Entry, dest []byte, off int64) (int, int, bool, syscall.Errno) {
	rs := e.SparseMap()
	end := off + int64(len(dest))
	clear(dest)
	// The first region that ends after off, and where its bytes start
	// among the stored ones.
	i := sort.Search(len(rs), func(i int) bool { return rs[i].Offset+rs[i].Length > off })
	stored := l.sparseStart(e, i)
	var fetched bool
	last := int(e.FirstChunk)
	for ; i < len(rs) && rs[i].Offset < end; i++ {
		lo, hi := max(off, rs[i].Offset), min(end, rs[i].Offset+rs[i].Length)
		p := stored + lo - rs[i].Offset
		first, l2 := l.toc.ChunkRange(e, p, hi-lo)
		if r.opts.OnRead != nil {
			r.opts.OnRead(ReadEvent{Layer: l.index, Path: e.Name, Offset: lo, Size: hi - lo, FirstChunk: first, LastChunk: l2})
		}
		f, errno := r.readChunks(ctx, l, e, first, l2, dest[lo-off:hi-off], p)
		if errno != 0 {
			return 0, 0, false, errno
		}
		fetched = fetched || f
		last = l2
		stored += rs[i].Length
	}
	r.stats.bytesRead.Add(int64(len(dest)))
	return len(dest), last, fetched, 0
}

// copyChunk copies the part of a chunk at file offset coff that overlaps
// dest, which holds the file's bytes from off.
func copyChunk(dest []byte, off, coff int64, data []byte) {
	lo := max(off, coff)
	hi := min(off+int64(len(dest)), coff+int64(len(data)))
	if lo < hi {
		copy(dest[lo-off:hi-off], data[lo-coff:hi-coff])
	}
}

// cacheGetIntoer is the optional Cache method that reads a chunk into the
// caller's buffer (blobcache has it): a chunk a read covers whole then goes
// straight into the reader's buffer.
type cacheGetIntoer interface {
	GetInto(ctx context.Context, d digest.Digest, buf []byte) ([]byte, error)
}

// localRead is cacheRead after waiting, until ctx ends, for a fetch of c in
// flight: the background work that reads a chunk just fetched (a library's
// program headers and dynamic section) must not take a chunk a reader
// claimed, and is still fetching, for one that is not there. A loader reads
// a library's first chunk as soon as it opens it, often while the job
// queued at open waits for its turn; the job then skips that chunk and ends
// before it has arrived.
func (r *Root) localRead(ctx context.Context, c *toc.Chunk, dest []byte, off, coff int64) bool {
	if v, ok := r.inflight.Load(c.Sum); ok {
		ctx, cancel := context.WithTimeout(ctx, localWait)
		defer cancel()
		select {
		case <-v.(*flight).done:
		case <-ctx.Done():
			return false
		}
	}
	return r.cacheRead(ctx, c, dest, off, coff)
}

// localWait bounds localRead's wait for a flight (a fetch ends by its own
// deadline; this keeps a prefetch worker from waiting on it as long).
const localWait = 10 * time.Second

// cacheRead copies the part of chunk c (at file offset coff) that overlaps
// dest (the file's bytes from off) from the hot set or the cache, and
// reports a hit.
func (r *Root) cacheRead(ctx context.Context, c *toc.Chunk, dest []byte, off, coff int64) bool {
	if h := r.hot.get(c.Sum); h != nil {
		copyChunk(dest, off, coff, h.data)
		h.release()
		return true
	}
	gi, ok := r.opts.Cache.(cacheGetIntoer)
	if !ok {
		data, ok := r.cacheGet(ctx, c)
		if ok {
			copyChunk(dest, off, coff, data)
		}
		return ok
	}
	size := int64(c.Size)
	if coff >= off && coff+size <= off+int64(len(dest)) {
		buf := dest[coff-off : coff-off+size : coff-off+size]
		data, err := gi.GetInto(ctx, c.Digest(), buf)
		if err != nil || len(data) != int(size) {
			r.logCacheErr(ctx, c, err)
			return false
		}
		if &data[0] != &buf[0] {
			copy(buf, data)
		}
		return true
	}
	bp := r.bufs.Get().(*[]byte)
	defer r.bufs.Put(bp)
	data, err := gi.GetInto(ctx, c.Digest(), (*bp)[:0])
	if err != nil || len(data) != int(size) {
		r.logCacheErr(ctx, c, err)
		return false
	}
	if cap(data) > cap(*bp) {
		*bp = data[:0]
	}
	copyChunk(dest, off, coff, data)
	return true
}

func (r *Root) logCacheErr(ctx context.Context, c *toc.Chunk, err error) {
	if err != nil && ctx.Err() == nil && !isNotFound(err) {
		r.log.Debug("cache get", "chunk", c.Digest(), "error", err)
	}
}

func (r *Root) cacheGet(ctx context.Context, c *toc.Chunk) ([]byte, bool) {
	if r.opts.Cache == nil {
		return nil, false
	}
	data, err := r.opts.Cache.Get(ctx, c.Digest())
	if err != nil || len(data) != int(c.Size) {
		r.logCacheErr(ctx, c, err)
		return nil, false
	}
	return data, true
}

// isNotFound reports whether err is a plain miss (not worth a log line).
func isNotFound(err error) bool { return errors.Is(err, blobcache.ErrNotFound) }

func (r *Root) cacheHas(ctx context.Context, c *toc.Chunk) bool {
	if r.hot.has(c.Sum) {
		return true
	}
	switch ca := r.opts.Cache.(type) {
	case nil:
		return false
	case cacheHaser:
		ok, err := ca.Has(ctx, c.Digest())
		return err == nil && ok
	default:
		_, ok := r.cacheGet(ctx, c)
		return ok
	}
}

// fetch fetches chunks idx (indices into l's chunks) through l's fetcher,
// verifies each, puts it in the hot set and the cache, and then hands it to
// deliver (if not nil).
// On error it returns the index of a chunk that was not delivered.
func (r *Root) fetch(ctx context.Context, l *layer, idx []int, deliver func(i int, data []byte)) (int, error) {
	return r.fetchClaimed(ctx, l, idx, nil, false, func(k int, data []byte) {
		if deliver != nil {
			deliver(idx[k], data)
		}
	})
}

// fetchClaimed is fetch with deliver given k, the chunk's place in idx.
// With claim (background work: fetchBackground) the chunks are claimed as
// their requests start (ClaimingChunkFetcher), and one whose claim
// returned false is no error. A paced fetch's chunks wait for room in the
// cache writer's queue (queuePutWait).
func (r *Root) fetchClaimed(ctx context.Context, l *layer, idx []int, claim func(k int) bool, paced bool, deliver func(k int, data []byte)) (int, error) {
	chunks := make([]toc.Chunk, len(idx))
	for k, i := range idx {
		chunks[k] = l.toc.Chunks[i]
	}
	start := time.Now()
	got := make([]bool, len(idx))
	var claimed []bool // nil: all
	vf, ok := l.fetcher.(verifyingFetcher)
	trusted := ok && vf.VerifiesChunks()
	got1 := func(k int, data []byte, own bool) error {
		if k < 0 || k >= len(chunks) || claimed != nil && !claimed[k] {
			return fmt.Errorf("fetcher delivered chunk %d of %d, not claimed", k, len(chunks))
		}
		c := &chunks[k]
		if len(data) != int(c.Size) || (!trusted && sha256.Sum256(data) != c.Sum) {
			return fmt.Errorf("chunk %d (%s): %w", idx[k], c.Digest(), ErrChunkCorrupt)
		}
		r.stats.fetched.Add(1)
		r.stats.fetchedBytes.Add(int64(len(data)))
		var h *hotChunk
		if own {
			h = r.hot.adopt(c.Sum, data)
		} else {
			h = r.hot.add(c.Sum, data)
		}
		if h != nil && r.checksums {
			h.check, h.checked = blobcache.Checksum(data), true
		}
		deliver(k, data)
		switch {
		case h != nil && paced:
			h.aheadOfReaders()
			r.queuePutWait(ctx, h)
		case h != nil:
			r.queuePut(h)
		case own:
			r.hot.recycle(data) // the set had it already
		}
		got[k] = true
		return nil
	}
	var get func(int) []byte
	of, owned := l.fetcher.(OwnedChunkFetcher)
	if owned {
		get = r.hot.buf
	}
	var err error
	switch {
	case claim != nil:
		claimed = make([]bool, len(idx))
		mark := func(k int) bool {
			if k < 0 || k >= len(idx) || !claim(k) {
				return false
			}
			claimed[k] = true
			return true
		}
		if cf, ok := l.fetcher.(ClaimingChunkFetcher); ok {
			err = cf.FetchChunksClaimed(ctx, chunks, mark, get, got1)
		} else {
			err = FetchClaimedFirst(ctx, l.fetcher, chunks, mark, get, got1)
		}
	case owned:
		err = of.FetchChunksOwned(ctx, chunks, get, got1)
	default:
		err = l.fetcher.FetchChunks(ctx, chunks, func(k int, data []byte) error { return got1(k, data, false) })
	}
	if err == nil {
		for k := range got {
			if !got[k] && (claimed == nil || claimed[k]) {
				err = fmt.Errorf("chunk %d: %w: fetcher did not deliver it", idx[k], ErrChunkUnavailable)
				break
			}
		}
	}
	if err != nil {
		for k := range got {
			if !got[k] && (claimed == nil || claimed[k]) {
				return idx[k], err
			}
		}
		return idx[0], err
	}
	var compressed int64 // for the link's rate (noteFetch)
	for k := range got {
		if got[k] {
			compressed += int64(chunks[k].CompressedSize)
		}
	}
	if !r.pollLink(l.fetcher) {
		r.noteFetch(compressed, time.Since(start))
	}
	return 0, nil
}

// fetchBackground fetches chunks idx of l for background work (read-ahead,
// neighbour windows, libraries, profile prefetch, fill), claiming each only
// when the request that fetches it may start (ClaimingChunkFetcher): until
// then a reader that needs the chunk fetches it itself and the request
// skips it, so that no reader waits for background requests queued behind
// others for a request slot (many mounts share a node's fetcher). A chunk
// local by then (hot set or cache) is skipped, and skipped(i, nil) called;
// one another fetch has in flight is left to it, and skipped(i, its
// flight) called. skipped may be called from several goroutines at once.
// Each chunk's flight lands as soon as the chunk is in the hot set; got (if
// not nil) is called for each chunk fetched. It returns how many were.
func (r *Root) fetchBackground(ctx context.Context, l *layer, idx []int, paced bool, skipped func(i int, f *flight), got func(i int, data []byte)) (int64, error) {
	flights := make([]*flight, len(idx))
	landed := make([]bool, len(idx))
	skip := func(i int, f *flight) bool {
		if skipped != nil {
			skipped(i, f)
		}
		return false
	}
	claim := func(k int) bool {
		if flights[k] != nil {
			return true // its fetch is retried
		}
		c := &l.toc.Chunks[idx[k]]
		if r.hot.has(c.Sum) || r.cacheHas(ctx, c) {
			return skip(idx[k], nil)
		}
		f, mine := r.claim(c.Sum)
		if !mine {
			return skip(idx[k], f)
		}
		if r.hot.has(c.Sum) { // landed between the check and the claim
			r.land(l, idx[k:k+1], []*flight{f})
			return skip(idx[k], nil)
		}
		flights[k] = f
		return true
	}
	defer func() {
		for k, f := range flights {
			if f != nil && !landed[k] {
				r.land(l, idx[k:k+1], flights[k:k+1])
			}
		}
	}()
	var n atomic.Int64
	_, err := r.fetchClaimed(ctx, l, idx, claim, paced, func(k int, data []byte) {
		n.Add(1)
		if got != nil {
			got(idx[k], data)
		}
		// Land it now, not when the whole fetch ends: a reader waiting
		// for the first chunk of a 4 MiB job gets it after that chunk's
		// transfer, not the job's.
		landed[k] = true
		r.land(l, idx[k:k+1], flights[k:k+1])
	})
	return n.Load(), err
}

// flight is a fetch of one chunk in progress (by a reader or read-ahead);
// done is closed when it ends, successful or not. Others who need the chunk
// wait for it and then find it in the hot set, so that two readers of the
// same cold file fetch each chunk once.
type flight struct{ done chan struct{} }

// claim registers a fetch of the chunk with the given sum, or returns the
// one in progress (mine false).
func (r *Root) claim(sum [32]byte) (*flight, bool) {
	f := &flight{done: make(chan struct{})}
	v, loaded := r.inflight.LoadOrStore(sum, f)
	return v.(*flight), !loaded
}

// land ends the flights of chunks idx of l.
func (r *Root) land(l *layer, idx []int, fs []*flight) {
	for k, i := range idx {
		r.inflight.Delete(l.toc.Chunks[i].Sum)
		close(fs[k].done)
	}
}

// fetchShared fetches chunks idx of l like fetch, except those another
// reader or read-ahead is fetching already: it waits for those (until ctx
// ends) and takes them with take (from the hot set), fetching them itself
// only if they did not arrive.
func (r *Root) fetchShared(ctx context.Context, l *layer, idx []int, deliver func(i int, data []byte), take func(i int) bool) (int, error) {
	var mine, theirs []int
	var mf, tf []*flight
	for _, i := range idx {
		f, ok := r.claim(l.toc.Chunks[i].Sum)
		if ok {
			mine, mf = append(mine, i), append(mf, f)
		} else {
			theirs, tf = append(theirs, i), append(tf, f)
		}
	}
	if len(mine) > 0 {
		failed, err := r.fetch(ctx, l, mine, deliver)
		r.land(l, mine, mf)
		if err != nil {
			return failed, err
		}
	}
	var again []int
	for k, i := range theirs {
		select {
		case <-tf[k].done:
		case <-ctx.Done():
			return i, ctx.Err()
		}
		if !take(i) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		return r.fetch(ctx, l, again, deliver)
	}
	return 0, nil
}

// verifyingFetcher is implemented by fetchers that check every chunk's size
// and sha256 before delivering it (fs/remote does); fs then does not hash
// the chunk a second time. Other fetchers' chunks are verified here.
type verifyingFetcher interface {
	VerifiesChunks() bool
}

// cacheVerifiedPutter is the optional Cache method that stores a chunk
// without hashing it again (blobcache has it): fetch has just verified it.
// Unlike Put, PutVerified must not keep data after it returns (blobcache's
// contract: "Put does not keep data"): it is a recycled buffer.
type cacheVerifiedPutter interface {
	PutVerified(ctx context.Context, d digest.Digest, data []byte) error
}

// cacheChecksumPutter is the optional Cache method (blobcache has it) that
// takes the record checksum (blobcache.Checksum) along: fetch computes it
// while a chunk's bytes are in the CPU's cache (cold read of 1 GiB: 0.04 s
// of CPU there against 0.26 s in the cache writer). Like PutVerified it
// does not keep data.
type cacheChecksumPutter interface {
	PutVerifiedChecksum(ctx context.Context, d digest.Digest, data []byte, sum uint32) error
}

// queuePut queues hot chunk h (a verified chunk just put into the hot set,
// where reads find it; the caller's hold passes to the queue) for the cache
// writer. It never waits for the cache: when the writer's queue is full
// (the cache's write path is slower than the network) the chunk is served
// from the hot set and not cached (Stats.CacheSkipped); a later read of it
// fetches it again.
func (r *Root) queuePut(h *hotChunk) {
	if r.opts.Cache == nil || r.ctx.Err() != nil {
		h.release()
		return
	}
	r.queued.Add(1)
	select {
	case r.puts <- h:
	default:
		r.queued.Add(-1)
		r.stats.cacheSkipped.Add(1)
		h.release()
	}
}

// queuePutWait is queuePut for chunks fetched far ahead of any reader
// (paced jobs: read-ahead in a big file, its bulk fill, the fill after a
// profile): while the writer's queue is three quarters full (bgWriteQueue) and the writer is making
// progress, it waits (until ctx ends) instead of dropping the chunk; the
// last quarter is left to chunks fetched for readers. A prefetched chunk
// that is not cached is lost once the hot set lets it go, and the read
// that needed it fetches it again: an mmap loader's cold read of 1 GiB
// dropped 600 of 4,096 chunks and fetched 596 twice (its streams'
// read-ahead and the bulk fill run far ahead of where it reads next).
// Waiting holds the background request, and so slows background fetching
// to the cache's pace. A reader waiting for a chunk of that request waits
// at most for the writer to take a few chunks: a writer stuck on one chunk
// for writerStall (a disk that stopped) is not waited for.
func (r *Root) queuePutWait(ctx context.Context, h *hotChunk) {
	for r.queued.Load() >= bgWriteQueue && !r.writerStuck() && ctx.Err() == nil {
		r.roomWaiters.Add(1)
		r.roomMu.Lock()
		room := r.room
		r.roomMu.Unlock()
		if r.queued.Load() >= bgWriteQueue { // the writer signals after this check
			t := time.NewTimer(writerStall)
			select {
			case <-room:
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		r.roomWaiters.Add(-1)
	}
	r.queuePut(h)
}

// roomMade wakes the background fetches waiting for room in the writer's
// queue (queuePutWait), if there is room now.
func (r *Root) roomMade() {
	if r.roomWaiters.Load() == 0 || r.queued.Load() >= bgWriteQueue {
		return
	}
	r.roomMu.Lock()
	close(r.room)
	r.room = make(chan struct{})
	r.roomMu.Unlock()
}

// writerStall is how long the cache writer may spend on one chunk before
// background fetches stop waiting for it (queuePutWait).
const writerStall = 250 * time.Millisecond

// writerStuck reports whether the cache writer has been writing one chunk
// for writerStall or more.
func (r *Root) writerStuck() bool {
	s := r.putStart.Load()
	return s != 0 && time.Since(time.Unix(0, s)) >= writerStall
}

func (r *Root) put(h *hotChunk) {
	r.putStart.Store(time.Now().UnixNano())
	defer r.roomMade()
	defer r.putStart.Store(0)
	defer r.queued.Add(-1)
	defer h.release()
	d := digest.NewDigestFromBytes(digest.SHA256, h.sum[:])
	var err error
	if cp, ok := r.opts.Cache.(cacheChecksumPutter); ok && h.checked {
		err = cp.PutVerifiedChecksum(r.ctx, d, h.data, h.check) // does not keep h.data
	} else if vp, ok := r.opts.Cache.(cacheVerifiedPutter); ok {
		err = vp.PutVerified(r.ctx, d, h.data) // does not keep h.data
	} else {
		// Cache.Put may keep its slice; the hot set's buffer is recycled.
		err = r.opts.Cache.Put(r.ctx, d, bytes.Clone(h.data))
	}
	if err != nil {
		if r.ctx.Err() == nil {
			r.stats.cacheErrors.Add(1)
			r.log.Debug("cache put", "chunk", d, "error", err)
		}
		return
	}
	h.stored()
}

// FlushCache waits until every fetched chunk queued for the cache has been
// written (or ctx ends).
func (r *Root) FlushCache(ctx context.Context) error {
	for r.queued.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// cacheWriter writes queued chunks into the cache until the Root closes;
// chunks still queued then are dropped (the cache is only a cache).
func (r *Root) cacheWriter() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			for {
				select {
				case h := <-r.puts:
					h.release()
					r.queued.Add(-1)
				default:
					return
				}
			}
		case h := <-r.puts:
			r.put(h)
		}
	}
}

// reportEIO counts a failed read and logs it once per chunk.
func (r *Root) reportEIO(k chunkKey, path string, chunk int, err error) {
	r.stats.eio.Add(1)
	if _, dup := r.reported.LoadOrStore(k, struct{}{}); dup {
		return
	}
	attrs := []any{"layer", k.l.name, "path", path, "chunk", chunk, "error", err}
	if chunk >= 0 {
		c := &k.l.toc.Chunks[chunk]
		attrs = append(attrs, "digest", c.Digest().String(), "offset", c.CompressedOffset, "size", c.CompressedSize)
	}
	r.log.Error("read failed: EIO", attrs...)
}

// prefetchNeighbours queues the chunks from index from on (in blob order,
// across files) up to NeighbourWindow compressed bytes, for the read-ahead
// workers to fetch into the cache in parallel with the read that missed.
//
// For a miss of a chunk the start-up profile names (inProfile), the window
// ends at the first chunk the profile does not name: the reader is ahead of
// the prefetch, and the chunks after it that start-up reads are the ones to
// bring, in one request, never those it did not read.
//
// Otherwise the window crosses into the chunks of big files (more than one
// chunk) and shared libraries only while such chunks that earlier windows
// brought turn out to be read (neighbourUse): a program reading the whole
// tree reads them next, and one request for them saves a round trip per
// file (reading all of /usr: 264 requests against 662 when windows always
// stop there); an import mostly does not (torch: 28 MB of libraries came in
// windows), and the loader fetches the libraries it opens itself
// (prefetchLibrary). So do Python sources compiled beside them (layer.src)
// while the link is not judged, neither known slow nor shown fast: they
// are bytes an import does not read, which a link nothing is known of may
// not afford, but a shorter window costs round trips. Measured (import
// torch and numpy, builds interleaved): with the sources always treated
// so, numpy at 200 Mbit/s 1.05-1.13 s against 1.15-1.21 s (its start ends
// before the link is judged), but torch at 200 Mbit/s slower in six pairs
// of six (+0.03 to +0.26 s) and at 1 Gbit/s 5.03, 5.05 s against 4.90,
// 4.92 s; until the link is judged, torch 6.26, 6.54 s against 6.87, 6.29 s
// at 200 Mbit/s and 4.67, 4.51 s against 4.68, 4.76 s (always) at 1 Gbit/s.
func (r *Root) prefetchNeighbours(l *layer, from int, path string, inProfile bool) {
	chunks := l.toc.Chunks
	cross := !inProfile && r.nb.crossing()
	to := from
	window := r.opts.NeighbourWindow * r.farScale()
	judged := r.link.slow.Load() || r.link.max.Load() >= slowLinkRate
	for sum := int64(0); to < len(chunks) && sum < window; to++ {
		if inProfile && !r.inProfile(l, to) || !inProfile && !cross && (l.isBig(to) || !judged && l.isSource(to)) {
			break
		}
		sum += int64(chunks[to].CompressedSize)
	}
	if to > from && r.queuePrefetch(prefetchJob{l: l, first: from, last: to, path: path}) {
		r.stats.neighbourJobs.Add(1)
		if cross {
			for i := from; i < to; i++ {
				if l.isBig(i) || l.isSource(i) {
					r.nb.brought(chunks[i].Sum)
				}
			}
		}
	}
}

// neighbourUse tracks whether the chunks of big files that neighbour
// windows bring are then read. Windows cross into big files once at least
// neighbourMinSample such chunks were brought and 3/4 of them read (reading
// all of /usr reads ~95% of them; import torch 45%, import numpy 56%); until
// then, and while fewer are read, every neighbourProbe-th window crosses
// anyway to gather the evidence.
type neighbourUse struct {
	mu             sync.Mutex
	pending        map[[32]byte]struct{} // brought, not yet read (bounded)
	n              atomic.Int32          // len(pending), read without the lock
	nbrought, used atomic.Int64
	windows        atomic.Int64 // windows that did not cross
}

const (
	neighbourMinSample = 16
	neighbourProbe     = 8
	neighbourPending   = 1 << 14
)

func (u *neighbourUse) crossing() bool {
	if b := u.nbrought.Load(); b >= neighbourMinSample && 4*u.used.Load() >= 3*b {
		return true
	}
	return u.windows.Add(1)%neighbourProbe == 1
}

func (u *neighbourUse) brought(sum [32]byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pending == nil {
		u.pending = map[[32]byte]struct{}{}
	}
	if _, ok := u.pending[sum]; ok || len(u.pending) >= neighbourPending {
		return
	}
	u.pending[sum] = struct{}{}
	u.n.Store(int32(len(u.pending)))
	u.nbrought.Add(1)
}

// read notes a read of the chunk with the given sum.
func (u *neighbourUse) read(sum [32]byte) {
	if u.n.Load() == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.pending[sum]; ok {
		delete(u.pending, sum)
		u.n.Store(int32(len(u.pending)))
		u.used.Add(1)
	}
}

// prefetchJob asks for chunks [first, last) of l to be fetched into the cache.
type prefetchJob struct {
	l           *layer
	first, last int
	path        string
	done        func() // called when the job ends (may be nil)
	// paced: the job's chunks wait for room in the cache writer's queue
	// rather than being dropped (queuePutWait): read-ahead in a big file
	// and its bulk fill.
	paced bool
}

// queuePrefetch queues a job unless the queue is full or the Root closed.
func (r *Root) queuePrefetch(j prefetchJob) bool {
	if r.prefetch == nil || r.ctx.Err() != nil || r.opts.Cache == nil {
		return false
	}
	select {
	case r.prefetch <- j:
		return true
	default:
		return false
	}
}

func (r *Root) prefetcher() {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case j := <-r.prefetch:
			r.runPrefetch(j)
			if j.done != nil {
				j.done()
			}
		}
	}
}

func (r *Root) runPrefetch(j prefetchJob) {
	// Wait for room in the cache's write queue before claiming anything: a
	// reader that needs one of these chunks meanwhile fetches it itself.
	if !r.waitQueueRoom(r.bgctx, j.last-j.first) {
		return
	}
	if r.link.slow.Load() && !r.lean() {
		// On a slow link one range request fills it, and every other one
		// in flight takes a share of the link (TCP shares it by
		// connection) from the readers blocked on a miss: without a
		// profile, at most slowLinkJobs background fetches run at once.
		// The token comes before the chunks are claimed: a job waiting
		// for one holds no chunk a reader would then wait for.
		select {
		case r.slowJobs <- struct{}{}:
			defer func() { <-r.slowJobs }()
		case <-r.bgctx.Done():
			return
		}
	}
	var todo []int
	for i := j.first; i < j.last; i++ {
		if !r.cacheHas(r.bgctx, &j.l.toc.Chunks[i]) {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return
	}
	n, err := r.fetchBackground(r.bgctx, j.l, todo, j.paced, nil, nil)
	r.stats.prefetched.Add(n)
	if err != nil && r.ctx.Err() == nil {
		r.log.Debug("read-ahead failed", "layer", j.l.name, "path", j.path, "error", err)
	}
}

// Prefetch fetches every chunk of the regular file at path (relative to the
// root, as the mount shows it) that the cache lacks into the cache, and
// returns when they are there or the first error.
func (r *Root) Prefetch(ctx context.Context, path string) error {
	if r.opts.Cache == nil {
		return fmt.Errorf("prefetch %s: %w: no cache", path, ErrBadOptions)
	}
	i := uint32(0)
	for _, c := range strings.Split(path, "/") {
		if c == "" || c == "." {
			continue
		}
		var ok bool
		if i, ok = r.t.child(i, c); !ok {
			return fmt.Errorf("prefetch %s: %w", path, os.ErrNotExist)
		}
		i = r.t.nodes[i].data
	}
	if r.t.mode(i)&syscall.S_IFMT != syscall.S_IFREG {
		return fmt.Errorf("prefetch %s: not a regular file", path)
	}
	l, e := r.t.dataEntry(i)
	var todo []int
	for c := int(e.FirstChunk); c < int(e.FirstChunk+e.NumChunks); c++ {
		if !r.cacheHas(ctx, &l.toc.Chunks[c]) {
			todo = append(todo, c)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if _, err := r.fetch(ctx, l, todo, nil); err != nil {
		return fmt.Errorf("prefetch %s: layer %s: %w", path, l.name, err)
	}
	r.stats.prefetched.Add(int64(len(todo)))
	return nil
}
