// Package snapshotter is lazyfs's containerd snapshotter: an overlayfs
// snapshotter (modelled on containerd's own) that serves layers converted by
// lazyfs as remote snapshots.
//
// When containerd prepares a layer for unpacking (the
// "containerd.io/snapshot.ref" label names the snapshot it will commit) and the
// CRI labels name the image and the layer, the snapshotter asks its
// FileSystem to mount that layer lazily at the snapshot's directory, commits
// the snapshot at once and answers errdefs.ErrAlreadyExists, so containerd
// skips download and unpack. A container's rootfs is then overlayfs with
// those lazy mounts as lower directories.
//
// Every other layer (no labels, a plain gzip layer, a TOC that fails to verify)
// is unpacked by containerd as with the overlay snapshotter: a node can use
// this as its only snapshotter. A fallback is never silent: it is logged with
// its reason and counted in lazyfs_snapshotter_fallback_layers_total{reason}.
//
// Remote snapshots keep their labels in the metastore; New mounts them again
// after a restart, and Remove and Cleanup unmount them before freeing their
// directories.
package snapshotter
