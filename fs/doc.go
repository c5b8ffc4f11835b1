// Package fs owns the lazyfs FUSE filesystem: a read-only go-fuse (v2) tree
// built from the TOCs of one or more converted layers (package fs/toc).
//
// With several layers (or one, merged), the tree is what extracting the
// layers in order gives: OCI whiteouts (".wh.NAME") and opaque directories
// (".wh..wh..opq") are applied and hidden. With Options.OverlayWhiteouts a
// single layer is shown as an overlayfs lower layer expects it: whiteouts as
// 0:0 character devices, opaque markers as the trusted.overlay.opaque=y xattr.
//
// The tree is compact (a few index arrays over the TOCs' own entries, go-fuse
// inodes created on lookup). Reads map a byte range to chunks, take them from
// the Cache or fetch them through the layer's ChunkFetcher, verify them and
// return exactly the requested bytes; sequential readers get read-ahead of
// the following chunks. A chunk that cannot be fetched or verified fails only
// the read that needed it, with EIO, logged once per chunk.
//
// The package declares what it consumes (Cache, ChunkFetcher) and knows
// nothing of the block cache's or the registry fetcher's implementations.
// The design and measurements are in docs/fs.md.
package fs

import "errors"

// Errors returned by this package, wrapped with context naming the object.
var (
	// ErrNoLayers means NewRoot was given no layers.
	ErrNoLayers = errors.New("no layers")
	// ErrBadOptions means the options cannot be used together or with the layers given.
	ErrBadOptions = errors.New("bad fs options")
	// ErrLowerHardlink means a layer to be shown alone (OverlayWhiteouts)
	// has a hardlink whose target is not in the layer: in a lower one, or
	// nowhere. A per-layer mount cannot show it; unpacking the layer over
	// the ones below can (or fails, if the target is nowhere).
	ErrLowerHardlink = errors.New("hardlink to a file of another layer")
	// ErrChunkUnavailable means a chunk could be neither read from the cache nor fetched.
	ErrChunkUnavailable = errors.New("chunk unavailable")
	// ErrChunkCorrupt means a chunk's bytes do not match its digest.
	ErrChunkCorrupt = errors.New("chunk corrupt")
	// ErrNotMounted means a mount point could not be mounted or set up.
	ErrNotMounted = errors.New("not mounted")
	// ErrClosed means the Root is closed (StartPrefetch after Close).
	ErrClosed = errors.New("root is closed")
)
