package fs

import (
	"context"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Bulk fill: a big file that is read in several long sequential runs at
// different places (a model loader faulting in tensors of an mmapped
// safetensors or GGUF file, in whatever order the model's layers are built)
// is going to be read whole. Per-stream read-ahead would pay a ramp-up and a
// cold round trip at the start of every tensor; instead the file's chunks are
// fetched into the hot set and the cache in order, from where the reader is,
// several windows in parallel, as fast as the link and the cache take them.
// The reader's own misses still go first (they are not background work).

const (
	// bulkWindow is the chunks one bulk fetch asks for (coalesced by the
	// fetcher into parallel range requests).
	bulkWindow = 32
	// bulkParallel is the bulk fetches in flight per file.
	bulkParallel = 4
	// maxBulks bounds the files filled at once per Root.
	maxBulks = 2
)

// startBulk starts the bulk fill of node d's file from the chunk holding
// offset off, unless the file is small, already being filled, or maxBulks
// fills are running.
func (r *Root) startBulk(d uint32, off int64) {
	if r.opts.Cache == nil || r.opts.ReadAhead <= 0 || r.ctx.Err() != nil {
		return
	}
	l, e := r.t.dataEntry(d)
	if e.Size < bulkMinSize || e.NumChunks == 0 || sharedObject(e.Name) {
		return
	}
	r.bulkMu.Lock()
	if r.bulks[d] || len(r.bulks) >= maxBulks {
		r.bulkMu.Unlock()
		return
	}
	if r.bulks == nil {
		r.bulks = map[uint32]bool{}
	}
	r.bulks[d] = true
	r.bulkMu.Unlock()
	first, end := int(e.FirstChunk), int(e.FirstChunk+e.NumChunks)
	from, _ := l.toc.ChunkRange(e, min(off, e.Size-1), 1)
	started := r.spawn(func() {
		defer func() {
			r.bulkMu.Lock()
			delete(r.bulks, d)
			r.bulkMu.Unlock()
		}()
		g, ctx := errgroup.WithContext(r.bgctx)
		g.SetLimit(bulkParallel)
		// From the reader's position to the end, then the start.
	fill:
		for _, span := range [][2]int{{from, end}, {first, from}} {
			for i := span[0]; i < span[1]; i += bulkWindow {
				j := prefetchJob{l: l, first: i, last: min(i+bulkWindow, span[1]), path: e.Name, paced: true}
				if !r.waitQueueRoom(ctx, bulkWindow) {
					break fill
				}
				g.Go(func() error { r.runPrefetch(j); return ctx.Err() })
			}
		}
		g.Wait()
	})
	if !started {
		r.bulkMu.Lock()
		delete(r.bulks, d)
		r.bulkMu.Unlock()
		return
	}
	r.stats.bulkFills.Add(1)
}

// spawn runs fn in a goroutine that Close waits for, unless the Root is
// closing (then it reports false): a WaitGroup must not grow while Close
// waits on it.
func (r *Root) spawn(fn func()) bool {
	r.lifeMu.Lock()
	defer r.lifeMu.Unlock()
	if r.ctx.Err() != nil {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		fn()
	}()
	return true
}

// waitQueueRoom waits until the cache writer's queue has room for n more
// chunks (or ctx ends): background fetches run no faster than the cache
// stores what they fetch, so that nothing they fetch is skipped; a reader's
// own fetches never wait.
func (r *Root) waitQueueRoom(ctx context.Context, n int) bool {
	limit := int64(max(writeQueue-n, writeQueue/4))
	for r.queued.Load() > limit {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Millisecond):
		}
	}
	return ctx.Err() == nil
}

// sharedObject reports whether name is a shared library (toc.IsSharedLibrary):
// the dynamic loader maps it and faults in long runs of the parts it
// relocates, yet a program uses a small part of a big library (import torch
// touches about a sixth of libtorch_cpu.so), so neither a bulk fill nor
// read-ahead past the kernel's own is worth its bytes.
func sharedObject(name string) bool { return toc.IsSharedLibrary(name) }
