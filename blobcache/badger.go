package blobcache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Badger is a Cache backed by a badger/v4 database in one directory. Make it
// with Open.
type Badger struct {
	dir          string
	cfg          config
	db           *badger.DB
	vlogFileSize int64

	life   sync.RWMutex // shared by every call, exclusive in Close
	closed bool         // guarded by life

	// wmu serialises every change to the database (Put, eviction, dropping a
	// corrupt chunk, saving access times, forcing a memtable flush), so the
	// index and the database never disagree about which chunks exist.
	wmu       sync.Mutex
	lastSaved int64 // access-time watermark of the last save; guarded by wmu

	mu  sync.Mutex // guards idx and the segments' state
	idx *index

	// Segment store (segment.go): chunks of segThreshold bytes or more.
	segThreshold int64
	segSize      int64               // a segment is sealed once this full
	segs         map[uint64]*segment // guarded by mu
	active       *segment            // guarded by mu; nil until the first large Put
	lastSegID    uint64              // guarded by mu

	gcMu           sync.Mutex   // one collection at a time (the loop's, or a test's)
	evictedSinceGC atomic.Int64 // bytes of chunks in badger evicted since the last flush
	segEvicted     atomic.Int64 // bytes of chunks in segments evicted since the last kick
	gcKick         chan struct{}
	stop           context.CancelFunc
	done           chan struct{}
	recPool        sync.Pool // *[]byte for assembling chunk records in Put
	st             counters
	space          *spaceGuard
}

// Badger tuning that does not depend on the capacity. Memtables are small
// because the LSM tree only holds keys, value pointers and 24-byte meta
// records: chunk bytes of ValueThreshold or more live in the value log.
const (
	memTableSize   = 4 << 20
	valueThreshold = 256
	// Value-log file size: derived from the capacity within
	// [defaultMinVlogFile, maxVlogFile]; WithValueLogFileSize may go down to
	// badger's minimum, minVlogFile. Badger refuses a value larger than a
	// file, so the file size also bounds the chunk size (chunk record header
	// included): 8 MiB leaves room for the 4 MiB chunks lazyfs may be
	// configured with.
	minVlogFile        = 1 << 20
	defaultMinVlogFile = 8 << 20
	maxVlogFile        = 128 << 20
	// gcDiscardRatio is badger's recommended ratio for routine collection: a
	// value-log file is rewritten when half of it is garbage.
	gcDiscardRatio = 0.5
)

// Open opens (creating if needed) the cache in dir. Badger allows one process
// per directory; a second Open of the same directory fails with ErrLocked.
//
// Bounds: Stats.Size (chunk bytes) never exceeds the capacity; the least
// recently used unpinned chunk is evicted first. On disk, chunks of at least
// the segment threshold (WithSegmentThreshold, default 4 KiB) are appended
// to segment files of about VLF bytes under dir/segments, badger keeping a
// small extent record for each; smaller chunks (and chunks stored before
// segment files existed) live in badger's value-log files of VLF bytes
// (default capacity/16, clamped to [8 MiB, 128 MiB]; chunks up to VLF-40
// bytes are accepted, ErrTooLarge above, and never above MaxChunkSize).
// Evicting the last live chunk of a segment deletes it; a background
// goroutine owned by the cache compacts the segments with the largest share
// of garbage while sealed segments hold more than capacity/16 + VLF of it,
// and rewrites value-log files that are at least half garbage. It runs every
// GC interval and as soon as VLF bytes have been evicted since the last
// collection; when the directory is still above the bound it collects
// value-log files with less garbage too. The directory's disk use stays
// within capacity + DiskSlack() (Stats.DiskLimit) right after a collection;
// between collections it can exceed that by up to one more VLF.
//
// LRU order across reopen: the order in memory is exact; access times are
// persisted lazily (every GC interval and on Close) in each chunk's meta
// record, and Open rebuilds the order by sorting those records. After a crash
// the order is as of the last save, i.e. approximate.
//
// Crash safety: every Put is one badger transaction holding the chunk record
// (or, for a chunk in a segment, its extent record, committed only after the
// chunk's bytes were written to the segment) and its meta record. Writes are
// not fsynced by default (WithSyncWrites): a process killed at any instant
// loses no acknowledged Put, because badger writes through mmap and segments
// through write(2), both into the page cache; on the next Open badger
// replays its write-ahead log and drops a torn tail, so a chunk is either
// wholly present or absent, and Open cuts segment bytes that no record
// references (a torn tail) and drops extents whose segment is missing or
// short. A chunk whose bytes are damaged anyway (power loss, bit rot) fails
// the check on Get and is dropped, never served.
//
// Disk space: badger writes through mmap into sparse files, and a write that
// finds the filesystem full kills the process with SIGBUS (a segment write
// gets ENOSPC instead: Put returns ErrNoSpace). So Open refuses
// (ErrNoSpace, naming the directory, the capacity and the free space) a cache
// whose capacity + DiskSlack (as if empty) + the free-space reserve does not
// fit the filesystem's free space plus what the directory already holds; and
// Put stores nothing (ErrNoSpace, counted in Stats.NoSpace) while the
// filesystem's free space is below the reserve, which covers everything
// badger may still write through mmap: 3 × VLF + 3 × 8 MiB of write-ahead
// logs + 16 MiB (WithMinFreeSpace overrides it). Caching resumes once the
// free space is back above the reserve + VLF. Another process can still fill
// the disk faster than the cache notices; the reserve is what makes that
// unlikely, not impossible.
func Open(dir string, opts ...Option) (*Badger, error) {
	cfg := newConfig(opts, DefaultCapacity)
	if cfg.capacity <= 0 {
		return nil, fmt.Errorf("open cache %s: capacity %d must be positive", dir, cfg.capacity)
	}
	if cfg.segThreshold <= 0 {
		return nil, fmt.Errorf("open cache %s: segment threshold %d must be positive", dir, cfg.segThreshold)
	}
	if dir == "" {
		return nil, errors.New("open cache: empty directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	if err := removeEmptyLogs(dir, cfg.logger); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	vlf := vlogFileSize(cfg)
	reserve := cfg.minFree
	if reserve <= 0 {
		reserve = reserveFor(vlf)
	}
	if err := checkFits(dir, cfg.capacity, diskSlack(cfg.capacity, vlf, 0), reserve, freeSpace); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	db, err := badger.Open(badgerOptions(dir, cfg, vlf))
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	c := &Badger{
		dir:          dir,
		cfg:          cfg,
		db:           db,
		vlogFileSize: vlf,
		segThreshold: cfg.segThreshold,
		segSize:      vlf,
		idx:          newIndex(),
		gcKick:       make(chan struct{}, 1),
		stop:         stop,
		done:         make(chan struct{}),
		space:        &spaceGuard{dir: dir, reserve: reserve, resume: reserve + vlf, free: freeSpace},
	}
	if c.segs, c.lastSegID, err = c.openSegments(); err != nil {
		stop()
		db.Close()
		return nil, fmt.Errorf("open cache %s: segments: %w", dir, err)
	}
	if err := c.load(); err != nil {
		stop()
		db.Close()
		closeSegments(c.segs)
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	go c.loop(ctx)
	return c, nil
}

// removeEmptyLogs deletes the zero-length write-ahead (.mem) and value-log
// (.vlog) files that a process killed while creating one leaves behind:
// badger v4 refuses to open a directory holding one (dgraph-io/badger#2207,
// fix pending in #2331). Such a file holds no data. It takes badger's own
// directory lock meanwhile, so it never touches a directory in use.
func removeEmptyLogs(dir string, log *slog.Logger) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close() // releases the lock
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return ErrLocked
		}
		return fmt.Errorf("lock: %w", err)
	}
	ents, err := f.ReadDir(-1)
	if err != nil {
		return err
	}
	for _, de := range ents {
		name := de.Name()
		if !de.Type().IsRegular() || !strings.HasSuffix(name, ".mem") && !strings.HasSuffix(name, ".vlog") {
			continue
		}
		if fi, err := de.Info(); err != nil || fi.Size() != 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return err
		}
		log.Warn("blobcache: removed empty log file left by a crash", "dir", dir, "file", name)
	}
	return nil
}

// vlogFileSize returns the value-log file size for cfg.
func vlogFileSize(cfg config) int64 {
	if v := cfg.vlogFileSize; v > 0 {
		return min(max(v, minVlogFile), maxVlogFile)
	}
	return min(max(cfg.capacity/16, defaultMinVlogFile), maxVlogFile)
}

// maxChunk is the largest chunk c accepts.
func (c *Badger) maxChunk() int64 {
	return min(c.cfg.capacity, MaxChunkSize, c.vlogFileSize-chunkHeaderLen)
}

// DiskSlack is the documented margin above the capacity within which the
// directory stays right after a collection:
//
//	3 × VLF (the value-log file being written, one that is collected only
//	        once half of it is garbage, and the garbage that triggers the next
//	        collection)
//	+ capacity/64 (garbage left in value-log files that are almost all live)
//	+ capacity/16 + VLF (garbage that sealed segment files may keep, see
//	        compactSegments; segment files are VLF bytes too)
//	+ 2 × VLF (the active segment file, and the copy of a segment being
//	        compacted)
//	+ 256 bytes per stored chunk (keys, value pointers, extent and meta
//	        records in the LSM tree, segment record headers)
//	+ 16 MiB (write-ahead logs and badger's fixed files).
//
// Stats.DiskLimit reports capacity + DiskSlack.
func (c *Badger) DiskSlack() int64 {
	c.mu.Lock()
	n := int64(len(c.idx.m))
	c.mu.Unlock()
	return diskSlack(c.cfg.capacity, c.vlogFileSize, n)
}

func diskSlack(capacity, vlf, entries int64) int64 {
	return 6*vlf + capacity/64 + capacity/16 + 256*entries + 16<<20
}

func badgerOptions(dir string, cfg config, vlf int64) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{cfg.logger}).
		WithSyncWrites(cfg.syncWrites).
		WithMetricsEnabled(false).
		WithDetectConflicts(false). // the cache serialises its own writes
		WithCompression(options.None).
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(2 << 20).
		WithBaseLevelSize(8 << 20).
		WithBlockCacheSize(8 << 20).
		WithNumCompactors(2).
		WithNumVersionsToKeep(1).
		WithValueThreshold(valueThreshold).
		WithValueLogFileSize(vlf).
		WithCompactL0OnClose(true)
}

// load rebuilds the index from the meta records, drops records without their
// other half, and evicts down to the capacity if it shrank.
func (c *Badger) load() error {
	type rec struct {
		k key
		m meta
	}
	var recs []rec
	var drop []key
	metas := make(map[key]int) // index into recs
	exts := make(map[key]extent)
	err := c.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{prefixMeta}
		it := txn.NewIterator(opt)
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			var k key
			if len(item.Key()) != keyLen {
				continue // not ours; badger keeps its own keys elsewhere
			}
			copy(k[:], item.Key()[1:])
			var m meta
			err := item.Value(func(v []byte) error {
				var err error
				m, err = decodeMeta(v)
				return err
			})
			if err != nil {
				c.cfg.logger.Warn("blobcache: dropping chunk with bad meta record", "chunk", k.digest(), "err", err)
				drop = append(drop, k)
				continue
			}
			metas[k] = len(recs)
			recs = append(recs, rec{k, m})
		}
		it.Close()

		opt = badger.DefaultIteratorOptions
		opt.Prefix = []byte{prefixChunk}
		opt.PrefetchValues = false
		it = txn.NewIterator(opt)
		defer it.Close()
		seen := make([]bool, len(recs))
		for it.Rewind(); it.Valid(); it.Next() {
			var k key
			if len(it.Item().Key()) != keyLen {
				continue
			}
			copy(k[:], it.Item().Key()[1:])
			i, ok := metas[k]
			if !ok {
				drop = append(drop, k) // chunk without meta
				continue
			}
			if it.Item().ValueSize() < valueThreshold { // in the LSM tree: cheap to read
				var x extent
				isExt := false
				err := it.Item().Value(func(v []byte) error {
					if !isExtent(v) {
						return nil
					}
					isExt = true
					var err error
					x, err = decodeExtent(v)
					return err
				})
				if err == nil && isExt {
					// A record may name a segment deleted just before a
					// crash (the unlink precedes the commit of the
					// evictions): new ids stay above every id referenced,
					// so such a record never names a new segment.
					c.lastSegID = max(c.lastSegID, x.seg)
					err = c.checkExtent(x, recs[i].m.size)
				}
				if err != nil {
					c.cfg.logger.Warn("blobcache: dropping chunk with bad extent record", "chunk", k.digest(), "err", err)
					drop = append(drop, k)
					continue // the meta record goes too: seen[i] stays false
				}
				if isExt {
					exts[k] = x
				}
			}
			seen[i] = true
		}
		for i, ok := range seen {
			if !ok {
				drop = append(drop, recs[i].k) // meta without chunk
				recs[i].k = key{}
				recs[i].m.size = -1
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rebuild index: %w", err)
	}
	slices.SortFunc(recs, func(a, b rec) int { return cmp.Compare(a.m.atime, b.m.atime) })
	for _, r := range recs {
		if r.m.size < 0 {
			continue
		}
		e := &entry{k: r.k, size: r.m.size, atime: r.m.atime, savedAtime: r.m.atime}
		if x, ok := exts[r.k]; ok {
			e.seg, e.off, e.crc = c.segs[x.seg], x.off, x.crc
			e.seg.live += segRecLen(e.size)
		}
		c.idx.add(e)
		c.lastSaved = max(c.lastSaved, r.m.atime)
	}
	victims := c.idx.evictFor(0, c.cfg.capacity)
	for _, e := range victims {
		c.release(e)
		drop = append(drop, e.k)
		c.st.evictions.Add(1)
		c.st.evictedBytes.Add(e.size)
	}
	if len(drop) > 0 {
		if err := c.deleteKeys(drop); err != nil {
			return fmt.Errorf("drop %d stale chunks: %w", len(drop), err)
		}
	}
	c.settled(victims)
	return c.trimSegments()
}

// checkExtent checks an extent record read on Open against the segment files
// found and the chunk's meta record.
func (c *Badger) checkExtent(x extent, size int64) error {
	if x.size != size {
		return fmt.Errorf("extent of %d bytes, meta record says %d", x.size, size)
	}
	s := c.segs[x.seg]
	if s == nil {
		return fmt.Errorf("segment %s missing", segName(x.seg))
	}
	if x.off+segRecLen(x.size) > s.end {
		return fmt.Errorf("extent [%d, %d) beyond the end of segment %s (%d bytes)", x.off, x.off+segRecLen(x.size), segName(x.seg), s.end)
	}
	return nil
}

// trimSegments, on Open, deletes the segments left by earlier processes that
// hold no live chunk and cuts the others after their last live record: what
// follows is garbage (a torn tail, a record whose Put never committed, evicted
// chunks), and no process ever appends to them again.
func (c *Badger) trimSegments() error {
	ends := make(map[*segment]int64)
	for _, e := range c.idx.m {
		if e.seg != nil {
			ends[e.seg] = max(ends[e.seg], e.off+segRecLen(e.size))
		}
	}
	for _, s := range c.segs {
		if s.live == 0 {
			c.maybeDropSegment(s)
			continue
		}
		if end := ends[s]; end < s.end {
			if err := s.f.Truncate(end); err != nil {
				return fmt.Errorf("segment %s: truncate: %w", segName(s.id), err)
			}
			s.end = end
		}
	}
	return nil
}

// deleteKeys deletes both records of each chunk.
func (c *Badger) deleteKeys(ks []key) error {
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range ks {
		if err := wb.Delete(dbKey(prefixChunk, k)); err != nil {
			return err
		}
		if err := wb.Delete(dbKey(prefixMeta, k)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// begin takes the shared lifetime lock; callers defer c.life.RUnlock().
func (c *Badger) begin() error {
	c.life.RLock()
	if c.closed {
		c.life.RUnlock()
		return ErrClosed
	}
	return nil
}

// Get implements Cache.
func (c *Badger) Get(ctx context.Context, d digest.Digest) ([]byte, error) {
	return c.GetInto(ctx, d, nil)
}

// errBadChunk marks a stored chunk that failed to read or verify.
var errBadChunk = errors.New("stored chunk fails verification")

// GetInto is Get that returns the chunk in buf[:n] when cap(buf) is large
// enough, so a caller with a reusable buffer avoids a chunk-sized allocation.
func (c *Badger) GetInto(ctx context.Context, d digest.Digest, buf []byte) ([]byte, error) {
	k, err := parseDigest(d)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.begin(); err != nil {
		return nil, err
	}
	defer c.life.RUnlock()

	c.mu.Lock()
	e := c.idx.m[k]
	var size, off int64
	var seg *segment
	var crc uint32
	if e != nil {
		c.idx.touch(e, time.Now().UnixNano())
		size, seg, off, crc = e.size, e.seg, e.off, e.crc
		if seg != nil {
			seg.refs++ // keeps the file open if the chunk is evicted meanwhile
		}
	}
	c.mu.Unlock()
	if e == nil {
		c.st.misses.Add(1)
		return nil, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}

	var out []byte
	if seg != nil {
		out, err = c.readRecord(seg, off, k, crc, size, buf)
		c.mu.Lock()
		if err == nil && e.seg == seg && e.off == off {
			e.checked = true
		}
		c.unref(seg)
		c.mu.Unlock()
	} else {
		out, err = c.read(k, size, buf)
	}
	switch {
	case err == nil:
		c.st.hits.Add(1)
		c.st.bytesOut.Add(int64(len(out)))
		return out, nil
	case errors.Is(err, errBadChunk):
		c.dropCorrupt(k, e, err)
		c.st.misses.Add(1)
		return nil, fmt.Errorf("chunk %s: %w (dropped: %v)", d, ErrNotFound, err)
	default:
		return nil, fmt.Errorf("chunk %s: read: %w", d, err)
	}
}

// read copies the chunk k of the given size into buf and verifies the copy.
func (c *Badger) read(k key, size int64, buf []byte) ([]byte, error) {
	txn := c.db.NewTransaction(false)
	defer txn.Discard()
	var kb [keyLen]byte
	kb[0] = prefixChunk
	copy(kb[1:], k[:])
	item, err := txn.Get(kb[:])
	if errors.Is(err, badger.ErrKeyNotFound) {
		// The index lists only committed chunks and forgets them before they
		// are deleted, so the record has gone behind the cache's back.
		return nil, fmt.Errorf("%w: record missing", errBadChunk)
	}
	if err != nil {
		return nil, err
	}
	var out []byte
	err = item.Value(func(rec []byte) error {
		var err error
		out, err = c.verifyRecord(k, size, rec, buf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadChunk, err)
	}
	return out, nil
}

// verifyRecord copies the payload of rec, the stored record of chunk k of the
// given size, into buf and checks the copy: what Get returns is exactly what
// was checked, whatever happens to the mapped file meanwhile.
func (c *Badger) verifyRecord(k key, size int64, rec, buf []byte) ([]byte, error) {
	h, payload, err := decodeChunkRecord(rec)
	if err != nil {
		return nil, err
	}
	if h.k != k {
		return nil, fmt.Errorf("record belongs to %s", h.k.digest())
	}
	if int64(len(payload)) != size {
		return nil, fmt.Errorf("%d bytes, meta record says %d", len(payload), size)
	}
	out := copyInto(buf, payload)
	if c.cfg.verify == VerifySHA256 {
		if sha256.Sum256(out) != k {
			return nil, errors.New("sha256 differs")
		}
	} else if got := crc32c(out); got != h.crc {
		return nil, fmt.Errorf("crc32c %08x, recorded %08x", got, h.crc)
	}
	return out, nil
}

// dropCorrupt deletes the chunk k that failed verification when it was
// stored as bad (a compaction may have moved it meanwhile).
func (c *Badger) dropCorrupt(k key, bad *entry, cause error) {
	c.st.corrupt.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if e := c.idx.m[k]; e != nil {
		if e != bad {
			c.mu.Unlock()
			return // replaced by a new Put meanwhile
		}
		c.idx.remove(e)
		c.release(e)
	} else {
		bad = nil
	}
	c.mu.Unlock()
	err := c.deleteKeys([]key{k})
	if err == nil && bad != nil {
		c.settled([]*entry{bad})
	}
	c.cfg.logger.Warn("blobcache: dropped corrupt chunk", "chunk", k.digest(), "cause", cause, "delete_err", err)
}

// Put implements Cache.
func (c *Badger) Put(ctx context.Context, d digest.Digest, data []byte) error {
	return c.put(ctx, d, data, true, nil)
}

// PutVerified stores data like Put without hashing it again: the caller has
// just checked sha256(data) == d (as package fs does for every fetched
// chunk). A wrong claim stores bytes that Get serves; use Put otherwise.
func (c *Badger) PutVerified(ctx context.Context, d digest.Digest, data []byte) error {
	return c.put(ctx, d, data, false, nil)
}

// PutVerifiedChecksum is PutVerified with the record's checksum,
// Checksum(data), computed by the caller: right after it decoded or hashed
// the chunk, when the bytes are still in its CPU's cache (a cold pass over
// them costs several times more). A wrong sum stores a record that fails
// its check when read: Get then drops it as corrupt, a miss.
func (c *Badger) PutVerifiedChecksum(ctx context.Context, d digest.Digest, data []byte, sum uint32) error {
	return c.put(ctx, d, data, false, &sum)
}

// Checksum returns the checksum blobcache keeps with each chunk it stores
// (CRC-32C), for PutVerifiedChecksum.
func Checksum(data []byte) uint32 { return crc32c(data) }

func (c *Badger) put(ctx context.Context, d digest.Digest, data []byte, verify bool, sum *uint32) error {
	k, err := parseDigest(d)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	size := int64(len(data))
	if size > c.maxChunk() {
		return fmt.Errorf("chunk %s: %d bytes, limit %d: %w", d, size, c.maxChunk(), ErrTooLarge)
	}
	if err := c.begin(); err != nil {
		return err
	}
	defer c.life.RUnlock()
	if c.dedup(k) {
		return nil
	}
	if free, changed, err := c.space.check(size); err != nil {
		if changed {
			c.cfg.logger.Warn("blobcache: the disk is almost full; caching stops until space is freed (reads are not affected)",
				"dir", c.dir, "free", free, "reserve", c.space.reserve)
		}
		return fmt.Errorf("chunk %s: %w", d, err)
	} else if changed {
		c.cfg.logger.Info("blobcache: free space is back; caching resumes", "dir", c.dir, "free", free)
	}
	if verify {
		if sum := sha256.Sum256(data); sum != k {
			return mismatch(d, sum)
		}
	}
	var crc uint32
	if sum != nil {
		crc = *sum
	} else {
		crc = crc32c(data)
	}
	var rec []byte // the badger value: a chunk record, or an extent record
	var seg *segment
	var off int64
	if size >= c.segThreshold {
		c.mu.Lock()
		seg, off, err = c.reserve(size)
		c.mu.Unlock()
		if err != nil {
			return fmt.Errorf("chunk %s: segment: %w", d, err)
		}
		// Until the entry is added (or the Put fails), the reference keeps
		// the segment from being deleted under the write.
		defer func() {
			c.mu.Lock()
			c.unref(seg)
			c.mu.Unlock()
		}()
		if err := c.writeRecord(seg, off, k, crc, data); err != nil {
			if errors.Is(err, ErrNoSpace) {
				c.space.refused.Add(1)
			}
			return fmt.Errorf("chunk %s: %w", d, err)
		}
		rec = extent{crc: crc, seg: seg.id, off: off, size: size}.encode()
	} else {
		bp, _ := c.recPool.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		defer c.recPool.Put(bp) // badger copies values before Commit returns
		rec = *bp
		if n := chunkHeaderLen + len(data); cap(rec) >= n {
			rec = rec[:n]
		} else {
			rec = make([]byte, n)
		}
		*bp = rec
		chunkHeader{crc: crc, k: k}.encode(rec)
		copy(rec[chunkHeaderLen:], data)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	now := c.idx.stamp(time.Now().UnixNano())
	if e := c.idx.m[k]; e != nil { // a concurrent Put won
		c.idx.touch(e, now)
		c.mu.Unlock()
		c.st.dedups.Add(1)
		return nil
	}
	victims := c.idx.evictFor(size, c.cfg.capacity)
	for _, e := range victims {
		c.release(e)
	}
	c.mu.Unlock()
	defer c.evicted(victims)

	// One transaction deletes the victims and stores the chunk, unless the
	// victims are too many for one (a big chunk displacing tiny ones).
	txn := c.db.NewTransaction(true)
	defer txn.Discard()
	if len(victims) > maxVictimsPerTxn {
		if err := c.deleteKeys(keysOf(victims)); err != nil {
			return fmt.Errorf("chunk %s: evict %d chunks: %w", d, len(victims), err)
		}
	} else {
		for _, e := range victims {
			if err := errors.Join(txn.Delete(dbKey(prefixChunk, e.k)), txn.Delete(dbKey(prefixMeta, e.k))); err != nil {
				return fmt.Errorf("chunk %s: evict: %w", d, err)
			}
		}
	}
	if err := txn.Set(dbKey(prefixChunk, k), rec); err != nil {
		return fmt.Errorf("chunk %s: store: %w", d, err)
	}
	if err := txn.Set(dbKey(prefixMeta, k), meta{size: size, atime: now}.encode()); err != nil {
		return fmt.Errorf("chunk %s: store: %w", d, err)
	}
	if err := txn.Commit(); err != nil {
		// The victims are gone from the index; if their deletion failed with
		// the commit, Open finds them again and re-applies the bound.
		return fmt.Errorf("chunk %s: store: %w", d, err)
	}
	c.settled(victims)
	c.mu.Lock()
	e := &entry{k: k, size: size, atime: now, savedAtime: now}
	if seg != nil {
		e.seg, e.off, e.crc, e.checked = seg, off, crc, true
		seg.live += segRecLen(size)
	}
	c.idx.add(e)
	c.mu.Unlock()
	c.st.puts.Add(1)
	c.st.bytesIn.Add(size)
	return nil
}

// maxVictimsPerTxn bounds the deletions folded into a Put's transaction,
// well below badger's per-transaction entry limit.
const maxVictimsPerTxn = 256

func keysOf(es []*entry) []key {
	ks := make([]key, len(es))
	for i, e := range es {
		ks[i] = e.k
	}
	return ks
}

// evicted counts evicted chunks and kicks the collector after an eviction
// burst.
func (c *Badger) evicted(victims []*entry) {
	if len(victims) == 0 {
		return
	}
	var inBadger, inSegs int64
	for _, e := range victims {
		if e.seg != nil { // victims are out of the index: nobody moves them now
			inSegs += e.size
		} else {
			inBadger += e.size
		}
	}
	c.st.evictions.Add(int64(len(victims)))
	c.st.evictedBytes.Add(inBadger + inSegs)
	kick := false
	if inBadger > 0 && c.evictedSinceGC.Add(inBadger) >= c.vlogFileSize {
		kick = true
	}
	if inSegs > 0 && c.segEvicted.Add(inSegs) >= c.segSize {
		c.segEvicted.Store(0)
		kick = true
	}
	if kick {
		select {
		case c.gcKick <- struct{}{}:
		default:
		}
	}
}

// dedup refreshes k and reports true when it is already stored.
func (c *Badger) dedup(k key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.idx.m[k]; e != nil {
		c.idx.touch(e, time.Now().UnixNano())
		c.st.dedups.Add(1)
		return true
	}
	return false
}

// Has implements Cache.
func (c *Badger) Has(ctx context.Context, d digest.Digest) (bool, error) {
	k, err := parseDigest(d)
	if err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := c.begin(); err != nil {
		return false, err
	}
	defer c.life.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idx.m[k] != nil, nil
}

// Pin implements Pinner.
func (c *Badger) Pin(ds ...digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx.pinDigests(ds)
}

// Unpin implements Pinner.
func (c *Badger) Unpin(ds ...digest.Digest) {
	now := time.Now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idx.unpinDigests(ds, now)
}

// Stats implements Cache. It measures the directory's disk use (a few stat
// calls).
func (c *Badger) Stats() Stats {
	var s Stats
	c.st.fill(&s)
	s.NoSpace = c.space.refused.Load()
	c.mu.Lock()
	s.Entries = int64(len(c.idx.m))
	s.Size = c.idx.size
	s.Pinned = c.idx.npinned
	c.mu.Unlock()
	s.Capacity = c.cfg.capacity
	s.DiskSize, _ = dirSize(c.dir)
	s.DiskLimit = s.Capacity + diskSlack(c.cfg.capacity, c.vlogFileSize, s.Entries)
	return s
}

// Close implements Cache: it stops the collector, saves access times and
// closes the database.
func (c *Badger) Close() error {
	c.life.Lock()
	if c.closed {
		c.life.Unlock()
		return nil
	}
	c.closed = true
	c.life.Unlock()
	c.stop()
	<-c.done
	serr := c.saveAccessTimes()
	c.mu.Lock()
	closeSegments(c.segs)
	c.mu.Unlock()
	if err := c.db.Close(); err != nil {
		return fmt.Errorf("close cache %s: %w", c.dir, err)
	}
	if serr != nil {
		return fmt.Errorf("close cache %s: save access times: %w", c.dir, serr)
	}
	return nil
}
