package blobcache

import (
	"log/slog"
	"time"
)

// Verify selects the check Get runs on stored bytes before returning them.
type Verify int

const (
	// VerifyCRC32C (the default) checks a CRC-32C recorded at Put, after Put
	// verified the sha256. It catches accidental corruption (bit rot, torn or
	// misdirected writes, a bad value pointer after a crash) at ~20 GB/s; it
	// is not a defence against someone who can write the cache directory,
	// who could equally replace the daemon's binary.
	VerifyCRC32C Verify = iota
	// VerifySHA256 re-hashes every chunk on Get (~1.4 GB/s per core with
	// SHA-NI): the strongest check, at the cost of hit throughput.
	VerifySHA256
)

// Defaults, in one place.
const (
	// DefaultDir is where the daemons keep the cache unless configured otherwise.
	DefaultDir = "/var/lib/lazyfs/cache"
	// DefaultCapacity bounds a cache opened without WithCapacity.
	DefaultCapacity = 10 << 30
	// DefaultMemoryCapacity bounds a Memory cache made without WithCapacity.
	DefaultMemoryCapacity = 256 << 20
	// MaxChunkSize is the largest chunk either implementation accepts (Badger
	// also keeps chunks below its value-log file size, see Open).
	MaxChunkSize = 64 << 20

	defaultGCInterval = time.Minute
)

// Option configures Open or NewMemory; options that only concern Badger are
// ignored by Memory.
type Option func(*config)

type config struct {
	capacity     int64
	logger       *slog.Logger
	verify       Verify
	syncWrites   bool
	gcInterval   time.Duration
	vlogFileSize int64 // 0: derived from capacity
	minFree      int64 // 0: reserveFor(value-log file size)
	segThreshold int64
}

func newConfig(opts []Option, capacity int64) config {
	c := config{
		capacity:     capacity,
		logger:       slog.New(slog.DiscardHandler),
		verify:       VerifyCRC32C,
		gcInterval:   defaultGCInterval,
		segThreshold: DefaultSegmentThreshold,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithCapacity bounds the bytes of chunk data the cache holds. Badger's disk
// use stays within the capacity plus a slack described on Open.
func WithCapacity(bytes int64) Option { return func(c *config) { c.capacity = bytes } }

// WithLogger sets where the cache (and badger's warnings and errors) log;
// the default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithVerify selects the check Get runs before returning stored bytes
// (Badger only; Memory keeps its own private copy and never re-checks).
func WithVerify(v Verify) Option { return func(c *config) { c.verify = v } }

// WithSyncWrites makes every Put fsync before returning (Badger only). The
// default (off) survives a killed process without losing acknowledged chunks,
// because badger writes through mmap into the page cache; only a power loss or
// kernel crash can lose recent Puts, and those are detected on Get, never
// served. Turn it on only when losing recent chunks at power loss matters more
// than Put latency.
func WithSyncWrites(on bool) Option { return func(c *config) { c.syncWrites = on } }

// WithGCInterval sets how often the background goroutine runs badger's
// value-log garbage collection and persists access times (Badger only;
// default one minute). Large eviction bursts trigger a collection at once.
func WithGCInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.gcInterval = d
		}
	}
}

// WithValueLogFileSize overrides the size of badger's value-log files, the
// unit in which disk space is reclaimed and the bound on the chunk size
// (Badger only; default capacity/16, clamped to [8 MiB, 128 MiB]; an override
// is clamped to [1 MiB, 128 MiB]).
func WithValueLogFileSize(bytes int64) Option {
	return func(c *config) { c.vlogFileSize = bytes }
}

// WithMinFreeSpace sets the free-space reserve of the cache's filesystem
// below which Put stores nothing and returns ErrNoSpace (Badger only;
// default: 3 value-log files + 24 MiB of write-ahead logs + 16 MiB, see
// Open). A smaller reserve than the default risks a SIGBUS when another
// process fills the disk while badger writes through mmap.
func WithMinFreeSpace(bytes int64) Option {
	return func(c *config) {
		if bytes > 0 {
			c.minFree = bytes
		}
	}
}

// WithSegmentThreshold sets the chunk size from which Badger stores chunk
// bytes in its own append-only segment files (written with pwritev; badger
// keeps a 32-byte extent record) rather than in badger's value log (Badger
// only; default DefaultSegmentThreshold, 4 KiB). A threshold above
// MaxChunkSize keeps every chunk in badger. Open rejects a threshold that is
// not positive.
func WithSegmentThreshold(bytes int64) Option { return func(c *config) { c.segThreshold = bytes } }
