// Package fstest provides the test doubles that tests of lazyfs packages
// use around package fs: a chunk fetcher that reads a converted blob held in
// memory (with counters, failure and tampering switches) and a map-based
// chunk cache. Both are real implementations of the contracts (the fetcher
// decodes and verifies frames with toc.DecodeChunk), only in memory.
package fstest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// Errors of this package.
var (
	// ErrFetchFailed is returned by a BlobFetcher switched to fail.
	ErrFetchFailed = errors.New("fetch failed")
	// ErrNotFound is returned by MemCache.Get on a miss: blobcache's, so
	// that callers treat both caches alike.
	ErrNotFound = blobcache.ErrNotFound
)

// BlobFetcher serves chunks from a converted layer blob in memory, decoding
// and verifying each frame, as fs/remote does over HTTP. It is safe for
// concurrent use.
type BlobFetcher struct {
	blob []byte

	mu      sync.Mutex
	fail    bool
	tamper  bool
	lie     bool
	block   chan struct{}
	started chan struct{}
	latency time.Duration
	every   int64 // fail every every-th call (0: never)
	copied  bool  // FetchChunksOwned never hands over a buffer

	requests atomic.Int64 // FetchChunks calls
	chunks   atomic.Int64 // chunks delivered
	bytes    atomic.Int64 // compressed bytes read from the blob
}

// NewBlobFetcher returns a fetcher over blob.
func NewBlobFetcher(blob []byte) *BlobFetcher { return &BlobFetcher{blob: blob} }

// SetFailing makes every later fetch fail (true) or work again (false).
func (f *BlobFetcher) SetFailing(v bool) { f.mu.Lock(); f.fail = v; f.mu.Unlock() }

// SetTampered makes the fetcher read a corrupted copy of each frame, as if
// the registry served tampered bytes; verification then fails.
func (f *BlobFetcher) SetTampered(v bool) { f.mu.Lock(); f.tamper = v; f.mu.Unlock() }

// SetLying makes the fetcher deliver wrong bytes of the right size without
// verifying them, as a buggy fetcher would.
func (f *BlobFetcher) SetLying(v bool) { f.mu.Lock(); f.lie = v; f.mu.Unlock() }

// SetLatency makes every FetchChunks call wait d first, like a round trip
// to a registry.
func (f *BlobFetcher) SetLatency(d time.Duration) { f.mu.Lock(); f.latency = d; f.mu.Unlock() }

// SetFailEvery makes every n-th FetchChunks call (counting all calls) fail
// with ErrFetchFailed before delivering anything, as a flaky registry
// would; 0 turns it off.
func (f *BlobFetcher) SetFailEvery(n int) { f.mu.Lock(); f.every = int64(n); f.mu.Unlock() }

// Block makes later fetches wait until their context ends or Unblock is
// called. The returned channel receives once per fetch that started waiting.
func (f *BlobFetcher) Block() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.block = make(chan struct{})
	f.started = make(chan struct{}, 16)
	return f.started
}

// Unblock releases blocked fetches.
func (f *BlobFetcher) Unblock() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.block != nil {
		close(f.block)
		f.block = nil
	}
}

// Stats returns the number of FetchChunks calls, chunks delivered and
// compressed bytes read.
func (f *BlobFetcher) Stats() (requests, chunks, bytes int64) {
	return f.requests.Load(), f.chunks.Load(), f.bytes.Load()
}

// Reset zeroes the counters.
func (f *BlobFetcher) Reset() { f.requests.Store(0); f.chunks.Store(0); f.bytes.Store(0) }

// SetCopied makes FetchChunksOwned deliver every chunk as FetchChunks does
// (own false, in a buffer reused for the next chunk), as a fetcher without
// owned buffers would (true), or hand the caller its buffers again (false,
// the default).
func (f *BlobFetcher) SetCopied(v bool) { f.mu.Lock(); f.copied = v; f.mu.Unlock() }

// FetchChunks implements fs.ChunkFetcher.
func (f *BlobFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(i int, data []byte) error) error {
	return f.fetch(ctx, chunks, nil, func(i int, data []byte, _ bool) error { return fn(i, data) })
}

// FetchChunksOwned is FetchChunks decoding each chunk into a buffer from get
// and handing it to fn to keep (own true), as fs/remote does: unless
// SetCopied, or when chunks holds the chunk more than once.
func (f *BlobFetcher) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error {
	f.mu.Lock()
	copied := f.copied
	f.mu.Unlock()
	if copied {
		get = nil
	}
	return f.fetch(ctx, chunks, get, fn)
}

func (f *BlobFetcher) fetch(ctx context.Context, chunks []toc.Chunk, get func(int) []byte, fn func(int, []byte, bool) error) error {
	call := f.requests.Add(1)
	f.mu.Lock()
	fail, tamper, lie, block, started, latency := f.fail, f.tamper, f.lie, f.block, f.started, f.latency
	fail = fail || (f.every > 0 && call%f.every == 0)
	f.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	if block != nil {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail {
		return ErrFetchFailed
	}
	var buf []byte
	seen := map[[32]byte]int{}
	for i := range chunks {
		seen[chunks[i].Sum]++
	}
	for i := range chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := &chunks[i]
		own := get != nil && seen[c.Sum] == 1
		if own {
			buf = get(int(c.Size))
		}
		end := c.CompressedOffset + int64(c.CompressedSize)
		if c.CompressedOffset < 0 || end > int64(len(f.blob)) {
			return fmt.Errorf("chunk at %d+%d: outside the blob of %d bytes", c.CompressedOffset, c.CompressedSize, len(f.blob))
		}
		frame := f.blob[c.CompressedOffset:end]
		f.bytes.Add(int64(len(frame)))
		var err error
		switch {
		case lie:
			buf = make([]byte, c.Size)
			for j := range buf {
				buf[j] = 0xA5
			}
		case tamper:
			t := append([]byte(nil), frame...)
			t[len(t)/2] ^= 0xFF
			buf, err = toc.DecodeChunk(c, t, buf[:0])
		default:
			buf, err = toc.DecodeChunk(c, frame, buf[:0])
		}
		if err != nil {
			return err
		}
		if err := fn(i, buf, own); err != nil {
			return err
		}
		if own {
			buf = nil // the caller's now
		}
		f.chunks.Add(1)
	}
	return nil
}

// MemCache is a map-based chunk cache. It is safe for concurrent use.
type MemCache struct {
	mu   sync.RWMutex
	m    map[digest.Digest][]byte
	gets atomic.Int64
	puts atomic.Int64
}

// NewMemCache returns an empty cache.
func NewMemCache() *MemCache { return &MemCache{m: map[digest.Digest][]byte{}} }

// Get returns the chunk stored under d or an error wrapping ErrNotFound.
func (c *MemCache) Get(ctx context.Context, d digest.Digest) ([]byte, error) {
	c.gets.Add(1)
	c.mu.RLock()
	b, ok := c.m[d]
	c.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	return b, nil
}

// Put stores data under d; it keeps data.
func (c *MemCache) Put(ctx context.Context, d digest.Digest, data []byte) error {
	c.puts.Add(1)
	c.mu.Lock()
	c.m[d] = data
	c.mu.Unlock()
	return nil
}

// Has reports whether d is stored.
func (c *MemCache) Has(ctx context.Context, d digest.Digest) (bool, error) {
	c.mu.RLock()
	_, ok := c.m[d]
	c.mu.RUnlock()
	return ok, nil
}

// Len returns the number of chunks stored.
func (c *MemCache) Len() int { c.mu.RLock(); defer c.mu.RUnlock(); return len(c.m) }

// Clear removes every chunk.
func (c *MemCache) Clear() { c.mu.Lock(); clear(c.m); c.mu.Unlock() }
