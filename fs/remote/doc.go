// Package remote owns lazyfs's registry range fetcher: it resolves image
// references, authenticates (ggcr keychains and bearer tokens, refreshed when
// they expire mid-mount), routes requests through containerd hosts.toml
// mirrors with fallback to the origin, reads byte ranges of blobs with single
// HTTP Range requests (coalescing neighbouring chunks, following and caching
// redirects to blob storage), deduplicates concurrent fetches of a chunk,
// retries transient faults with backoff under a deadline, and verifies every
// chunk against its TOC digest before handing it out. See docs/remote.md.
package remote

import "errors"

// Errors returned by this package, wrapped with context naming the blob,
// offset or reference. Chunk verification failures wrap toc.ErrDigestMismatch
// or toc.ErrBadChunk.
var (
	// ErrRangeNotSupported means every registry host ignored a Range request
	// (answered 200 with the whole blob) for an offset too far into the blob to
	// skip to; lazy reads of this blob are not possible.
	ErrRangeNotSupported = errors.New("registry ignores range requests")
	// ErrBadResponse means a response did not match the request (wrong
	// Content-Range, wrong length, short body, malformed manifest).
	ErrBadResponse = errors.New("bad registry response")
	// ErrNotFound means the registry has no such blob or manifest.
	ErrNotFound = errors.New("not found in registry")
	// ErrUnauthorized means the registry refused the credentials, even after a
	// token refresh.
	ErrUnauthorized = errors.New("registry authorization failed")
	// ErrNoPlatform means an index has no manifest for the requested platform.
	ErrNoPlatform = errors.New("no manifest for platform")
	// ErrBadChunkRequest means a chunk passed to FetchChunks lies outside the
	// blob or is malformed.
	ErrBadChunkRequest = errors.New("invalid chunk request")
	// ErrBadHostsConfig means a hosts.toml file could not be parsed.
	ErrBadHostsConfig = errors.New("bad hosts.toml")
	// ErrFetchDeadline means a FetchChunks call did not complete within the
	// fetch deadline (WithFetchDeadline); it also matches
	// context.DeadlineExceeded.
	ErrFetchDeadline = errors.New("registry fetch deadline exceeded")
)
