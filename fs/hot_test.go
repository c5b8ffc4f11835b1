package fs

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// TestHotSetBoundsMemory: the hot set's limit bounds the memory its buffers
// hold, not the bytes of the chunks in them: 1 KiB chunks (small files)
// beside 256 KiB ones must not pin a 256 KiB buffer each.
func TestHotSetBoundsMemory(t *testing.T) {
	const limit, bufCap = 1 << 20, 256 << 10
	s := newHotSet(limit, bufCap)
	add := func(i, n int) {
		data := make([]byte, n)
		binary.LittleEndian.PutUint64(data, uint64(i))
		if c := s.add(sha256.Sum256(data), data); c != nil {
			c.release()
		}
	}
	for i := range 2000 {
		add(i, 1<<10)
		if i%100 == 0 {
			add(i+1_000_000, bufCap) // a big chunk now and then
		}
	}
	var held int64
	s.mu.Lock()
	for _, c := range s.fifo[s.head:] {
		held += int64(cap(c.data))
	}
	n := len(s.m)
	s.mu.Unlock()
	if held > limit+bufCap {
		t.Fatalf("%d chunks hold %d bytes of buffers, limit %d", n, held, limit)
	}
	if n < 100 {
		t.Fatalf("only %d chunks kept in %d bytes: small chunks take whole buffers", n, limit)
	}
	// Recycled buffers keep their class: a small chunk never gets a big buffer.
	data := []byte("tiny")
	c := s.add(sha256.Sum256(data), data)
	if c == nil || cap(c.data) != minHotBuf {
		t.Fatalf("a 4-byte chunk got a buffer of %d bytes, want %d", cap(c.data), minHotBuf)
	}
	c.release()
}

func TestHotClass(t *testing.T) {
	for _, tc := range []struct{ n, k, c int }{
		{1, 0, 4 << 10}, {4 << 10, 0, 4 << 10}, {4<<10 + 1, 1, 8 << 10}, {64 << 10, 4, 64 << 10},
		{256 << 10, 6, 256 << 10}, {256<<10 + 1, 7, 512 << 10}, {64 << 20, 14, 64 << 20},
	} {
		if k, c := hotClass(tc.n); k != tc.k || c != tc.c {
			t.Errorf("hotClass(%d) = %d, %d; want %d, %d", tc.n, k, c, tc.k, tc.c)
		}
	}
}

// TestHotSetDropsReadAndStored: a chunk leaves the set once READ replies
// covered it whole (or it was fetched ahead of readers) and the cache has
// it, in either order, and not before;
// the FIFO forgets dropped chunks, even behind one that stays, and the bound
// still evicts the rest.
func TestHotSetDropsReadAndStored(t *testing.T) {
	const bufCap = 256 << 10
	s := newHotSet(4*bufCap, bufCap)
	seq := 0
	chunk := func() *hotChunk {
		seq++
		data := make([]byte, bufCap)
		binary.LittleEndian.PutUint64(data, uint64(seq))
		c := s.add(sha256.Sum256(data), data)
		if c == nil {
			t.Fatal("add: chunk already there")
		}
		return c
	}
	live := func() (int, int64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.m), s.bytes
	}

	a := chunk()
	s.served(a.sum, bufCap/2)
	a.stored()
	if !s.has(a.sum) {
		t.Fatal("half read and stored: dropped")
	}
	s.served(a.sum, bufCap/2)
	if s.has(a.sum) {
		t.Fatal("read whole and stored: still in the set")
	}
	if n, b := live(); n != 0 || b != 0 {
		t.Fatalf("after the drop: %d chunks, %d bytes; want none", n, b)
	}
	if a.refs.Load() != 1 {
		t.Fatalf("dropped chunk held %d times, want 1 (the caller's)", a.refs.Load())
	}
	a.release()

	b := chunk()
	s.served(b.sum, bufCap)
	if !s.has(b.sum) {
		t.Fatal("read whole, not stored (the cache writer fell behind): dropped")
	}
	b.stored()
	b.stored() // twice: no second drop
	if s.has(b.sum) {
		t.Fatal("stored after it was read whole: still in the set")
	}
	b.release()

	// Fetched ahead of readers: it leaves once stored, read or not.
	ahead := chunk()
	ahead.aheadOfReaders()
	if !s.has(ahead.sum) {
		t.Fatal("fetched ahead, not stored: dropped")
	}
	ahead.stored()
	if s.has(ahead.sum) {
		t.Fatal("fetched ahead and stored: still in the set")
	}
	s.served(ahead.sum, bufCap) // a READ after it left: nothing to count
	ahead.release()

	// One chunk that stays (never read) in front of many dropped ones: the
	// FIFO must not grow with them.
	keep := chunk()
	keep.release()
	for range 2000 {
		c := chunk()
		s.served(c.sum, bufCap)
		c.stored()
		c.release()
	}
	s.mu.Lock()
	fifo, dead := len(s.fifo)-s.head, s.dead
	s.mu.Unlock()
	if fifo > 2*64+2 || dead < 0 {
		t.Fatalf("after 2,000 dropped chunks behind one kept: %d FIFO entries (%d dead)", fifo, dead)
	}
	if !s.has(keep.sum) {
		t.Fatal("the chunk never read left the set with room to spare")
	}

	// The bound still evicts chunks that are never read.
	for range 8 {
		chunk().release()
	}
	if n, b := live(); b > 4*bufCap || n != 4 || s.has(keep.sum) {
		t.Fatalf("8 unread chunks into a set of 4: %d chunks, %d bytes, oldest kept %v", n, b, s.has(keep.sum))
	}
}
