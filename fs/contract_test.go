package fs

import (
	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// The implementations this package is wired to meet its interfaces.
var (
	_ ChunkFetcher   = (*remote.Blob)(nil)
	_ ChunkFetcher   = (*fstest.BlobFetcher)(nil)
	_ Cache          = (*blobcache.Badger)(nil)
	_ Cache          = (*blobcache.Memory)(nil)
	_ Cache          = (*fstest.MemCache)(nil)
	_ cacheHaser     = (*blobcache.Badger)(nil)
	_ cacheGetIntoer = (*blobcache.Badger)(nil)

	_ OwnedChunkFetcher    = (*remote.Blob)(nil)
	_ ClaimingChunkFetcher = (*remote.Blob)(nil)
	_ OwnedChunkFetcher    = (*fstest.BlobFetcher)(nil)
	_ cacheChecksumPutter  = (*blobcache.Badger)(nil)
)

// The registry fetcher verifies every chunk, so fs may skip its own hash.
var _ verifyingFetcher = (*remote.Blob)(nil)
