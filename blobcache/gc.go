package blobcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// loop is the background goroutine owned by a Badger cache; Close stops it.
func (c *Badger) loop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.cfg.gcInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.saveAccessTimes(); err != nil {
				c.cfg.logger.Warn("blobcache: save access times", "dir", c.dir, "err", err)
			}
			c.collect(ctx, false)
		case <-c.gcKick:
			// Flush badger's memtable only when chunks kept in badger were
			// evicted: segment garbage needs no flush (and a flush costs
			// a new 8 MiB memtable and a level-0 compaction).
			c.collect(ctx, c.evictedSinceGC.Load() >= c.vlogFileSize)
		}
	}
}

// collect compacts segment files (compactSegments) and runs badger's
// value-log garbage collection. After an eviction burst
// (force) it first flushes the memtable so that the deletions reach the LSM
// tree's compaction, which is where badger learns which value-log bytes are
// garbage. When the directory is still above its bound, it lowers the discard
// ratio step by step, flattening the LSM tree first so that every deletion is
// accounted.
func (c *Badger) collect(ctx context.Context, force bool) {
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	bound := c.cfg.capacity + c.DiskSlack()
	over := func() bool {
		n, err := dirSize(c.dir)
		return err == nil && n > bound
	}
	c.compactSegments(ctx)
	if force || over() {
		c.evictedSinceGC.Store(0)
		if err := c.flushMemtable(); err != nil {
			c.cfg.logger.Warn("blobcache: flush memtable", "dir", c.dir, "err", err)
		}
	}
	c.runGC(ctx, gcDiscardRatio)
	if !over() {
		return
	}
	if err := c.db.Flatten(1); err != nil {
		c.cfg.logger.Warn("blobcache: flatten", "dir", c.dir, "err", err)
	}
	for _, ratio := range []float64{0.25, 0.1, 0.01} {
		if !over() || ctx.Err() != nil {
			return
		}
		c.runGC(ctx, ratio)
	}
}

// runGC rewrites value-log files while badger finds one with at least ratio
// garbage.
func (c *Badger) runGC(ctx context.Context, ratio float64) {
	for ctx.Err() == nil {
		err := c.db.RunValueLogGC(ratio)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				c.cfg.logger.Warn("blobcache: value-log gc", "dir", c.dir, "err", err)
			}
			return
		}
		c.st.gcRuns.Add(1)
	}
}

// flushKey is a scratch key under its own prefix; dropping that prefix is the
// one public badger call that flushes the memtable (and compacts level 0).
var flushKey = []byte{'f'}

// flushMemtable writes every pending write to an LSM table and compacts level
// 0, so that deleted chunks show up in badger's discard statistics.
func (c *Badger) flushMemtable() error {
	c.wmu.Lock() // DropPrefix refuses concurrent writes
	defer c.wmu.Unlock()
	if err := c.db.Update(func(txn *badger.Txn) error { return txn.Set(flushKey, nil) }); err != nil {
		return err
	}
	return c.db.DropPrefix(flushKey)
}

// saveAccessTimes persists the access times that changed since the last save
// into the chunks' meta records, so that Open restores the LRU order. Only the
// recently used end of the unpinned list (and the pinned list, usually small)
// is visited.
func (c *Badger) saveAccessTimes() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	type upd struct {
		e *entry
		k key
		m meta
	}
	var ups []upd
	mark := c.lastSaved
	c.mu.Lock()
	visit := func(e *entry) {
		if e.atime != e.savedAtime {
			ups = append(ups, upd{e: e, k: e.k, m: meta{size: e.size, atime: e.atime}})
		}
		mark = max(mark, e.atime)
	}
	for e := c.idx.unpinned.front(); !c.idx.unpinned.end(e) && e.atime > c.lastSaved; e = e.next {
		visit(e)
	}
	for e := c.idx.pinned.front(); !c.idx.pinned.end(e); e = e.next {
		visit(e)
	}
	c.mu.Unlock()
	if len(ups) == 0 {
		return nil
	}
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	for _, u := range ups {
		if err := wb.Set(dbKey(prefixMeta, u.k), u.m.encode()); err != nil {
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("%d meta records: %w", len(ups), err)
	}
	// Entries cannot have been removed meanwhile: removal needs wmu.
	c.mu.Lock()
	for _, u := range ups {
		u.e.savedAtime = u.m.atime
	}
	c.mu.Unlock()
	c.lastSaved = mark
	return nil
}

// dirSize returns the disk space allocated to the files in dir and its
// subdirectories (badger keeps all its files at the top level, the segment
// files are in dir/segments). Value-log and WAL files are sparse memory
// mappings, so their apparent size overstates the disk they use.
func dirSize(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, de := range ents {
		p := filepath.Join(dir, de.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			continue // removed meanwhile
		}
		if fi.IsDir() {
			if m, err := dirSize(p); err == nil {
				n += m
			}
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
	}
	return n, nil
}
