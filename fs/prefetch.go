package fs

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lazyfs/lazyfs/blobcache"
)

// ChunkSpan is the run of chunks [First, Last) of layer Layer (an index into
// the layers given to NewRoot and into that layer's TOC.Chunks).
type ChunkSpan struct {
	Layer, First, Last int
}

// PrefetchOptions configures StartPrefetch. The zero value is usable.
type PrefetchOptions struct {
	// Workers bounds the profile's batches fetched at once (default
	// DefaultProfileWorkers).
	Workers int
	// MaxBatch bounds the compressed bytes of one batch, from its first
	// chunk's frame to its last: a batch is a run of the profile's chunks
	// lying together in a layer's blob (gaps up to MaxGap), fetched with one
	// FetchChunks call, which a coalescing fetcher (fs/remote) turns into
	// one range request (N contiguous chunks: about N / (chunks per
	// MaxBatch) requests). Batches go in the order of the earliest profile
	// position of their chunks. Default DefaultMaxBatch.
	MaxBatch int64
	// MaxGap is the most compressed bytes between two chunks of one batch
	// (default DefaultMaxGap, fs/remote's own bound: a gap is fetched and
	// dropped). 0 means the default; negative, no gaps.
	MaxGap int64
	// Fill, after the profile, fetches every other chunk of the image that
	// the cache lacks, in blob order, with FillWorkers batches at a time
	// (default DefaultFillWorkers). Fill yields to the workload (before each
	// batch it waits, up to a second, until READs pause for 50 ms) and
	// stops before the cache would evict: when
	// the cache reports its Stats (blobcache does) and the next batch does
	// not fit in its free capacity, or it has evicted since fill started.
	Fill        bool
	FillWorkers int
	// OnDone, if set, is called once when the prefetch ends (completed,
	// stopped, or the Root closed).
	OnDone func(PrefetchStats)
}

// Defaults of PrefetchOptions.
const (
	DefaultProfileWorkers = 4
	DefaultFillWorkers    = 2
	DefaultMaxBatch       = 4 << 20
	DefaultMaxGap         = 64 << 10
)

// PrefetchStats report how much of a profile and of the image is local.
type PrefetchStats struct {
	// ProfileChunks are the chunks the profile names (valid, distinct);
	// ProfileLocal those now in the cache (found there or fetched).
	ProfileChunks int64 `json:"profileChunks"`
	ProfileLocal  int64 `json:"profileLocal"`
	// ImageChunks are all chunks of the image's layers; ImageLocal those
	// known to be in the cache (counted when the fill scans the image,
	// and as the profile and fill fetch).
	ImageChunks int64 `json:"imageChunks"`
	ImageLocal  int64 `json:"imageLocal"`
	// Batches counts FetchChunks calls made by the prefetch, FetchedBytes the
	// uncompressed bytes they delivered, Failed the chunks that could not be
	// fetched (foreground reads will try them again).
	Batches      int64 `json:"batches"`
	FetchedBytes int64 `json:"fetchedBytes"`
	Failed       int64 `json:"failed"`
	// Ignored counts spans dropped because the image lacks their chunks.
	Ignored int64 `json:"ignored"`
	// Phase is "profile", "fill", "done" or "stopped"; FillStopped says why
	// the fill ended early ("" if it did not).
	Phase       string `json:"phase"`
	FillStopped string `json:"fillStopped,omitempty"`
}

// Prefetcher is a running profile prefetch (and fill) of a Root. It stops by
// itself when done, when Stop is called, or when the Root closes.
type Prefetcher struct {
	r      *Root
	o      PrefetchOptions
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	profileChunks, profileLocal atomic.Int64
	imageChunks, imageLocal     atomic.Int64
	batches, fetchedBytes       atomic.Int64
	failed, ignored             atomic.Int64
	reserved                    atomic.Int64 // uncompressed bytes of fill batches queued or in flight
	meanChunk                   int64        // mean uncompressed chunk size of the image
	phase                       atomic.Value // string
	fillStopped                 atomic.Value // string

	mu    sync.Mutex
	local [][]uint64 // per layer, a bit per chunk known to be cached
	named [][]uint64 // per layer, a bit per chunk the profile names (read-only once started)
}

// scan marks the chunks already cached, so that ImageLocal starts true.
func (p *Prefetcher) scan() {
	for _, l := range p.r.t.layers {
		for i := range l.toc.Chunks {
			if p.ctx.Err() != nil {
				return
			}
			if p.r.cacheHas(p.ctx, &l.toc.Chunks[i]) {
				p.markLocal(l, i)
			}
		}
	}
}

func (p *Prefetcher) markLocal(l *layer, i int) {
	p.mu.Lock()
	if w := &p.local[l.index][i/64]; *w&(1<<(i%64)) == 0 {
		*w |= 1 << (i % 64)
		p.imageLocal.Add(1)
	}
	p.mu.Unlock()
}

func (p *Prefetcher) isLocal(l *layer, i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.local[l.index][i/64]&(1<<(i%64)) != 0
}

// batch is a set of chunks of one layer, fetched with one FetchChunks call.
type batch struct {
	l       *layer
	idx     []int
	profile bool
	reserve int64 // bytes counted in Prefetcher.reserved until fetched
}

// StartPrefetch starts fetching the chunks of spans into the cache, in
// order, in batches of up to MaxBatch compressed bytes with Workers batches
// in flight, then (with Fill) the rest of the image. Spans naming layers or
// chunks the Root lacks are ignored (counted in PrefetchStats.Ignored and
// logged once); chunks already cached or named twice are skipped. Foreground
// reads never wait for the queue: they fetch what they miss themselves, and
// the prefetch then finds those chunks cached. Background fetches run under
// Options.PrefetchContext (fs/image marks them low-priority for the
// registry fetcher, whose per-chunk singleflight makes a read of a chunk the
// prefetch is fetching wait for that fetch). It needs a cache.
func (r *Root) StartPrefetch(spans []ChunkSpan, o PrefetchOptions) (*Prefetcher, error) {
	if r.opts.Cache == nil {
		return nil, fmt.Errorf("prefetch: %w: no cache", ErrBadOptions)
	}
	if o.Workers <= 0 {
		o.Workers = DefaultProfileWorkers
	}
	if o.FillWorkers <= 0 {
		o.FillWorkers = DefaultFillWorkers
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	switch {
	case o.MaxGap == 0:
		o.MaxGap = DefaultMaxGap
	case o.MaxGap < 0:
		o.MaxGap = 0
	}
	p := &Prefetcher{r: r, o: o, done: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(r.bgctx)
	p.phase.Store("profile")
	p.fillStopped.Store("")
	p.local = make([][]uint64, len(r.t.layers))
	var size int64
	for i, l := range r.t.layers {
		p.imageChunks.Add(int64(len(l.toc.Chunks)))
		p.local[i] = make([]uint64, (len(l.toc.Chunks)+63)/64)
		size += l.toc.TarSize
	}
	p.meanChunk = size / max(p.imageChunks.Load(), 1)
	batches := p.profileBatches(spans)
	if p.profileChunks.Load() > 0 {
		r.profileStarted(p.named)
	}
	if !r.spawn(func() { p.run(batches) }) {
		p.cancel()
		return nil, fmt.Errorf("prefetch: %w", ErrClosed)
	}
	return p, nil
}

// profileBatches validates spans, drops repeated chunks and cuts the rest
// into batches: runs of chunks lying together in a layer's blob (gaps up to
// MaxGap, at most MaxBatch compressed bytes and maxBatchChunks chunks from
// the first to the last), formed over the whole profile and fetched in the
// order of the earliest profile position in each. A start-up reads scattered
// parts of its libraries, so a window of the profile in its own order holds
// few neighbours; over the whole profile the same chunks coalesce into a
// third of the requests (import torch: 1,155 requests for 87 MB with 1 MiB
// windows, 320 for 86 MB as runs; docs/fs.md), and each request costs the
// registry and the link a round trip.
func (p *Prefetcher) profileBatches(spans []ChunkSpan) []batch {
	r := p.r
	seen := make([][]uint64, len(r.t.layers))
	type named struct{ i, pos int }
	perLayer := make([][]named, len(r.t.layers))
	pos := 0
	for _, s := range spans {
		if s.Layer < 0 || s.Layer >= len(r.t.layers) || s.First < 0 || s.First >= s.Last || s.Last > len(r.t.layers[s.Layer].toc.Chunks) {
			if p.ignored.Add(1) == 1 {
				r.log.Warn("profile names chunks the image lacks: ignoring them", "layer", s.Layer, "chunks", fmt.Sprintf("%d-%d", s.First, s.Last))
			}
			continue
		}
		l := r.t.layers[s.Layer]
		if seen[s.Layer] == nil {
			seen[s.Layer] = make([]uint64, (len(l.toc.Chunks)+63)/64)
		}
		bits := seen[s.Layer]
		for i := s.First; i < s.Last; i++ {
			if bits[i/64]&(1<<(i%64)) != 0 {
				continue
			}
			bits[i/64] |= 1 << (i % 64)
			perLayer[s.Layer] = append(perLayer[s.Layer], named{i, pos})
			pos++
			p.profileChunks.Add(1)
		}
	}
	type run struct {
		b     batch
		first int // earliest profile position of its chunks
	}
	var runs []run
	for li, ns := range perLayer {
		if len(ns) == 0 {
			continue
		}
		l := r.t.layers[li]
		chunks := l.toc.Chunks
		// Chunk indices are in blob order (the TOC's frames increase).
		slices.SortFunc(ns, func(a, b named) int { return a.i - b.i })
		var cur run
		var start, end int64
		for _, n := range ns {
			c := &chunks[n.i]
			o, e := c.CompressedOffset, c.CompressedOffset+int64(c.CompressedSize)
			if len(cur.b.idx) > 0 && o-end <= p.o.MaxGap && e-start <= p.o.MaxBatch && len(cur.b.idx) < maxBatchChunks {
				cur.b.idx = append(cur.b.idx, n.i)
				cur.first = min(cur.first, n.pos)
				end = e
				continue
			}
			if len(cur.b.idx) > 0 {
				runs = append(runs, cur)
			}
			cur = run{b: batch{l: l, idx: []int{n.i}, profile: true}, first: n.pos}
			start, end = o, e
		}
		runs = append(runs, cur)
	}
	slices.SortFunc(runs, func(a, b run) int { return a.first - b.first })
	out := make([]batch, len(runs))
	for i := range runs {
		out[i] = runs[i].b
	}
	for i := range seen {
		if seen[i] == nil {
			seen[i] = make([]uint64, (len(r.t.layers[i].toc.Chunks)+63)/64)
		}
	}
	p.named = seen
	return out
}

// maxBatchChunks bounds the chunks of one profile batch, below the cache
// writer's queue (writeQueue), which a batch waits to have room for.
const maxBatchChunks = writeQueue / 2

func (p *Prefetcher) run(profile []batch) {
	defer func() {
		p.cancel()
		if p.phase.Load() != "done" {
			p.phase.Store("stopped")
		}
		close(p.done)
		if p.o.OnDone != nil {
			p.o.OnDone(p.Stats())
		}
	}()
	p.scan()
	p.runBatches(p.o.Workers, func(yield func(batch) bool) {
		for _, b := range profile {
			if !yield(b) {
				return
			}
		}
	})
	if p.ctx.Err() != nil {
		return
	}
	if p.o.Fill {
		p.phase.Store("fill")
		p.fill()
		if p.ctx.Err() != nil {
			return
		}
	}
	p.phase.Store("done")
}

// farLinkWorkers multiplies the batches in flight on a far link (farLink):
// there each batch waits a round trip that carries more than the batch
// itself, so a few in flight leave the link idle between them.
const farLinkWorkers = 4

// runBatches fetches the batches next yields with up to workers at once,
// farLinkWorkers times as many once the link is known far.
func (p *Prefetcher) runBatches(workers int, next func(yield func(batch) bool)) {
	ch := make(chan batch)
	var wg sync.WaitGroup
	var running atomic.Int32
	var work func()
	work = func() {
		defer wg.Done()
		for b := range ch {
			p.fetchBatch(b)
			if n := running.Load(); p.r.farLink() && int(n) < farLinkWorkers*workers && running.CompareAndSwap(n, n+1) {
				wg.Add(1)
				go work()
			}
		}
	}
	for range workers {
		running.Add(1)
		wg.Add(1)
		go work()
	}
	next(func(b batch) bool {
		select {
		case ch <- b:
			return true
		case <-p.ctx.Done():
			return false
		}
	})
	close(ch)
	wg.Wait()
}

// fetchBatch fetches the chunks of b that are neither cached nor being
// fetched by a reader, read-ahead or another batch; for those in flight it
// waits for that fetch (as a reader would) instead of fetching them again.
// Each chunk is claimed only when its request may start (fetchBackground).
func (p *Prefetcher) fetchBatch(b batch) {
	r := p.r
	defer p.reserved.Add(-b.reserve)
	landed := func(i int) {
		p.markLocal(b.l, i)
		if b.profile {
			p.profileLocal.Add(1)
		}
	}
	// Run no faster than the cache stores what the prefetch fetches (a
	// chunk the cache writer had no room for would be served once and
	// lost), and wait before claiming: a reader that needs a chunk must
	// never wait for a claimed flight stuck behind the cache writer.
	if !r.waitQueueRoom(p.ctx, len(b.idx)) {
		return
	}
	var todo []int
	for _, i := range b.idx {
		if r.cacheHas(p.ctx, &b.l.toc.Chunks[i]) {
			landed(i)
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return
	}
	var mu sync.Mutex
	var busy []int
	var theirs []*flight
	var local atomic.Int64
	skipped := func(i int, f *flight) {
		if f == nil {
			local.Add(1)
			landed(i)
			return
		}
		mu.Lock()
		busy, theirs = append(busy, i), append(theirs, f)
		mu.Unlock()
	}
	p.batches.Add(1)
	// Fill batches run far ahead of the workload and wait for the cache;
	// the profile's are needed soon, and readers take them from the hot
	// set whether or not the cache kept up.
	n, err := r.fetchBackground(p.ctx, b.l, todo, !b.profile, skipped, func(i int, data []byte) {
		p.fetchedBytes.Add(int64(len(data)))
		landed(i)
	})
	r.stats.prefetched.Add(n)
	if err != nil {
		p.failed.Add(int64(len(todo)-len(busy)) - n - local.Load())
		if p.ctx.Err() == nil {
			r.log.Warn("prefetch failed; reads will fetch the chunks themselves", "layer", b.l.name, "chunks", len(todo), "error", err)
		}
	}
	// Chunks another fetch had in flight (a reader, read-ahead, or a
	// chunk of the same content) are local once it landed, if it did.
	for k, i := range busy {
		select {
		case <-theirs[k].done:
		case <-p.ctx.Done():
			return
		}
		c := &b.l.toc.Chunks[i]
		if r.hot.has(c.Sum) || r.cacheHas(p.ctx, c) {
			landed(i)
		}
	}
}

// fill fetches every chunk of the image the cache lacks, layer by layer in
// blob order, until done, stopped, or the cache is about to evict.
func (p *Prefetcher) fill() {
	r := p.r
	room, hasRoom := r.opts.Cache.(cacheStatser)
	var evictions0 int64
	if hasRoom {
		evictions0 = room.Stats().Evictions
	}
	reads := int64(-1) // yield before the first batch too
	stop := func(why string) {
		p.fillStopped.Store(why)
		r.log.Info("background fill stopped", "reason", why)
	}
	p.runBatches(p.o.FillWorkers, func(yield func(batch) bool) {
		for _, l := range r.t.layers {
			var cur batch
			var curBytes, curSize int64
			emit := func() bool {
				if len(cur.idx) == 0 {
					return true
				}
				// Yield to the workload: wait while it keeps reading (each
				// fill batch costs CPU to decode, verify and store, on nodes
				// with few cores), but at most fillMaxYield per batch so a
				// busy server still gets its image filled.
				deadline := time.Now().Add(fillMaxYield)
				for m := r.stats.reads.Load(); m != reads && time.Now().Before(deadline); m = r.stats.reads.Load() {
					reads = m
					select {
					case <-p.ctx.Done():
						return false
					case <-time.After(fillQuiet):
					}
				}
				if hasRoom {
					st := room.Stats()
					if st.Evictions != evictions0 {
						stop(fmt.Sprintf("the cache evicted %d chunks", st.Evictions-evictions0))
						return false
					}
					if st.Capacity > 0 && st.Size+p.pendingBytes()+p.reserved.Load()+curSize > st.Capacity {
						stop(fmt.Sprintf("the cache is full (%d of %d bytes used)", st.Size, st.Capacity))
						return false
					}
				}
				cur.reserve = curSize
				p.reserved.Add(curSize)
				ok := yield(cur)
				if !ok {
					p.reserved.Add(-curSize)
				}
				cur, curBytes, curSize = batch{l: l}, 0, 0
				return ok
			}
			cur.l = l
			for i := range l.toc.Chunks {
				c := &l.toc.Chunks[i]
				if p.isLocal(l, i) {
					continue
				}
				if r.cacheHas(p.ctx, c) {
					p.markLocal(l, i)
					continue
				}
				if curBytes+int64(c.CompressedSize) > p.o.MaxBatch || len(cur.idx) >= maxBatchChunks {
					if !emit() {
						return
					}
				}
				cur.idx = append(cur.idx, i)
				curBytes += int64(c.CompressedSize)
				curSize += int64(c.Size)
			}
			if !emit() {
				return
			}
		}
	})
}

// The fill waits until the mount's READs have paused for fillQuiet, for at
// most fillMaxYield before each batch.
const (
	fillQuiet    = 50 * time.Millisecond
	fillMaxYield = time.Second
)

// pendingBytes estimates the bytes fetched but not yet written to the
// cache: the cache writer's queue, at the image's mean chunk size.
func (p *Prefetcher) pendingBytes() int64 {
	return p.r.queued.Load() * p.meanChunk
}

// cacheStatser is the optional Cache method fill uses to stop before the
// cache would evict (blobcache has it).
type cacheStatser interface {
	Stats() blobcache.Stats
}

// Stop stops the prefetch and waits until its fetches have ended.
func (p *Prefetcher) Stop() {
	p.cancel()
	<-p.done
}

// Done is closed when the prefetch has ended.
func (p *Prefetcher) Done() <-chan struct{} { return p.done }

// Wait waits until the prefetch has ended or ctx ends.
func (p *Prefetcher) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("prefetch: %w", ctx.Err())
	}
}

// Stats returns the prefetch's progress.
func (p *Prefetcher) Stats() PrefetchStats {
	return PrefetchStats{
		ProfileChunks: p.profileChunks.Load(), ProfileLocal: p.profileLocal.Load(),
		ImageChunks: p.imageChunks.Load(), ImageLocal: p.imageLocal.Load(),
		Batches: p.batches.Load(), FetchedBytes: p.fetchedBytes.Load(),
		Failed: p.failed.Load(), Ignored: p.ignored.Load(),
		Phase: p.phase.Load().(string), FillStopped: p.fillStopped.Load().(string),
	}
}
