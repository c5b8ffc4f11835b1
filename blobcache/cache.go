package blobcache

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Cache is the contract every implementation meets (conformance suite in
// blobcache/blobcachetest). All methods are safe for concurrent use.
type Cache interface {
	// Get returns the chunk stored under d, or an error wrapping ErrNotFound on
	// a miss. The returned slice belongs to the caller.
	Get(ctx context.Context, d digest.Digest) ([]byte, error)
	// Put stores data under d after verifying sha256(data) == d; on a mismatch it
	// stores nothing and returns an error wrapping ErrDigestMismatch that names
	// both digests. Putting a chunk that is already stored is cheap and only
	// refreshes its recency. Put does not keep data.
	Put(ctx context.Context, d digest.Digest, data []byte) error
	// Has reports whether d is stored, without reading or verifying it.
	Has(ctx context.Context, d digest.Digest) (bool, error)
	// Stats returns a snapshot of the counters.
	Stats() Stats
	// Close releases the cache; later calls return ErrClosed. Close is idempotent.
	Close() error
}

// Pinner is implemented by both implementations. A pinned chunk (for example a
// chunk of a live mount's start-up profile) is evicted only when no unpinned
// chunk is left. Pins are reference counted per digest, may be taken before the
// chunk is stored, and are not persisted: a daemon re-pins after a restart.
// Invalid digests are ignored.
type Pinner interface {
	Pin(ds ...digest.Digest)
	Unpin(ds ...digest.Digest)
}

// Stats is a snapshot of a cache's counters. Counters (Hits … GCRuns) count
// since the cache was opened; gauges (Entries … DiskLimit) are current values.
type Stats struct {
	Hits      int64 // Get calls that returned a chunk
	Misses    int64 // Get calls that returned ErrNotFound (corrupt chunks included)
	BytesIn   int64 // chunk bytes newly stored by Put
	BytesOut  int64 // chunk bytes returned by Get
	Puts      int64 // Put calls that stored a new chunk
	Dedups    int64 // Put calls for a chunk already stored
	Evictions int64 // chunks evicted to make room
	// EvictedBytes is the size of the evicted chunks.
	EvictedBytes int64
	Corrupt      int64 // chunks found corrupt on Get and dropped
	GCRuns       int64 // value-log and segment files rewritten by garbage collection (Badger)
	// NoSpace counts Put calls that stored nothing because the filesystem's
	// free space was below the reserve, or full (Badger; see Open).
	NoSpace int64

	Entries  int64 // chunks stored
	Size     int64 // bytes of chunk data stored
	Capacity int64 // bound on Size
	Pinned   int64 // stored chunks with a pin
	// DiskSize is the space the cache directory occupies on disk (allocated
	// blocks), measured when Stats is called; 0 for Memory.
	DiskSize int64
	// DiskLimit is the bound DiskSize stays within after a collection:
	// Capacity plus (*Badger).DiskSlack; 0 for Memory.
	DiskLimit int64
}

// Compile-time checks that both implementations meet the contracts.
var (
	_ Cache  = (*Badger)(nil)
	_ Cache  = (*Memory)(nil)
	_ Pinner = (*Badger)(nil)
	_ Pinner = (*Memory)(nil)
)

// key is the raw sha256 of a chunk.
type key [32]byte

const digestPrefix = "sha256:"

// parseDigest validates d as "sha256:" followed by 64 lowercase hex characters
// and returns its raw bytes. It does not allocate.
func parseDigest(d digest.Digest) (key, error) {
	var k key
	s := string(d)
	if len(s) != len(digestPrefix)+64 || s[:len(digestPrefix)] != digestPrefix {
		return k, fmt.Errorf("digest %.80q: %w", s, ErrInvalidDigest)
	}
	hx := s[len(digestPrefix):]
	for i := range k {
		hi, ok1 := unhex(hx[2*i])
		lo, ok2 := unhex(hx[2*i+1])
		if !ok1 || !ok2 {
			return key{}, fmt.Errorf("digest %.80q: %w", s, ErrInvalidDigest)
		}
		k[i] = hi<<4 | lo
	}
	return k, nil
}

// unhex decodes one lowercase hex character; uppercase is not canonical and
// is rejected, as go-digest does.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// digest returns k as a digest.
func (k key) digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(k[:]))
}

// copyInto returns a copy of src in buf[:len(src)] when buf is large enough,
// else in a new slice. The new slice is made by append, which (unlike make)
// does not zero memory that is about to be overwritten.
func copyInto(buf, src []byte) []byte {
	if cap(buf) >= len(src) {
		out := buf[:len(src)]
		copy(out, src)
		return out
	}
	return append([]byte(nil), src...)
}
