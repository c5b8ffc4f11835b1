package blobcache

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Badger writes its value log, write-ahead logs and tables through mmap into
// sparse files: when the filesystem runs out of blocks, the write that
// faults a page in kills the process with SIGBUS instead of returning
// ENOSPC. So the cache never lets the free space of its filesystem fall
// below a reserve large enough for everything badger may still write
// through mmap: Put checks the free space first (one statfs) and, below the
// reserve, stores nothing and returns ErrNoSpace; callers such as package fs
// keep serving reads from the network. Open refuses a capacity that cannot
// fit the filesystem with its slack and the reserve.

// memTableFiles is the most write-ahead (.mem) files badger keeps mmapped
// for writing at once (the active memtable, two waiting to be flushed);
// each is 2 × memTableSize, sparse.
const memTableFiles = 3

// reserveFor returns the default free-space reserve for value-log files of
// vlf bytes:
//
//	2 × VLF (badger maps a new value-log file at twice the file size)
//	+ VLF (a garbage collection rewrites up to half a file's live bytes)
//	+ 3 × 2 × memtable size (write-ahead logs)
//	+ 16 MiB (tables written by compaction and flushes, the MANIFEST)
func reserveFor(vlf int64) int64 {
	return 3*vlf + memTableFiles*2*memTableSize + 16<<20
}

// freeSpace returns the bytes that unprivileged users may still allocate on
// the filesystem holding dir (the root-reserved blocks are left to the
// system).
func freeSpace(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// spaceGuard tracks whether the cache may write: it stops below the reserve
// and resumes once the free space is back above the reserve plus a margin
// (so that it does not flap at the boundary).
type spaceGuard struct {
	dir     string
	reserve int64
	resume  int64
	free    func(string) (int64, error)

	mu      sync.Mutex
	stopped bool
	last    time.Time // last statfs while stopped
	lastErr error

	refused atomic.Int64
}

// stoppedRecheck bounds how often a stopped guard calls statfs: Puts then
// fail fast without a system call each.
const stoppedRecheck = 100 * time.Millisecond

// check returns nil if a write of n more bytes may proceed, or an error
// wrapping ErrNoSpace. It reports whether the state changed (for logging).
func (g *spaceGuard) check(n int64) (free int64, changed bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped && time.Since(g.last) < stoppedRecheck {
		g.refused.Add(1)
		return -1, false, g.lastErr
	}
	free, ferr := g.free(g.dir)
	if ferr != nil {
		// Not knowing is not a reason to stop caching; badger's own
		// write will fail if the filesystem is gone.
		return -1, false, nil
	}
	was := g.stopped
	limit := g.reserve
	if was {
		limit = g.resume
	}
	g.stopped = free-n < limit
	if g.stopped {
		g.last = time.Now()
		g.lastErr = fmt.Errorf("cache %s: %w: %d bytes free, the cache stops writing below %d", g.dir, ErrNoSpace, free, g.reserve)
		g.refused.Add(1)
		return free, !was, g.lastErr
	}
	return free, was, nil
}

// checkFits returns an error wrapping ErrNoSpace when a cache of the given
// capacity and disk slack, plus the reserve, cannot fit on dir's filesystem
// together with what the directory already holds.
func checkFits(dir string, capacity, slack, reserve int64, free func(string) (int64, error)) error {
	avail, err := free(dir)
	if err != nil {
		return err
	}
	used, _ := dirSize(dir)
	need := capacity + slack + reserve
	if need > avail+used {
		return fmt.Errorf("%w: a cache of capacity %s needs up to %s on disk (capacity + %s of badger's slack + a %s free-space reserve), "+
			"but the filesystem of %s has %s free (the cache directory holds %s): lower the capacity or free space",
			ErrNoSpace, human(capacity), human(need), human(slack), human(reserve), dir, human(avail), human(used))
	}
	return nil
}

// human formats a byte count for messages, e.g. "1.5 GiB (1610612736 bytes)".
func human(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, u := float64(n), 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", f, units[u], n)
}
