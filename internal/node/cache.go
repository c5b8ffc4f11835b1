package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/lazyfs/lazyfs/blobcache"
)

// ErrCacheUnavailable wraps every reason OpenCache cannot open a cache.
var ErrCacheUnavailable = errors.New("block cache unavailable")

// OpenCache opens the node's block cache: badger in dir, or a private
// in-memory cache when dir is MemoryCache. It never falls back from one to
// the other: a directory it cannot use (held by another process, not a
// directory, capacity not positive) is an error wrapping
// ErrCacheUnavailable that says why and what to do.
func OpenCache(dir string, capacity int64, log *slog.Logger) (Cache, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("%w: cache size %d: it must be positive (e.g. --cache-size 10GiB)", ErrCacheUnavailable, capacity)
	}
	if dir == MemoryCache || dir == "" {
		return blobcache.NewMemory(blobcache.WithCapacity(capacity)), nil
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory: point --cache-dir at a directory", ErrCacheUnavailable, dir)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Chunks of private images must not be readable by other users: the
	// directory is ours and 0700 (badger creates its files 0644).
	if err := MkdirPrivate(dir); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	c, err := blobcache.Open(dir, blobcache.WithCapacity(capacity), blobcache.WithLogger(log))
	if errors.Is(err, blobcache.ErrLocked) {
		return nil, fmt.Errorf("%w: %s is in use by another process (a running lazyfs daemon or mount server holds it): "+
			"mount through the daemon (its control socket, --control), stop the other process, or pass another --cache-dir "+
			"(or --cache-dir '' for a private in-memory cache of --cache-size): %w", ErrCacheUnavailable, dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	return c, nil
}
