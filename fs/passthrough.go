package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// MinPassthroughSize is the smallest file served through passthrough:
// smaller files gain little and would fill the spool with copies.
const MinPassthroughSize = 1 << 20

// spool holds local copies of fully cached files for FUSE passthrough.
//
// The kernel refuses to open an inode through passthrough while it is open
// in cached mode and the other way round, so an inode's opens are all of one
// kind: passthrough only once its copy is ready and no cached-mode handle is
// open, cached otherwise.
type spool struct {
	dir   string
	mu    sync.Mutex
	files map[uint32]*spoolFile
	sem   chan struct{} // bounds concurrent copies
	limit int64         // bound on used
	used  int64         // bytes of copies made or being made
}

type spoolFile struct {
	ready    bool
	building bool
	failed   bool
	pt       int // open passthrough handles
	cached   int // open cached-mode handles
}

func newSpool(dir string, limit int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	d, err := os.MkdirTemp(dir, "spool-")
	if err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	return &spool{dir: d, files: map[uint32]*spoolFile{}, sem: make(chan struct{}, 1), limit: limit}, nil
}

func (s *spool) path(d uint32) string { return filepath.Join(s.dir, strconv.FormatUint(uint64(d), 10)) }

// ptHandle serves a file through passthrough from its spooled copy; if the
// kernel does not take the backing fd, it reads like any handle.
type ptHandle struct {
	handle
	f *os.File
}

var _ gofs.FilePassthroughFder = (*ptHandle)(nil)

func (h *ptHandle) PassthroughFd() (int, bool) { return int(h.f.Fd()), true }

func (h *ptHandle) Release(ctx context.Context) syscall.Errno {
	h.f.Close()
	h.r.spool.release(h.d, true)
	return 0
}

// open returns a passthrough handle for d if its copy is ready and no
// cached-mode handle is open; otherwise it counts a cached-mode open and,
// when d is fully cached, starts making its copy.
func (s *spool) open(ctx context.Context, r *Root, d uint32) (gofs.FileHandle, bool) {
	_, e := r.t.dataEntry(d)
	if e.Size < MinPassthroughSize || e.Flags&toc.FlagSparse != 0 {
		return nil, false
	}
	s.mu.Lock()
	sf := s.files[d]
	if sf == nil {
		sf = &spoolFile{}
		s.files[d] = sf
	}
	if sf.ready && sf.cached == 0 {
		f, err := os.Open(s.path(d))
		if err == nil {
			sf.pt++
			s.mu.Unlock()
			r.stats.passthrough.Add(1)
			return &ptHandle{handle: handle{r: r, d: d}, f: f}, true
		}
		sf.ready = false
	}
	sf.cached++
	start := !sf.ready && !sf.building && !sf.failed && sf.pt == 0 && s.used+e.Size <= s.limit
	if start {
		sf.building = true
		s.used += e.Size
	}
	s.mu.Unlock()
	if start {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			err := s.build(r, d)
			s.mu.Lock()
			sf.building = false
			sf.ready = err == nil
			if err != nil {
				s.used -= e.Size
				// Not all cached yet: a later open tries again. Anything
				// else (disk full, ...) is not retried.
				sf.failed = !errors.Is(err, errNotCached) && r.ctx.Err() == nil
			}
			s.mu.Unlock()
			if err != nil && r.ctx.Err() == nil {
				r.log.Debug("passthrough copy not made", "path", e.Name, "error", err)
			}
		}()
	}
	return nil, false
}

func (s *spool) release(d uint32, pt bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sf := s.files[d]
	if sf == nil {
		return
	}
	if pt {
		sf.pt--
	} else {
		sf.cached--
	}
}

// errNotCached stops a copy of a file whose chunks are not all cached.
var errNotCached = fmt.Errorf("%w: not all chunks cached", ErrChunkUnavailable)

// build copies d's contents from the cache into the spool, if every chunk is
// cached.
func (s *spool) build(r *Root, d uint32) error {
	l, e := r.t.dataEntry(d)
	chunks := l.toc.EntryChunks(e)
	for i := range chunks {
		if !r.cacheHas(r.ctx, &chunks[i]) {
			return errNotCached
		}
	}
	select {
	case s.sem <- struct{}{}:
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
	defer func() { <-s.sem }()
	tmp, err := os.CreateTemp(s.dir, "tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	base := chunks[0].Offset
	for i := range chunks {
		c := &chunks[i]
		data, ok := r.cacheGet(r.ctx, c)
		if !ok {
			return errNotCached
		}
		if _, err := tmp.WriteAt(data, c.Offset-base); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.path(d))
}

// close removes the spool.
func (s *spool) close() error { return os.RemoveAll(s.dir) }
