package node

import (
	"context"
	"net/http"
	"net/url"
)

// RemoteLayerFS is LayerFS served by another process over its control
// socket (Node.Handler): the snapshotter's FileSystem when the FUSE mounts
// live in a long-lived holder process, so that the snapshotter can be
// restarted or upgraded while running containers keep reading their
// layers (the pattern of stargz's fuse-manager; see docs/daemon.md).
type RemoteLayerFS struct{ c *Client }

// NewRemoteLayerFS returns the LayerFS of the holder listening on socket.
func NewRemoteLayerFS(socket string) *RemoteLayerFS {
	return &RemoteLayerFS{c: NewClient(socket, 0)}
}

// Mount is LayerFS.Mount in the holder.
func (r *RemoteLayerFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	return r.c.do(ctx, http.MethodPost, "/v1/layers", LayerRequest{Mountpoint: mountpoint, Labels: labels}, nil)
}

// Check is LayerFS.Check in the holder.
func (r *RemoteLayerFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	return r.c.do(ctx, http.MethodPost, "/v1/layers/check", LayerRequest{Mountpoint: mountpoint, Labels: labels}, nil)
}

// Unmount is LayerFS.Unmount in the holder.
func (r *RemoteLayerFS) Unmount(ctx context.Context, mountpoint string) error {
	return r.c.do(ctx, http.MethodDelete, "/v1/layers?dir="+url.QueryEscape(mountpoint), nil, nil)
}
