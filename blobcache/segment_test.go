package blobcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// segFiles lists the segment files of dir.
func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, segDirName, "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// extentsT counts the chunk records of the closed cache in dir that are
// extent records.
func extentsT(t *testing.T, dir string) (extents, records int) {
	t.Helper()
	db, err := badger.Open(badgerOptions(dir, newConfig(nil, 1<<30), minVlogFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{prefixChunk}
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			records++
			if err := it.Item().Value(func(v []byte) error {
				if isExtent(v) {
					extents++
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return extents, records
}

func putAllT(t *testing.T, c *Badger, data [][]byte, ds []digest.Digest) {
	t.Helper()
	for i := range ds {
		if err := c.Put(context.Background(), ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
}

func getAllT(t *testing.T, c *Badger, data [][]byte, ds []digest.Digest) {
	t.Helper()
	buf := make([]byte, 0, 8<<20)
	for i, d := range ds {
		got, err := c.GetInto(context.Background(), d, buf)
		if err != nil || !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d (%d bytes): %d bytes, %v", i, len(data[i]), len(got), err)
		}
	}
}

// TestSegmentsSurviveReopen stores chunks on both sides of the threshold and
// reads them back, before and after reopen, with both Verify modes.
func TestSegmentsSurviveReopen(t *testing.T) {
	for _, v := range []Verify{VerifyCRC32C, VerifySHA256} {
		dir := t.TempDir()
		ctx := context.Background()
		var data [][]byte
		var ds []digest.Digest
		var wantExtents int
		for i, size := range []int{100, 1 << 10, DefaultSegmentThreshold - 1, DefaultSegmentThreshold, 64 << 10, 256 << 10, 1 << 20, 4 << 20} {
			d, dg := chunksT(2, size, uint64(i))
			data, ds = append(data, d...), append(ds, dg...)
			if size >= DefaultSegmentThreshold {
				wantExtents += 2
			}
		}
		c := openT(t, dir, WithCapacity(64<<20), WithVerify(v))
		putAllT(t, c, data, ds)
		getAllT(t, c, data, ds)
		closeT(t, c)
		if n := len(segFiles(t, dir)); n == 0 {
			t.Fatal("no segment file written")
		}
		if x, n := extentsT(t, dir); x != wantExtents || n != len(ds) {
			t.Fatalf("%d extent records of %d chunk records, want %d of %d", x, n, wantExtents, len(ds))
		}
		c = openT(t, dir, WithCapacity(64<<20), WithVerify(v))
		if s := c.Stats(); s.Entries != int64(len(ds)) {
			t.Fatalf("after reopen: %+v", s)
		}
		getAllT(t, c, data, ds)
		// New large chunks go to a new segment: no process appends to one
		// left by another.
		before := len(segFiles(t, dir))
		more, mds := chunksT(1, 256<<10, 99)
		if err := c.Put(ctx, mds[0], more[0]); err != nil {
			t.Fatal(err)
		}
		if after := len(segFiles(t, dir)); after != before+1 {
			t.Fatalf("%d segment files after a Put, %d before", after, before)
		}
		getAllT(t, c, append(data, more...), append(ds, mds...))
	}
}

// TestOldLayoutStaysReadable opens a directory whose chunks were all stored in
// badger (as before segment files, or with the threshold above every chunk)
// with the default threshold: old records are served, new large chunks go to
// segments, and both survive reopen.
func TestOldLayoutStaysReadable(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	old, ods := chunksT(4, 256<<10, 5)
	c := openT(t, dir, WithCapacity(16<<20), WithSegmentThreshold(MaxChunkSize+1))
	for i := range ods {
		if err := c.Put(ctx, ods[i], old[i]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, c)
	if n := len(segFiles(t, dir)); n != 0 {
		t.Fatalf("%d segment files with the threshold above every chunk", n)
	}
	c = openT(t, dir, WithCapacity(16<<20))
	getAllT(t, c, old, ods)
	nw, nds := chunksT(4, 256<<10, 6)
	for i := range nds {
		if err := c.Put(ctx, nds[i], nw[i]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, c)
	if x, n := extentsT(t, dir); x != 4 || n != 8 {
		t.Fatalf("%d extent records of %d, want 4 of 8", x, n)
	}
	c = openT(t, dir, WithCapacity(16<<20))
	getAllT(t, c, append(old, nw...), append(ods, nds...))
}

// TestSegmentTornTail simulates a process killed in the middle of a large Put:
// a record cut short at the end of the last segment, and a new segment file
// holding only part of a record. Neither was acknowledged, so Open must keep
// every committed chunk, cut the tail, delete the segment without live
// chunks, and go on appending elsewhere.
func TestSegmentTornTail(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	data, ds := chunksT(6, 300<<10, 8)
	c := openT(t, dir, WithCapacity(64<<20))
	putAllT(t, c, data, ds)
	closeT(t, c)
	segs := segFiles(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segment files %v, want one", segs)
	}
	fi, err := os.Stat(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	committed := fi.Size()
	// A torn record: a valid header for a chunk that was never committed,
	// then half its bytes.
	torn, tds := chunksT(1, 300<<10, 9)
	tk, _ := parseDigest(tds[0])
	rec := make([]byte, segHdrLen+len(torn[0])/2)
	encodeSegHeader(rec, crc32c(torn[0]), int64(len(torn[0])), tk)
	copy(rec[segHdrLen:], torn[0])
	f, err := os.OpenFile(segs[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(rec); err != nil {
		t.Fatal(err)
	}
	f.Close()
	orphan := filepath.Join(dir, segDirName, segName(7))
	if err := os.WriteFile(orphan, rec[:segHdrLen+100], 0o600); err != nil {
		t.Fatal(err)
	}

	c = openT(t, dir, WithCapacity(64<<20))
	getAllT(t, c, data, ds)
	if ok, _ := c.Has(ctx, tds[0]); ok {
		t.Fatal("torn chunk listed")
	}
	if fi, err := os.Stat(segs[0]); err != nil || fi.Size() != committed {
		t.Fatalf("segment after reopen: %v bytes, %v; want the torn tail cut at %d", fi.Size(), err, committed)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("segment without live chunks kept: %v", err)
	}
	// New segments get ids above every file seen, even deleted ones.
	if err := c.Put(ctx, tds[0], torn[0]); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	id := c.active.id
	c.mu.Unlock()
	if id != 8 {
		t.Fatalf("new segment id %d, want 8", id)
	}
	closeT(t, c)
	c = openT(t, dir, WithCapacity(64<<20))
	getAllT(t, c, append(data, torn...), append(ds, tds...))
}

// TestSegmentMissingOrShort checks that Open drops extent records that point
// at a segment that is gone or too short (a power loss can lose file data
// that badger's log kept), and serves the rest.
func TestSegmentMissingOrShort(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// 1 MiB segments (VLF): three segments of four chunks.
	data, ds := chunksT(12, 256<<10, 10)
	opts := []Option{WithCapacity(64 << 20), WithValueLogFileSize(1 << 20)}
	c := openT(t, dir, opts...)
	putAllT(t, c, data, ds)
	closeT(t, c)
	segs := segFiles(t, dir)
	if len(segs) != 3 {
		t.Fatalf("segment files %v, want 3", segs)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(segs[1], 2*segRecLen(256<<10)+10); err != nil {
		t.Fatal(err)
	}
	c = openT(t, dir, opts...)
	if got, want := presentT(t, c, ds), "000011001111"; got != want {
		t.Fatalf("present %s, want %s", got, want)
	}
	for i, d := range ds {
		if got, err := c.Get(ctx, d); err == nil && !bytes.Equal(got, data[i]) || err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	if s := c.Stats(); s.Corrupt != 0 || s.Entries != 6 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestSegmentEvictionAndCompaction fills the cache, keeps every other chunk
// hot and writes as much again: the cold chunks are evicted, leaving each
// segment half garbage. Collection must compact (rewrite the live chunks and
// delete the old segments) until the garbage is within capacity/16 + one
// segment, keep
// every live chunk readable (also after reopen), and keep the directory
// within DiskLimit.
func TestSegmentEvictionAndCompaction(t *testing.T) {
	const capacity = 8 << 20
	const size = 256 << 10
	dir := t.TempDir()
	ctx := context.Background()
	// Long GC interval: the test drives the collection (a kick can still run
	// one in the background; both are safe together).
	opts := []Option{WithCapacity(capacity), WithValueLogFileSize(1 << 20), WithGCInterval(1 << 40)}
	c := openT(t, dir, opts...)
	data, ds := chunksT(32, size, 11)
	putAllT(t, c, data, ds)
	if n := len(segFiles(t, dir)); n != 8 {
		t.Fatalf("%d segment files for 32 chunks of 256 KiB in 1 MiB segments, want 8", n)
	}
	var hot [][]byte
	var hds []digest.Digest
	for i := 0; i < len(ds); i += 2 {
		if _, err := c.Get(ctx, ds[i]); err != nil {
			t.Fatal(err)
		}
		hot, hds = append(hot, data[i]), append(hds, ds[i])
	}
	more, mds := chunksT(16, size, 12)
	for i := range mds {
		if err := c.Put(ctx, mds[i], more[i]); err != nil {
			t.Fatal(err)
		}
	}
	if s := c.Stats(); s.Evictions != 16 || s.Entries != 32 {
		t.Fatalf("stats: %+v", s)
	}
	c.collect(ctx, true)
	c.mu.Lock()
	garbage, _ := c.segGarbage()
	nsegs := len(c.segs)
	c.mu.Unlock()
	s := c.Stats()
	t.Logf("after collect: %d segments, garbage %d KiB, %d compactions, disk %.1f MiB, limit %.1f MiB",
		nsegs, garbage>>10, s.GCRuns, float64(s.DiskSize)/(1<<20), float64(s.DiskLimit)/(1<<20))
	if garbage > c.segGarbageAllowance() {
		t.Fatalf("garbage in sealed segments %d above capacity/16 + a segment", garbage)
	}
	if s.GCRuns == 0 {
		t.Fatal("no segment compacted")
	}
	if nsegs > 10 {
		t.Fatalf("%d segments for 8 MiB of live chunks in 1 MiB segments", nsegs)
	}
	if s.DiskSize > s.DiskLimit {
		t.Fatalf("disk %d above limit %d", s.DiskSize, s.DiskLimit)
	}
	live := append(hot, more...)
	lds := append(hds, mds...)
	getAllT(t, c, live, lds)
	closeT(t, c) // a background collection may have run meanwhile
	if n := len(segFiles(t, dir)); n != len(c.segs) {
		t.Fatalf("%d segment files on disk, %d in the cache", n, len(c.segs))
	}
	c = openT(t, dir, opts...)
	getAllT(t, c, live, lds)
	if s := c.Stats(); s.Entries != 32 || s.Corrupt != 0 {
		t.Fatalf("after reopen: %+v", s)
	}
}

// TestSegmentsDeletedWhenDead writes four times the capacity of large chunks
// with no hot set: whole segments die and must be deleted at once, without
// compaction.
func TestSegmentsDeletedWhenDead(t *testing.T) {
	const capacity = 8 << 20
	dir := t.TempDir()
	ctx := context.Background()
	c := openT(t, dir, WithCapacity(capacity), WithValueLogFileSize(1<<20), WithGCInterval(1<<40))
	for i := range 4 {
		data, ds := chunksT(32, 256<<10, uint64(100+i))
		for j := range ds {
			if err := c.Put(ctx, ds[j], data[j]); err != nil {
				t.Fatal(err)
			}
		}
	}
	n := len(segFiles(t, dir))
	c.mu.Lock()
	created := c.lastSegID
	c.mu.Unlock()
	s := c.Stats()
	t.Logf("%d segments created, %d left; disk %.1f MiB, limit %.1f MiB", created, n, float64(s.DiskSize)/(1<<20), float64(s.DiskLimit)/(1<<20))
	// 8 segments of live chunks and the active one.
	if created != 32 || n > 9 {
		t.Fatalf("%d segment files left of %d created, want at most 9 of 32 (nothing to compact)", n, created)
	}
	if s.DiskSize > s.DiskLimit {
		t.Fatalf("disk %d above limit %d", s.DiskSize, s.DiskLimit)
	}
}

// TestSegmentIDsNotReused removes the newest segment while its chunks'
// records remain (a crash between the unlink and the commit of their
// eviction): Open drops them, and new segments get ids above the removed one.
func TestSegmentIDsNotReused(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	opts := []Option{WithCapacity(64 << 20), WithValueLogFileSize(1 << 20)}
	data, ds := chunksT(8, 256<<10, 13)
	c := openT(t, dir, opts...)
	putAllT(t, c, data, ds)
	closeT(t, c)
	segs := segFiles(t, dir)
	if len(segs) != 2 {
		t.Fatalf("segment files %v, want 2", segs)
	}
	if err := os.Remove(segs[1]); err != nil { // id 2
		t.Fatal(err)
	}
	c = openT(t, dir, opts...)
	if got, want := presentT(t, c, ds), "11110000"; got != want {
		t.Fatalf("present %s, want %s", got, want)
	}
	if err := c.Put(ctx, ds[4], data[4]); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	id := c.active.id
	c.mu.Unlock()
	if id != 3 {
		t.Fatalf("new segment id %d, want 3", id)
	}
	getAllT(t, c, data[:5], ds[:5])
}

// TestSegmentWriteENOSPC makes segment writes fail as on a full filesystem
// (part of the record written, then ENOSPC): Put returns ErrNoSpace and
// stores nothing, the process lives on, later Puts store again, and the
// partial record is never served, also after reopen.
func TestSegmentWriteENOSPC(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	c := openT(t, dir, WithCapacity(16<<20))
	data, ds := chunksT(3, 256<<10, 14)
	if err := c.Put(ctx, ds[0], data[0]); err != nil {
		t.Fatal(err)
	}
	real := pwritev
	t.Cleanup(func() { pwritev = real })
	calls := 0
	pwritev = func(fd int, iovs [][]byte, off int64) (int, error) {
		if calls++; calls == 1 {
			return real(fd, iovs[:1], off) // the header lands, the bytes do not
		}
		return 0, syscall.ENOSPC
	}
	err := c.Put(ctx, ds[1], data[1])
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put on a full disk = %v, want ErrNoSpace", err)
	}
	if ok, _ := c.Has(ctx, ds[1]); ok {
		t.Fatal("chunk listed after a failed write")
	}
	if s := c.Stats(); s.NoSpace != 1 || s.Entries != 1 {
		t.Fatalf("stats: %+v", s)
	}
	pwritev = real
	if err := c.Put(ctx, ds[2], data[2]); err != nil {
		t.Fatal(err)
	}
	getAllT(t, c, [][]byte{data[0], data[2]}, []digest.Digest{ds[0], ds[2]})
	closeT(t, c)
	c = openT(t, dir, WithCapacity(16<<20))
	if got, want := presentT(t, c, ds), "101"; got != want {
		t.Fatalf("present %s after reopen, want %s", got, want)
	}
	getAllT(t, c, [][]byte{data[0], data[2]}, []digest.Digest{ds[0], ds[2]})
}

func TestOpenRejectsBadSegmentThreshold(t *testing.T) {
	for _, n := range []int64{0, -1} {
		if _, err := Open(t.TempDir(), WithSegmentThreshold(n)); err == nil {
			t.Fatalf("Open with segment threshold %d succeeded", n)
		}
	}
}

// TestSegmentsConcurrent runs Puts, Gets, evictions, segment deletions and
// compactions all at once (run it with -race): every Get returns the chunk's
// bytes or a miss, nothing is found corrupt, and after a last collection the
// directory is within DiskLimit.
func TestSegmentsConcurrent(t *testing.T) {
	const capacity = 4 << 20
	dir := t.TempDir()
	c := openT(t, dir, WithCapacity(capacity), WithValueLogFileSize(1<<20), WithGCInterval(5*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var mu sync.Mutex
	var all []digest.Digest
	g, gctx := errgroup.WithContext(ctx)
	for w := range 4 {
		g.Go(func() error {
			r := rand.New(rand.NewPCG(uint64(w), 3))
			buf := make([]byte, 0, 512<<10)
			for gctx.Err() == nil {
				if r.IntN(2) == 0 {
					data, d := randomChunk(r, 1+r.IntN(512<<10))
					if err := c.Put(gctx, d, data); err != nil && gctx.Err() == nil {
						return err
					}
					mu.Lock()
					all = append(all, d)
					mu.Unlock()
					continue
				}
				mu.Lock()
				if len(all) == 0 {
					mu.Unlock()
					continue
				}
				d := all[len(all)-1-r.IntN(min(len(all), 24))] // mostly recent: mostly hits
				mu.Unlock()
				got, err := c.GetInto(gctx, d, buf)
				switch {
				case err == nil && digest.FromBytes(got) != d:
					return fmt.Errorf("chunk %s: served bytes hash to %s", d, digest.FromBytes(got))
				case err != nil && !errors.Is(err, ErrNotFound) && gctx.Err() == nil:
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		for gctx.Err() == nil {
			c.collect(gctx, false)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	c.collect(context.Background(), true)
	s := c.Stats()
	t.Logf("%d Puts, %d hits, %d misses, %d evictions, %d compactions; disk %.1f MiB, limit %.1f MiB",
		s.Puts, s.Hits, s.Misses, s.Evictions, s.GCRuns, float64(s.DiskSize)/(1<<20), float64(s.DiskLimit)/(1<<20))
	if s.Corrupt != 0 || s.Size > capacity {
		t.Fatalf("stats: %+v", s)
	}
	if s.DiskSize > s.DiskLimit {
		t.Fatalf("disk %d above limit %d", s.DiskSize, s.DiskLimit)
	}
	closeT(t, c)
	c = openT(t, dir, WithCapacity(capacity), WithVerify(VerifySHA256))
	for _, d := range all {
		if got, err := c.Get(context.Background(), d); err == nil && digest.FromBytes(got) != d || err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("chunk %s after reopen: %v", d, err)
		}
	}
	if s := c.Stats(); s.Corrupt != 0 {
		t.Fatalf("after reopen: %+v", s)
	}
}
