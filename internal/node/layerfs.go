package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
)

// containerd's remote-snapshot labels (set by the CRI plugin, or by a Go
// client with snapshotters.AppendInfoHandlerWrapper).
const (
	LabelImageRef    = "containerd.io/snapshot/cri.image-ref"
	LabelLayerDigest = "containerd.io/snapshot/cri.layer-digest"
	LabelImageLayers = "containerd.io/snapshot/cri.image-layers"
	// LabelLowerDirs is passed by the snapshotter to Mount, never kept in
	// a snapshot's labels: the directories of the snapshot's parents, the
	// nearest first, ':'-separated as in overlayfs's lowerdir option
	// (fs.Options.LowerDirs).
	LabelLowerDirs = "containerd.io/snapshot/lazyfs.lowerdirs"
)

// LayerFS serves single layers of lazyfs images as overlayfs lower layers,
// one FUSE mount per layer, for the snapshotter: its methods are the
// FileSystem interface package snapshotter declares. Every mount shares the
// Node's cache, fetcher, and resolved manifests and TOCs (an image's
// manifest is resolved once for all its layers).
type LayerFS struct{ n *Node }

// LayerFS returns the Node's per-layer filesystem.
func (n *Node) LayerFS() *LayerFS { return &LayerFS{n: n} }

// Mount serves the layer named by labels (LabelImageRef, LabelLayerDigest)
// lazily at mountpoint. An error means the layer cannot be served lazily
// (not lazyfs-chunked, TOC fails to verify, registry unreachable, ...): the
// caller falls back to a normal pull and logs the error as the reason.
//
// Mount is idempotent: when mountpoint already serves that layer it returns
// nil, so a restarted snapshotter can ask again for every remote snapshot
// it knows; a stale mount left there by a killed daemon is replaced. The
// layer's descriptor is recorded under Config.Root until Unmount, so that
// a restart can mount it again even if its image reference has moved.
func (l *LayerFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	n := l.n
	ref, layer, err := parseLabels(labels)
	if err != nil {
		return fmt.Errorf("layer mount at %s: %w", mountpoint, err)
	}
	lowers, err := parseLowerDirs(labels[LabelLowerDirs])
	if err != nil {
		return fmt.Errorf("layer mount at %s: %w", mountpoint, err)
	}
	dir, err := cleanDir(mountpoint)
	if err != nil {
		return err
	}
	unlock := n.locks.lock(dir)
	defer unlock()
	if e := n.entry(dir); e != nil {
		if e.kind == KindLayer && e.layer == layer.String() {
			return nil
		}
		return fmt.Errorf("layer %s: %s: %w by %s %s %s", layer, dir, ErrMountPointInUse, e.kind, e.ref, e.layer)
	}
	if err := n.clearStale(dir); err != nil {
		return err
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		return fmt.Errorf("layer %s: mount point %s: %w", layer, dir, err)
	}
	img, i, err := n.resolveLayer(ctx, dir, ref, layer)
	if err != nil {
		n.metrics.fallback(err)
		return err
	}
	lo := n.imageOptions()
	lo.FS.LowerDirs = lowers
	var release func()
	lo.Profiles, release = n.layerProfiles(img)
	m, err := image.MountImageLayer(ctx, n.resolver, img, i, dir, lo)
	if err != nil {
		release()
		n.metrics.fallback(err)
		return err
	}
	n.saveRecord(dir, ref, img, i)
	if err := n.add(dir, &mountEntry{kind: KindLayer, ref: ref, layer: layer.String(), m: m, since: time.Now(), release: release}); err != nil {
		m.Close()
		release()
		return err
	}
	n.metrics.remoteLayers.Inc()
	n.log.Info("mounted layer", "image", ref, "layer", layer.String(), "dir", dir, "ready", m.Ready())
	return nil
}

// Check reports whether the mount at mountpoint is alive and still served
// by this Node: its FUSE server runs and its root answers within 5 s.
func (l *LayerFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	dir, err := cleanDir(mountpoint)
	if err != nil {
		return err
	}
	e := l.n.entry(dir)
	if e == nil {
		return fmt.Errorf("check %s: %w", dir, ErrNotMounted)
	}
	if want := labels[LabelLayerDigest]; want != "" && e.layer != "" && want != e.layer {
		return fmt.Errorf("check %s: serves layer %s, not %s", dir, e.layer, want)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res := make(chan error, 1)
	go func() { _, err := os.Stat(dir); res <- err }() // ends when the kernel answers or the server dies
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("check %s: %w", dir, err)
		}
		return nil
	case <-e.m.Done():
		return fmt.Errorf("check %s: the FUSE server stopped", dir)
	case <-ctx.Done():
		return fmt.Errorf("check %s: mount not answering: %w", dir, ctx.Err())
	}
}

// Unmount unmounts and frees everything of mountpoint (see Node.Unmount).
// A mountpoint the Node does not serve and that is not mounted is not an error.
func (l *LayerFS) Unmount(ctx context.Context, mountpoint string) error {
	err := l.n.Unmount(ctx, mountpoint)
	if dir, derr := cleanDir(mountpoint); derr == nil && (err == nil || errors.Is(err, ErrNotMounted)) {
		l.n.dropRecord(dir)
	}
	if errors.Is(err, ErrNotMounted) {
		return nil
	}
	return err
}
