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
