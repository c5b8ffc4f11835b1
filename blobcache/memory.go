package blobcache

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// Memory is a Cache in process memory, bounded by its capacity in bytes of
// chunk data, with the same LRU and pinning rules as Badger. It keeps a
// private copy of every chunk, so it needs no check on Get.
type Memory struct {
	capacity int64

	mu     sync.Mutex
	idx    *index
	closed bool

	st counters
}

// counters are the Stats counters, updated without the index lock.
type counters struct {
	hits, misses, bytesIn, bytesOut, puts, dedups atomic.Int64
	evictions, evictedBytes, corrupt, gcRuns      atomic.Int64
}

func (c *counters) fill(s *Stats) {
	s.Hits = c.hits.Load()
	s.Misses = c.misses.Load()
	s.BytesIn = c.bytesIn.Load()
	s.BytesOut = c.bytesOut.Load()
	s.Puts = c.puts.Load()
	s.Dedups = c.dedups.Load()
	s.Evictions = c.evictions.Load()
	s.EvictedBytes = c.evictedBytes.Load()
	s.Corrupt = c.corrupt.Load()
	s.GCRuns = c.gcRuns.Load()
}

// NewMemory returns an empty Memory cache; the default capacity is
// DefaultMemoryCapacity. Only WithCapacity applies.
func NewMemory(opts ...Option) *Memory {
	cfg := newConfig(opts, DefaultMemoryCapacity)
	return &Memory{capacity: cfg.capacity, idx: newIndex()}
}

// Get implements Cache.
func (c *Memory) Get(ctx context.Context, d digest.Digest) ([]byte, error) {
	return c.GetInto(ctx, d, nil)
}

// GetInto is Get that returns the chunk in buf[:n] when cap(buf) is large
// enough, so a caller with a reusable buffer allocates nothing.
func (c *Memory) GetInto(ctx context.Context, d digest.Digest, buf []byte) ([]byte, error) {
	k, err := parseDigest(d)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	e := c.idx.m[k]
	if e == nil {
		c.mu.Unlock()
		c.st.misses.Add(1)
		return nil, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	c.idx.touch(e, time.Now().UnixNano())
	data := e.data // immutable once stored
	c.mu.Unlock()
	out := copyInto(buf, data)
	c.st.hits.Add(1)
	c.st.bytesOut.Add(int64(len(out)))
	return out, nil
}

// Put implements Cache.
func (c *Memory) Put(ctx context.Context, d digest.Digest, data []byte) error {
	return c.put(ctx, d, data, true)
}

// PutVerified stores data like Put without hashing it again: the caller has
// just checked sha256(data) == d.
func (c *Memory) PutVerified(ctx context.Context, d digest.Digest, data []byte) error {
	return c.put(ctx, d, data, false)
}

func (c *Memory) put(ctx context.Context, d digest.Digest, data []byte, verify bool) error {
	k, err := parseDigest(d)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if int64(len(data)) > c.capacity || len(data) > MaxChunkSize {
		return fmt.Errorf("chunk %s: %d bytes, capacity %d: %w", d, len(data), c.capacity, ErrTooLarge)
	}
	if ok, err := c.dedup(k); ok || err != nil {
		return err
	}
	if verify {
		if sum := sha256.Sum256(data); sum != k {
			return mismatch(d, sum)
		}
	}
	own := copyInto(nil, data)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	now := c.idx.stamp(time.Now().UnixNano())
	if e := c.idx.m[k]; e != nil { // a concurrent Put won
		c.idx.touch(e, now)
		c.st.dedups.Add(1)
		return nil
	}
	for _, v := range c.idx.evictFor(int64(len(own)), c.capacity) {
		c.st.evictions.Add(1)
		c.st.evictedBytes.Add(v.size)
	}
	c.idx.add(&entry{k: k, size: int64(len(own)), atime: now, data: own})
	c.st.puts.Add(1)
	c.st.bytesIn.Add(int64(len(own)))
	return nil
}

// dedup refreshes k and reports true when it is already stored.
func (c *Memory) dedup(k key) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, ErrClosed
	}
	if e := c.idx.m[k]; e != nil {
		c.idx.touch(e, time.Now().UnixNano())
		c.st.dedups.Add(1)
		return true, nil
	}
	return false, nil
}

// Has implements Cache.
func (c *Memory) Has(ctx context.Context, d digest.Digest) (bool, error) {
	k, err := parseDigest(d)
	if err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, ErrClosed
	}
	return c.idx.m[k] != nil, nil
}

// Pin implements Pinner.
func (c *Memory) Pin(ds ...digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx.pinDigests(ds)
}

// Unpin implements Pinner.
func (c *Memory) Unpin(ds ...digest.Digest) {
	now := time.Now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx.unpinDigests(ds, now)
}

// Stats implements Cache.
func (c *Memory) Stats() Stats {
	var s Stats
	c.st.fill(&s)
	c.mu.Lock()
	s.Entries = int64(len(c.idx.m))
	s.Size = c.idx.size
	s.Pinned = c.idx.npinned
	c.mu.Unlock()
	s.Capacity = c.capacity
	return s
}

// Close implements Cache; it drops every chunk.
func (c *Memory) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.idx = newIndex()
	return nil
}

// mismatch is the error for data that does not hash to d.
func mismatch(d digest.Digest, sum [32]byte) error {
	return fmt.Errorf("chunk %s: %w: data hashes to %s", d, ErrDigestMismatch, key(sum).digest())
}
