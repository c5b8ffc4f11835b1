package blobcache

import "errors"

// Errors returned by the caches (ErrLocked by Open), wrapped with context
// naming the chunk or directory; test them with errors.Is.
var (
	// ErrNotFound reports a miss: the chunk is not stored (or was found corrupt
	// and dropped).
	ErrNotFound = errors.New("chunk not found")
	// ErrDigestMismatch reports that the data given to Put does not hash to the
	// digest it was offered under; nothing was stored.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInvalidDigest reports a digest that is not a well-formed sha256 digest
	// ("sha256:" and 64 lowercase hex characters).
	ErrInvalidDigest = errors.New("invalid chunk digest")
	// ErrTooLarge reports a chunk larger than the cache accepts: above its
	// capacity, MaxChunkSize, or (Badger) its value-log file size.
	ErrTooLarge = errors.New("chunk too large")
	// ErrLocked reports that another process has the cache directory open:
	// one process owns a directory, the others go through it.
	ErrLocked = errors.New("cache directory in use by another process")
	// ErrNoSpace reports that the cache's filesystem has too little free
	// space: Open refuses a capacity that does not fit, and Put stores
	// nothing while the free space is below the reserve (see Open).
	ErrNoSpace = errors.New("not enough free disk space for the cache")
	// ErrClosed reports a call on a closed cache.
	ErrClosed = errors.New("cache closed")
)

// errCorruptRecord reports a stored record that does not decode; the cache
// treats the chunk as corrupt and reports a miss.
var errCorruptRecord = errors.New("corrupt cache record")
