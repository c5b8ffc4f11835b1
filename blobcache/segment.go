package blobcache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The segment store keeps the bytes of large chunks (WithSegmentThreshold,
// default 4 KiB) out of badger: they are appended with pwritev to plain
// segment files under dir/segments, and the chunk's badger record is a small
// extent record {segment, offset, length, CRC-32C} that lives in the LSM tree.
// Writing through write(2) instead of badger's mmapped value log costs one
// copy into the page cache and one CRC; a full disk is ENOSPC, not SIGBUS.
//
// Segment file NNNNNNNNNNNNNNNN.seg (hex id, ids only grow): a sequence of
//
//	segment record header (48 bytes):
//	[0]     'S' magic
//	[1]     version (1)
//	[2:4]   zero
//	[4:8]   CRC-32C of the chunk bytes
//	[8:16]  chunk size
//	[16:48] sha256 of the chunk bytes (the chunk's key)
//	then the chunk bytes.
//
// A segment is appended to by one cache process only, and only while it is
// the active segment; Open never appends to a segment left by an earlier
// process (it starts a new one), so a torn tail is never followed by live
// data and is simply never referenced. Records are committed to badger only
// after their bytes are written; the header lets Get reject an extent that
// points at another chunk's bytes.
const (
	segDirName  = "segments"
	segSuffix   = ".seg"
	segMagic    = 'S'
	segVersion  = 1
	segHdrLen   = 48
	extentMagic = 'E'
	// extent record (badger value under 'c' + sha256):
	//	[0] 'E' magic, [1] version (1), [2:4] zero, [4:8] CRC-32C,
	//	[8:16] segment id, [16:24] offset of the segment record header,
	//	[24:32] chunk size.
	extentVersion = 1
	extentLen     = 32

	// DefaultSegmentThreshold is the chunk size from which Badger stores
	// chunk bytes in segment files rather than in badger's value log:
	// measured (BenchmarkPutBySize, BenchmarkGetBySize), segments are as fast
	// as badger at 1 KiB and faster from 4 KiB on.
	DefaultSegmentThreshold = 4 << 10
)

// segment is one segment file. All fields but id and f are guarded by the
// cache's mu.
type segment struct {
	id   uint64
	f    *os.File
	end  int64 // bytes reserved: the file's size once writes land
	live int64 // bytes of live records (header + chunk)
	refs int   // Puts writing into it, Gets and compactions reading it
	// unsettled counts records released from the index (evicted, dropped)
	// whose deletion from badger has not committed yet: the file stays until
	// it is 0, so that a crash never leaves a committed record pointing into
	// a deleted segment.
	unsettled int
	sealed    bool // no longer appended to
	dead      bool // unlinked; f closed once refs drop to zero
	// closed: the cache closed while an Extent still held s; f is closed
	// when the last one is released.
	closed bool
}

func segName(id uint64) string { return fmt.Sprintf("%016x%s", id, segSuffix) }

func (c *Badger) segPath(id uint64) string {
	return filepath.Join(c.dir, segDirName, segName(id))
}

// extent is the decoded extent record of a chunk stored in a segment.
type extent struct {
	crc  uint32
	seg  uint64
	off  int64
	size int64
}

func (x extent) encode() []byte {
	b := make([]byte, extentLen)
	b[0] = extentMagic
	b[1] = extentVersion
	binary.LittleEndian.PutUint32(b[4:8], x.crc)
	binary.LittleEndian.PutUint64(b[8:16], x.seg)
	binary.LittleEndian.PutUint64(b[16:24], uint64(x.off))
	binary.LittleEndian.PutUint64(b[24:32], uint64(x.size))
	return b
}

// isExtent reports whether a badger chunk value is an extent record (chunk
// records start with chunkMagic).
func isExtent(b []byte) bool { return len(b) > 0 && b[0] == extentMagic }

func decodeExtent(b []byte) (extent, error) {
	if len(b) != extentLen || b[0] != extentMagic || b[1] != extentVersion || b[2] != 0 || b[3] != 0 {
		return extent{}, fmt.Errorf("extent record %x: %w", b[:min(len(b), 4)], errCorruptRecord)
	}
	x := extent{
		crc:  binary.LittleEndian.Uint32(b[4:8]),
		seg:  binary.LittleEndian.Uint64(b[8:16]),
		off:  int64(binary.LittleEndian.Uint64(b[16:24])),
		size: int64(binary.LittleEndian.Uint64(b[24:32])),
	}
	if x.size < 0 || x.size > MaxChunkSize || x.off < 0 || x.seg == 0 {
		return extent{}, fmt.Errorf("extent record %+v: %w", x, errCorruptRecord)
	}
	return x, nil
}

func encodeSegHeader(dst []byte, crc uint32, size int64, k key) {
	dst[0] = segMagic
	dst[1] = segVersion
	dst[2], dst[3] = 0, 0
	binary.LittleEndian.PutUint32(dst[4:8], crc)
	binary.LittleEndian.PutUint64(dst[8:16], uint64(size))
	copy(dst[16:48], k[:])
}

// checkSegHeader checks a segment record header read back for chunk k.
func checkSegHeader(h []byte, crc uint32, size int64, k key) error {
	if h[0] != segMagic || h[1] != segVersion || h[2] != 0 || h[3] != 0 {
		return fmt.Errorf("segment record header %x", h[:4])
	}
	if got := int64(binary.LittleEndian.Uint64(h[8:16])); got != size {
		return fmt.Errorf("segment record of %d bytes, index says %d", got, size)
	}
	if !(key(h[16:48]) == k) {
		return fmt.Errorf("segment record belongs to %s", key(h[16:48]).digest())
	}
	if got := binary.LittleEndian.Uint32(h[4:8]); got != crc {
		return fmt.Errorf("segment record crc32c %08x, extent says %08x", got, crc)
	}
	return nil
}

// segRecLen is the disk space a record of a chunk of size bytes takes.
func segRecLen(size int64) int64 { return segHdrLen + size }

// openSegments lists dir/segments (creating it) and opens every segment file
// read-only; ids of files that are not ours are ignored.
func (c *Badger) openSegments() (map[uint64]*segment, uint64, error) {
	sd := filepath.Join(c.dir, segDirName)
	if err := os.MkdirAll(sd, 0o700); err != nil {
		return nil, 0, err
	}
	ents, err := os.ReadDir(sd)
	if err != nil {
		return nil, 0, err
	}
	segs := make(map[uint64]*segment)
	var maxID uint64
	for _, de := range ents {
		name := de.Name()
		id, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 16, 64)
		if !strings.HasSuffix(name, segSuffix) || err != nil || id == 0 || name != segName(id) || !de.Type().IsRegular() {
			continue
		}
		f, err := os.OpenFile(filepath.Join(sd, name), os.O_RDWR, 0)
		if err != nil {
			closeSegments(segs)
			return nil, 0, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			closeSegments(segs)
			return nil, 0, err
		}
		segs[id] = &segment{id: id, f: f, end: fi.Size(), sealed: true}
		maxID = max(maxID, id)
	}
	return segs, maxID, nil
}

// closeSegments closes the segments' files, except those an Extent still
// holds (its reader is splicing from the file: closing it would free the
// descriptor's number for another file to take), which unref closes when
// the last is released. c.mu is held, or the segments are not shared yet.
func closeSegments(segs map[uint64]*segment) {
	for _, s := range segs {
		if s.refs > 0 {
			s.closed = true
			continue
		}
		s.f.Close()
	}
}

// activeSegment returns the segment to append n bytes to, creating a new one
// when there is none or the current one is full. c.mu is held.
func (c *Badger) activeSegment() (*segment, error) {
	if s := c.active; s != nil && s.end < c.segSize {
		return s, nil
	}
	if s := c.active; s != nil {
		s.sealed = true
		c.active = nil
		c.maybeDropSegment(s)
	}
	c.lastSegID++
	id := c.lastSegID
	f, err := os.OpenFile(c.segPath(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if c.cfg.syncWrites {
		if err := syncDir(filepath.Join(c.dir, segDirName)); err != nil {
			f.Close()
			os.Remove(c.segPath(id))
			return nil, err
		}
	}
	s := &segment{id: id, f: f}
	c.segs[id] = s
	c.active = s
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// reserve reserves room for a record of size bytes in the active segment and
// takes a reference on it. c.mu is held.
func (c *Badger) reserve(size int64) (*segment, int64, error) {
	s, err := c.activeSegment()
	if err != nil {
		return nil, 0, err
	}
	off := s.end
	s.end += segRecLen(size)
	s.refs++
	return s, off, nil
}

// pwritev is unix.Pwritev; tests replace it to inject write errors (ENOSPC).
var pwritev = unix.Pwritev

// writeRecord writes the segment record of chunk k at off in s (outside
// c.mu): header and bytes in one pwritev, no assembly copy.
func (c *Badger) writeRecord(s *segment, off int64, k key, crc uint32, data []byte) error {
	var hdr [segHdrLen]byte
	encodeSegHeader(hdr[:], crc, int64(len(data)), k)
	iov := [][]byte{hdr[:], data}
	want := segRecLen(int64(len(data)))
	var done int64
	for done < want {
		n, err := pwritev(int(s.f.Fd()), iov, off+done)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
				return fmt.Errorf("segment %s: %w: %w", segName(s.id), ErrNoSpace, err)
			}
			return fmt.Errorf("segment %s: write: %w", segName(s.id), err)
		}
		if n == 0 {
			return fmt.Errorf("segment %s: short write", segName(s.id))
		}
		done += int64(n)
		iov = advance(iov, n)
	}
	if c.cfg.syncWrites {
		if err := unix.Fdatasync(int(s.f.Fd())); err != nil {
			return fmt.Errorf("segment %s: fdatasync: %w", segName(s.id), err)
		}
	}
	return nil
}

// advance drops the first n bytes from iov.
func advance(iov [][]byte, n int) [][]byte {
	for n > 0 && len(iov) > 0 {
		if n < len(iov[0]) {
			iov[0] = iov[0][n:]
			return iov
		}
		n -= len(iov[0])
		iov = iov[1:]
	}
	return iov
}

// readRecord reads the record of chunk k (the extent of e) from s into buf
// and verifies the copy: header, then CRC-32C or sha256 of what is returned.
func (c *Badger) readRecord(s *segment, off int64, k key, crc uint32, size int64, buf []byte) ([]byte, error) {
	var out []byte
	if int64(cap(buf)) >= size {
		out = buf[:size]
	} else {
		out = make([]byte, size)
	}
	var hdr [segHdrLen]byte
	iov := [][]byte{hdr[:], out}
	want := segRecLen(size)
	var done int64
	for done < want {
		n, err := unix.Preadv(int(s.f.Fd()), iov, off+done)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: segment %s: read: %w", errBadChunk, segName(s.id), err)
		}
		if n == 0 {
			return nil, fmt.Errorf("%w: segment %s: record at %d cut short at %d of %d bytes", errBadChunk, segName(s.id), off, done, want)
		}
		done += int64(n)
		iov = advance(iov, n)
	}
	if err := checkSegHeader(hdr[:], crc, size, k); err != nil {
		return nil, fmt.Errorf("%w: segment %s at %d: %w", errBadChunk, segName(s.id), off, err)
	}
	if c.cfg.verify == VerifySHA256 {
		if sha256.Sum256(out) != k {
			return nil, fmt.Errorf("%w: segment %s at %d: sha256 differs", errBadChunk, segName(s.id), off)
		}
	} else if got := crc32c(out); got != crc {
		return nil, fmt.Errorf("%w: segment %s at %d: crc32c %08x, recorded %08x", errBadChunk, segName(s.id), off, got, crc)
	}
	return out, nil
}

// unref drops a reference on s. c.mu is held.
func (c *Badger) unref(s *segment) {
	s.refs--
	if s.closed {
		if s.refs == 0 {
			s.f.Close()
		}
		return
	}
	c.maybeDropSegment(s)
}

// release accounts for the removal of e from the index. The caller deletes
// e's records from badger and then calls settled. c.mu is held.
func (c *Badger) release(e *entry) {
	if s := e.seg; s != nil {
		s.live -= segRecLen(e.size)
		s.unsettled++
	}
}

// settled is called once the deletion of released entries es from badger
// has committed: their segments may go now. (If it failed, the segments
// stay until Open, which drops the records it finds and the segments left
// without live records.)
func (c *Badger) settled(es []*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range es {
		if s := e.seg; s != nil {
			s.unsettled--
			c.maybeDropSegment(s)
		}
	}
}

// maybeDropSegment deletes a sealed segment that holds no live chunk and that
// nobody is writing or reading. c.mu is held.
func (c *Badger) maybeDropSegment(s *segment) {
	if !s.sealed || s.live > 0 || s.refs > 0 || s.unsettled > 0 || s.dead {
		return
	}
	s.dead = true
	delete(c.segs, s.id)
	if err := os.Remove(c.segPath(s.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.cfg.logger.Warn("blobcache: remove segment", "dir", c.dir, "segment", segName(s.id), "err", err)
	}
	s.f.Close()
}

// segGarbageAllowance is the garbage (bytes of dead records) that sealed
// segments may hold after a collection: capacity/16 + one segment (LRU
// eviction leaves the oldest segment partly dead; moving its chunks, next in
// line for eviction, would be wasted work). Above it, compactSegments
// rewrites the live chunks of the segments with the largest share of garbage.
func (c *Badger) segGarbageAllowance() int64 { return c.cfg.capacity/16 + c.segSize }

// segGarbage returns the garbage in sealed segments and the sealed segment
// with the largest share of garbage (the most space reclaimed per byte
// copied). c.mu is held.
func (c *Badger) segGarbage() (total int64, worst *segment) {
	for _, s := range c.segs {
		if !s.sealed || s.dead || s.end == 0 {
			continue
		}
		g := s.end - s.live
		total += g
		// A segment without live chunks goes when its last reader does:
		// nothing to move. Otherwise pick the largest g/end.
		if g > 0 && s.live > 0 && (worst == nil || float64(g)*float64(worst.end) > float64(worst.end-worst.live)*float64(s.end)) {
			worst = s
		}
	}
	return total, worst
}

// compactSegments rewrites the live chunks of the segments with the most
// garbage into the active segment, and deletes them, until the garbage left
// in sealed segments is within segGarbageAllowance. (Segments whose chunks
// are all evicted are deleted at once by the eviction itself.)
func (c *Badger) compactSegments(ctx context.Context) {
	c.mu.Lock()
	rounds := len(c.segs) // each segment at most once
	c.mu.Unlock()
	for ; rounds > 0 && ctx.Err() == nil; rounds-- {
		c.mu.Lock()
		total, worst := c.segGarbage()
		c.mu.Unlock()
		if worst == nil || total <= c.segGarbageAllowance() {
			return
		}
		if err := c.compactSegment(ctx, worst); err != nil {
			c.cfg.logger.Warn("blobcache: compact segment", "dir", c.dir, "segment", segName(worst.id), "err", err)
			return
		}
		c.st.gcRuns.Add(1)
	}
}

// move is a chunk being moved by compactSegment, from off in the segment
// being compacted to nof in ns.
type move struct {
	e        *entry
	k        key
	size     int64
	off, nof int64
	crc      uint32
	ns       *segment
}

// compactBatch is how many moved chunks one badger transaction re-points.
const compactBatch = 64

// compactSegment moves every live chunk of s to the active segment; s is
// deleted when its last chunk leaves. A chunk's extent record is re-pointed
// only after its bytes are written at the new place, so a crash at any
// instant leaves each chunk at its old or its new place, both intact.
func (c *Badger) compactSegment(ctx context.Context, s *segment) error {
	c.mu.Lock()
	if s.dead || !s.sealed {
		c.mu.Unlock()
		return nil
	}
	var todo []move
	for _, e := range c.idx.m {
		if e.seg == s {
			todo = append(todo, move{e: e, k: e.k, size: e.size, off: e.off, crc: e.crc})
		}
	}
	s.refs++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.unref(s)
		c.mu.Unlock()
	}()
	slices.SortFunc(todo, func(a, b move) int { return cmp.Compare(a.off, b.off) })

	var buf []byte
	for len(todo) > 0 && ctx.Err() == nil {
		batch := todo[:min(len(todo), compactBatch)]
		todo = todo[len(batch):]
		var moved []move
		var werr error
		for _, m := range batch {
			out, err := c.readRecord(s, m.off, m.k, m.crc, m.size, buf)
			if err != nil {
				c.dropCorrupt(m.k, m.e, err)
				continue
			}
			buf = out
			c.mu.Lock()
			ns, nof, err := c.reserve(m.size)
			c.mu.Unlock()
			if err != nil {
				werr = err
				break
			}
			m.ns, m.nof = ns, nof
			if err := c.writeRecord(ns, nof, m.k, m.crc, out); err != nil {
				c.mu.Lock()
				c.unref(ns)
				c.mu.Unlock()
				werr = err
				break
			}
			moved = append(moved, m)
		}
		if err := c.repoint(s, moved); err != nil {
			return err
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

// repoint commits the new extents of chunks moved out of s, for those still
// stored there, and drops the moves' references on their new segments.
func (c *Badger) repoint(s *segment, moved []move) error {
	if len(moved) == 0 {
		return nil
	}
	c.wmu.Lock() // no chunk is removed from the index meanwhile
	defer c.wmu.Unlock()
	live := moved[:0:0]
	c.mu.Lock()
	for _, m := range moved {
		if c.idx.m[m.k] == m.e && m.e.seg == s {
			live = append(live, m)
		}
	}
	c.mu.Unlock()
	txn := c.db.NewTransaction(true)
	defer txn.Discard()
	var err error
	for _, m := range live {
		x := extent{crc: m.crc, seg: m.ns.id, off: m.nof, size: m.size}
		if err = txn.Set(dbKey(prefixChunk, m.k), x.encode()); err != nil {
			break
		}
	}
	if err == nil {
		err = txn.Commit()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		for _, m := range live {
			s.live -= segRecLen(m.size)
			m.e.seg, m.e.off, m.e.checked = m.ns, m.nof, true
			m.ns.live += segRecLen(m.size)
		}
	}
	for _, m := range moved {
		c.unref(m.ns)
	}
	if err != nil {
		return fmt.Errorf("re-point %d moved chunks: %w", len(live), err)
	}
	return nil
}
