// Package blobcache owns the node's content-addressed chunk store: the bytes of
// image chunks, keyed by the sha256 digest of their uncompressed content, so a
// chunk shared by two layers or two images is stored once.
//
// Two implementations meet the same [Cache] contract (checked by the
// conformance suite in blobcache/blobcachetest):
//
//   - [Badger], opened with [Open], keeps chunks in a badger/v4 database in one
//     directory (by default DefaultDir, /var/lib/lazyfs/cache). Badger allows one
//     process per directory: the snapshotter or mount daemon owns it and every
//     other component goes through that daemon.
//   - [Memory], made with [NewMemory], keeps them in process memory (tests,
//     short-lived tools).
//
// Both are bounded by a capacity in bytes of chunk data and evict the least
// recently used chunk first; chunks pinned with Pin (the start-up profile of a
// live mount) are evicted only when nothing unpinned is left. Put verifies
// sha256(data) against the digest before anything is stored; Get returns only
// bytes that pass a check recorded at Put (CRC-32C by default, optionally a
// full sha256 re-hash, see [WithVerify]); a chunk that fails it is deleted and
// reported as a miss.
//
// Disk bound, garbage collection, crash semantics and the persistence of the
// LRU order of [Badger] are described on [Open] and in docs/blobcache.md.
package blobcache
