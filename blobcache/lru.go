package blobcache

import "github.com/opencontainers/go-digest"

// index is the in-memory LRU state shared by both implementations: every
// stored chunk, its size and last access, in two recency lists (unpinned and
// pinned), plus the pin counts. It is not safe for concurrent use; the owner
// guards it with a mutex.
type index struct {
	m        map[key]*entry
	unpinned list // most recently used first
	pinned   list
	pins     map[key]int32 // pin counts, also for chunks not (yet) stored
	size     int64         // sum of entry sizes
	npinned  int64
	clock    int64 // latest access time handed out; keeps lists sorted by atime
}

type entry struct {
	k          key
	size       int64
	atime      int64 // last access, unix nanoseconds
	savedAtime int64 // atime as last persisted (Badger)
	prev, next *entry
	pinned     bool
	data       []byte // Memory only

	// Badger, chunks in a segment file: where the record starts, and the
	// CRC-32C of the chunk bytes (nil seg: the bytes are in badger).
	seg *segment
	off int64
	crc uint32
	// checked: this process wrote the record or read it back with its CRC
	// matching, so Extent may hand out its bytes unread.
	checked bool
}

// list is a circular doubly linked list with a sentinel.
type list struct{ root entry }

func (l *list) init()                { l.root.next, l.root.prev = &l.root, &l.root }
func (l *list) empty() bool          { return l.root.next == &l.root }
func (l *list) front() *entry        { return l.root.next }
func (l *list) back() *entry         { return l.root.prev }
func (l *list) end(e *entry) bool    { return e == &l.root }
func (l *list) pushFront(e *entry)   { l.insertAfter(e, &l.root) }
func (l *list) moveToFront(e *entry) { unlink(e); l.pushFront(e) }

func (l *list) insertAfter(e, at *entry) {
	e.prev, e.next = at, at.next
	at.next.prev = e
	at.next = e
}

func unlink(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func newIndex() *index {
	x := &index{m: make(map[key]*entry), pins: make(map[key]int32)}
	x.unpinned.init()
	x.pinned.init()
	return x
}

func (x *index) listOf(e *entry) *list {
	if e.pinned {
		return &x.pinned
	}
	return &x.unpinned
}

// add inserts a new entry as the most recently used; entries restored on
// open are added in ascending atime order.
func (x *index) add(e *entry) {
	e.pinned = x.pins[e.k] > 0
	if e.pinned {
		x.npinned++
	}
	x.m[e.k] = e
	x.size += e.size
	x.clock = max(x.clock, e.atime)
	x.listOf(e).pushFront(e)
}

// stamp returns an access time for now that is later than every earlier one,
// so each list stays sorted by atime even if the wall clock steps back.
func (x *index) stamp(now int64) int64 {
	if now <= x.clock {
		now = x.clock + 1
	}
	x.clock = now
	return now
}

// touch marks e as used at now.
func (x *index) touch(e *entry, now int64) {
	e.atime = x.stamp(now)
	x.listOf(e).moveToFront(e)
}

func (x *index) remove(e *entry) {
	unlink(e)
	delete(x.m, e.k)
	x.size -= e.size
	if e.pinned {
		x.npinned--
	}
}

// evictFor removes and returns the least recently used entries, unpinned ones
// first, until need more bytes fit under capacity.
func (x *index) evictFor(need, capacity int64) []*entry {
	var out []*entry
	for x.size+need > capacity {
		l := &x.unpinned
		if l.empty() {
			l = &x.pinned
		}
		if l.empty() {
			break
		}
		e := l.back()
		x.remove(e)
		out = append(out, e)
	}
	return out
}

// pinDigests pins every valid digest of ds (an invalid one names no
// storable chunk, so there is nothing to pin).
func (x *index) pinDigests(ds []digest.Digest) {
	for _, d := range ds {
		if k, err := parseDigest(d); err == nil {
			x.pin(k)
		}
	}
}

// unpinDigests unpins every valid digest of ds.
func (x *index) unpinDigests(ds []digest.Digest, now int64) {
	for _, d := range ds {
		if k, err := parseDigest(d); err == nil {
			x.unpin(k, now)
		}
	}
}

// pin takes a reference on k; a stored unpinned chunk moves to the pinned list.
func (x *index) pin(k key) {
	x.pins[k]++
	if e := x.m[k]; e != nil && !e.pinned {
		unlink(e)
		e.pinned = true
		x.npinned++
		x.pinned.pushFront(e)
	}
}

// unpin drops a reference on k; at zero a stored chunk re-enters the unpinned
// list as the most recently used (it was in use until now).
func (x *index) unpin(k key, now int64) {
	n, ok := x.pins[k]
	if !ok {
		return
	}
	if n > 1 {
		x.pins[k] = n - 1
		return
	}
	delete(x.pins, k)
	if e := x.m[k]; e != nil && e.pinned {
		unlink(e)
		e.pinned = false
		x.npinned--
		e.atime = x.stamp(now)
		x.unpinned.pushFront(e)
	}
}
