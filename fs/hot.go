package fs

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// hotSet holds the chunks fetched most recently, verified, in memory: a
// bounded FIFO that reads consult before the cache. It decouples readers
// from the cache's write path: a chunk fetched by read-ahead is served from
// here whether or not the cache has stored it yet (or ever: when the cache
// writer falls behind, chunks are served and not cached), and the cache
// writer takes its bytes from here without another copy. Buffers are
// recycled when the last holder lets go, so big files cost no garbage; they
// come in power-of-two size classes from minHotBuf to bufCap, and the limit
// counts their capacity, the memory they hold (a 1 KiB file's chunk in a
// 256 KiB buffer once made a 64 MiB set hold 513 MB).
type hotSet struct {
	limit  int64
	bufCap int

	mu    sync.Mutex
	m     map[[32]byte]*hotChunk
	fifo  []*hotChunk // insertion order; fifo[head:] are live or dropped
	head  int
	bytes int64 // capacity of the live chunks' buffers
	dead  int   // dropped chunks still in fifo[head:]

	pools [hotClasses]sync.Pool // *[]byte of cap minHotBuf << class
}

// Size classes of the hot set's buffers: minHotBuf << k for k < hotClasses
// (4 KiB to 64 MiB, toc.MaxChunkSize).
const (
	minHotBuf  = 4 << 10
	hotClasses = 15
)

// hotClass returns the size class holding n bytes, and its capacity.
func hotClass(n int) (int, int) {
	if n <= minHotBuf {
		return 0, minHotBuf
	}
	k := bits.Len(uint(n-1)) - bits.Len(uint(minHotBuf-1))
	return k, minHotBuf << k
}

// hotChunk is one chunk in the set. refs counts the set itself and every
// reader or writer holding it; the buffer goes back to the pool at zero.
type hotChunk struct {
	sum  [32]byte
	data []byte
	// check is the cache's checksum of data (blobcache.Checksum), when
	// checked: computed as the chunk arrives, while its bytes are in the
	// CPU's cache, not when the cache writer gets to it.
	check   uint32
	checked bool
	refs    atomic.Int32
	set     *hotSet
	// served counts the bytes handed to the kernel in READ replies; done
	// holds doneRead once they cover the chunk (or from the start for a
	// chunk fetched ahead of readers) and doneStored once the cache has
	// it. With both the chunk leaves the set (drop).
	served atomic.Int64
	done   atomic.Int32
	// dropped: left the set before the FIFO reached it (guarded by set.mu).
	dropped bool
}

const (
	doneRead = 1 << iota
	doneStored
)

func newHotSet(limit int64, bufCap int) *hotSet {
	return &hotSet{limit: limit, bufCap: bufCap, m: map[[32]byte]*hotChunk{}}
}

// buf returns an empty buffer with room for n bytes, from the set's pools:
// a fetcher decodes a chunk into it, and adopt takes it without a copy.
func (s *hotSet) buf(n int) []byte {
	if k, c := hotClass(n); k < hotClasses && c <= max(s.bufCap, minHotBuf) {
		if p, _ := s.pools[k].Get().(*[]byte); p != nil {
			return (*p)[:0]
		}
		return make([]byte, 0, c)
	}
	return make([]byte, 0, n)
}

// recycle gives a buffer from buf back when it was not adopted.
func (s *hotSet) recycle(b []byte) {
	if k, c := hotClass(cap(b)); k < hotClasses && c == cap(b) {
		b = b[:0]
		s.pools[k].Put(&b)
	}
}

// add copies data (a verified chunk) into the set unless it is there, and
// returns it held once for the caller, or nil if it was already there.
func (s *hotSet) add(sum [32]byte, data []byte) *hotChunk {
	s.mu.Lock()
	if _, ok := s.m[sum]; ok {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	// Copy outside the lock; a racing add of the same chunk loses below.
	buf := append(s.buf(len(data)), data...)
	c := s.adopt(sum, buf)
	if c == nil {
		s.recycle(buf)
	}
	return c
}

// adopt puts data (a verified chunk, in a buffer the caller gives up:
// from buf, or one the set may pool) into the set unless it is there, and
// returns it held once for the caller. If the chunk was already there it
// returns nil, and data stays the caller's.
func (s *hotSet) adopt(sum [32]byte, data []byte) *hotChunk {
	c := &hotChunk{sum: sum, data: data, set: s}
	c.refs.Store(2) // the set's and the caller's
	s.mu.Lock()
	if _, ok := s.m[sum]; ok {
		s.mu.Unlock()
		return nil
	}
	s.m[sum] = c
	s.fifo = append(s.fifo, c)
	s.bytes += int64(cap(data))
	var out []*hotChunk
	for s.bytes > s.limit && s.head < len(s.fifo)-1 {
		old := s.fifo[s.head]
		s.fifo[s.head] = nil
		s.head++
		if old.dropped {
			s.dead--
			continue
		}
		delete(s.m, old.sum)
		s.bytes -= int64(cap(old.data))
		out = append(out, old)
	}
	for s.head < len(s.fifo) && s.fifo[s.head].dropped {
		s.fifo[s.head] = nil
		s.head++
		s.dead--
	}
	if s.dead > len(s.m)+64 {
		// Dropped chunks behind a live one: keep the live ones only.
		live := s.fifo[:0]
		for _, c := range s.fifo[s.head:] {
			if !c.dropped {
				live = append(live, c)
			}
		}
		clear(s.fifo[len(live):])
		s.fifo, s.head, s.dead = live, 0, 0
	}
	if s.head > len(s.fifo)/2 && s.head > 64 {
		s.fifo = append(s.fifo[:0], s.fifo[s.head:]...)
		s.head = 0
	}
	s.mu.Unlock()
	for _, o := range out {
		o.release()
	}
	return c
}

// get returns the chunk held once for the caller, or nil.
func (s *hotSet) get(sum [32]byte) *hotChunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.m[sum]
	if c != nil {
		c.refs.Add(1)
	}
	return c
}

func (s *hotSet) has(sum [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[sum]
	return ok
}

// served records that n more bytes of chunk sum went to the kernel in a
// READ reply. A chunk read whole is in the page cache, so once the cache
// has it too the set lets it go (drop) instead of holding it until the
// FIFO reaches it: a sequential reader then keeps about its read-ahead
// window in memory, not the set's whole bound: every buffer the set fills
// is memory the process touches (on one VM measured here a first touch
// cost ~11 µs per page; docs/fs.md, "Twelfth session").
func (s *hotSet) served(sum [32]byte, n int64) {
	s.mu.Lock()
	c := s.m[sum]
	var size int64
	if c != nil {
		size = int64(len(c.data)) // c.data is the set's while c is in s.m
	}
	s.mu.Unlock()
	if c != nil && c.served.Add(n) >= size {
		c.finish(doneRead)
	}
}

// stored records that the cache has c.
func (c *hotChunk) stored() { c.finish(doneStored) }

// aheadOfReaders marks c as fetched far ahead of any reader (big-file
// read-ahead, a bulk fill, the fill after a profile): it leaves the set once
// the cache has it, read or not. A READ of it then comes from the cache's
// segment files (spliced, without a copy in this process), and a fill of a
// whole image no longer pushes the chunks readers use out of the set. A
// loader's cold 1 GiB read (bench/scripts/cold-read.sh, SHOW_STATS): 28-30k
// page faults and 133-139 MB peak RSS against 47k and 207-210 MB.
func (c *hotChunk) aheadOfReaders() { c.finish(doneRead) }

// finish sets bit in c.done and drops c from its set when that completes
// doneRead|doneStored.
func (c *hotChunk) finish(bit int32) {
	if old := c.done.Or(bit); old|bit == doneRead|doneStored && old != old|bit {
		c.set.drop(c)
	}
}

// drop takes c out of the set, unless it has left already.
func (s *hotSet) drop(c *hotChunk) {
	s.mu.Lock()
	if s.m[c.sum] != c {
		s.mu.Unlock()
		return
	}
	delete(s.m, c.sum)
	s.bytes -= int64(cap(c.data))
	c.dropped = true
	s.dead++
	s.mu.Unlock()
	c.release()
}

// release lets go of one hold on c.
func (c *hotChunk) release() {
	if c.refs.Add(-1) != 0 {
		return
	}
	if k, cp := hotClass(cap(c.data)); k < hotClasses && cp == cap(c.data) {
		b := c.data[:0]
		c.set.pools[k].Put(&b)
	}
	c.data = nil
}

// clear drops every chunk from the set (tests use it to force refetches).
func (s *hotSet) clear() {
	s.mu.Lock()
	out := s.fifo[s.head:]
	s.fifo, s.head, s.bytes, s.dead = nil, 0, 0, 0
	clear(s.m)
	s.mu.Unlock()
	for _, c := range out {
		if !c.dropped {
			c.release()
		}
	}
}
