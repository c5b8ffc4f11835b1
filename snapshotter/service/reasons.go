package service

import (
	"context"
	"errors"
	"strings"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/snapshotter"
)

// WithReasons wraps a lazyfs FileSystem (the node's LayerFS) so that its
// Mount errors name the reason the snapshotter counts a fallback under
// (lazyfs_snapshotter_fallback_layers_total{reason}).
func WithReasons(f snapshotter.FileSystem) snapshotter.FileSystem { return reasonFS{f} }

type reasonFS struct{ snapshotter.FileSystem }

func (r reasonFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	err := r.FileSystem.Mount(ctx, mountpoint, labels)
	if err == nil {
		return nil
	}
	return reasonError{err: err, reason: Reason(err)}
}

// Reason classifies why a layer cannot be mounted lazily, in one of a fixed
// set of words: not_converted, no_such_layer, toc_invalid, lower_hardlink,
// registry_auth, registry_not_found, registry, timeout, mount_failed.
func Reason(err error) string {
	if r := reasonOf(err); r != snapshotter.ReasonMountFailed {
		return r
	}
	// Errors from a holder process arrive as text: match the sentinels'
	// messages, which are part of their packages' contracts.
	msg := err.Error()
	for _, c := range []struct {
		sentinel error
		reason   string
	}{
		{image.ErrNotConverted, "not_converted"}, {toc.ErrNotChunked, "not_converted"},
		{image.ErrNoLayer, "no_such_layer"}, {fs.ErrLowerHardlink, "lower_hardlink"},
		{toc.ErrDigestMismatch, "toc_invalid"}, {toc.ErrBadTOC, "toc_invalid"}, {toc.ErrBadFooter, "toc_invalid"},
		{remote.ErrUnauthorized, "registry_auth"}, {remote.ErrNotFound, snapshotter.ReasonRegistryNotFound},
	} {
		if strings.Contains(msg, c.sentinel.Error()) {
			return c.reason
		}
	}
	return snapshotter.ReasonMountFailed
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, image.ErrNotConverted), errors.Is(err, toc.ErrNotChunked):
		return "not_converted"
	case errors.Is(err, image.ErrNoLayer):
		return "no_such_layer"
	case errors.Is(err, fs.ErrLowerHardlink):
		return "lower_hardlink"
	case errors.Is(err, toc.ErrDigestMismatch), errors.Is(err, toc.ErrBadTOC), errors.Is(err, toc.ErrBadFooter),
		errors.Is(err, toc.ErrUnsupportedVersion), errors.Is(err, toc.ErrUnsafePath):
		return "toc_invalid"
	case errors.Is(err, remote.ErrUnauthorized):
		return "registry_auth"
	case errors.Is(err, remote.ErrNotFound):
		return snapshotter.ReasonRegistryNotFound
	case errors.Is(err, remote.ErrBadResponse), errors.Is(err, remote.ErrRangeNotSupported), errors.Is(err, remote.ErrNoPlatform):
		return "registry"
	case errors.Is(err, context.DeadlineExceeded):
		return snapshotter.ReasonTimeout
	}
	return snapshotter.ReasonMountFailed
}

type reasonError struct {
	err    error
	reason string
}

func (e reasonError) Error() string          { return e.err.Error() }
func (e reasonError) Unwrap() error          { return e.err }
func (e reasonError) FallbackReason() string { return e.reason }
