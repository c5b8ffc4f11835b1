package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"golang.org/x/sync/singleflight"
)

// Labels that containerd (the CRI plugin, or a client pulling with
// snapshotters.AppendInfoHandlerWrapper) passes with a layer's Prepare, and
// that the snapshotter hands to FileSystem.Mount.
const (
	LabelImageRef    = "containerd.io/snapshot/cri.image-ref"    // the image reference being pulled
	LabelLayerDigest = "containerd.io/snapshot/cri.layer-digest" // the compressed layer's digest
	LabelImageLayers = "containerd.io/snapshot/cri.image-layers" // digests of this and the following layers, comma-separated

	// LabelTargetRef names the committed snapshot that an unpack's Prepare
	// will become: it marks the Prepare as one layer of a pull.
	LabelTargetRef = "containerd.io/snapshot.ref"
	// LabelRemote marks a committed snapshot whose directory is a lazy mount.
	// It keeps the inheritable prefix so containerd's metadata store passes it on.
	LabelRemote = "containerd.io/snapshot/lazyfs.remote"
	// LabelLowerDirs is passed to FileSystem.Mount only, never kept in a
	// snapshot's labels: the directories of the snapshot's parents, the
	// nearest first, ':'-separated as in overlayfs's lowerdir option. A
	// directory the layer's tar leaves out then shows the attributes the
	// layers below give it, as containerd's unpack leaves it.
	LabelLowerDirs = "containerd.io/snapshot/lazyfs.lowerdirs"
)

// maxLowerDirs bounds the parents named in LabelLowerDirs (the nearest).
const maxLowerDirs = 1024

// FileSystem mounts layers lazily. It is what the snapshotter consumes;
// lazyfs's node daemon (internal/node.LayerFS) implements it.
//
// The story of one layer: containerd prepares a snapshot to unpack a layer
// into; the snapshotter calls Mount with the snapshot's (empty) directory and
// the layer's labels. On success the directory shows the layer's files and
// the snapshot is committed; containerd downloads nothing. Before the layer
// is used as a container's lower directory, Check says whether the mount
// still serves; if not, the snapshotter calls Mount again. When the snapshot
// is removed, Unmount releases it.
type FileSystem interface {
	// Mount serves the layer named by labels lazily at mountpoint, an
	// existing empty directory. ctx bounds the setup only (resolving the
	// image, fetching the TOC, mounting); the mount outlives it. An error
	// means "cannot be lazy": containerd unpacks the layer normally, and the
	// error is logged and counted as the reason (see Reasoner).
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	// Check reports whether the layer at mountpoint is mounted and serving.
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	// Unmount stops serving mountpoint and frees what the mount held. It is
	// called only for mountpoints given to Mount in this or an earlier process.
	Unmount(ctx context.Context, mountpoint string) error
}

// Locator finds the image and layer of a snapshot that containerd asks to
// prepare without the image reference and layer digest labels: a client
// that pulls with unpacking but without snapshotters.AppendInfoHandlerWrapper
// (nerdctl with a snapshotter it does not know by name, containerd's Go
// client as is). chainID is the layer's chain ID (the snapshot to commit).
// It returns the reference of the image (name@digest) and the layer's
// digest, or an error saying why not; the layer then falls back, counted
// with reason no_labels. Package snapshotter/locate reads them from
// containerd's content store.
type Locator interface {
	Locate(ctx context.Context, chainID string) (ref, layer string, err error)
}

// Alternator is implemented by a Locator whose references may name a
// registry without its port (containerd's distribution-source label drops
// it; see locate.Content.Alternates). Alternates returns the references a
// located ref may stand for, most likely first, ref among them; the layer
// is mounted from the first that serves it, within one mount timeout.
type Alternator interface {
	Alternates(ctx context.Context, ref string) []string
}

// Option configures New.
type Option func(*config) error

type config struct {
	locator      Locator
	fs           FileSystem
	logger       *slog.Logger
	metrics      *Metrics
	mountTimeout time.Duration
	mountOptions []string
}

// DefaultMountTimeout bounds one FileSystem.Mount or Check call.
const DefaultMountTimeout = 30 * time.Second

// WithFileSystem sets the lazy filesystem. Without one every layer falls back
// (counted with reason "no_filesystem"): a plain overlayfs snapshotter.
func WithFileSystem(f FileSystem) Option {
	return func(c *config) error { c.fs = f; return nil }
}

// WithLocator sets the Locator of layers that come without labels (default
// none: they fall back with reason no_labels).
func WithLocator(l Locator) Option {
	return func(c *config) error { c.locator = l; return nil }
}

// WithLogger sets where fallbacks, restores and cleanup problems are logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("snapshotter: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithMetrics sets the counters the snapshotter updates (NewMetrics).
func WithMetrics(m *Metrics) Option {
	return func(c *config) error {
		if m == nil {
			return errors.New("snapshotter: nil metrics")
		}
		c.metrics = m
		return nil
	}
}

// WithMountTimeout bounds each FileSystem.Mount and Check call
// (default DefaultMountTimeout).
func WithMountTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("snapshotter: mount timeout %v: must be positive", d)
		}
		c.mountTimeout = d
		return nil
	}
}

// WithOverlayOptions adds options to every overlayfs mount returned.
func WithOverlayOptions(opts ...string) Option {
	return func(c *config) error { c.mountOptions = append(c.mountOptions, opts...); return nil }
}

// Snapshotter is a containerd snapshots.Snapshotter over overlayfs whose
// committed layers may be lazy mounts. Its methods are safe for concurrent use.
type Snapshotter struct {
	root         string
	ms           *storage.MetaStore
	fs           FileSystem
	locator      Locator
	log          *slog.Logger
	m            *Metrics
	mountTimeout time.Duration
	options      []string

	remounts singleflight.Group // one re-mount at a time per remote snapshot id

	// hostsMu guards hosts: for a located reference's host, the host of
	// the alternate that last mounted (see Alternator), tried first.
	hostsMu sync.Mutex
	hosts   map[string]string

	// The restore pass New starts: stopped and waited for by Close.
	stopRestore context.CancelFunc
	restoring   sync.WaitGroup
	restored    chan struct{}
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// errDeadline is the cause of a FileSystem call that ran out of time.
var errDeadline = errors.New("lazy mount deadline exceeded")

// New opens (or creates) the snapshotter state under root (metadata.db and
// snapshots/) and starts mounting again, in the background, every remote
// snapshot recorded there whose mount is gone, as after a restart (see
// Restored). A remote snapshot that cannot be restored is logged and
// counted, and retried when a container needs it.
func New(ctx context.Context, root string, opts ...Option) (*Snapshotter, error) {
	c := config{logger: slog.New(slog.DiscardHandler), mountTimeout: DefaultMountTimeout}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	if c.metrics == nil {
		c.metrics = NewMetrics()
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	ok, err := fs.SupportsDType(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	if !ok {
		return nil, fmt.Errorf("snapshotter root %s: filesystem lacks d_type support (xfs needs ftype=1)", root)
	}
	if err := os.Mkdir(filepath.Join(root, "snapshots"), 0o700); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	if !hasOption(c.mountOptions, "userxattr") {
		if userxattr, err := overlayutils.NeedsUserXAttr(root); err != nil {
			c.logger.Warn("cannot detect whether overlayfs needs userxattr", "root", root, "assume", userxattr, "err", err)
		} else if userxattr {
			c.mountOptions = append(c.mountOptions, "userxattr")
		}
	}
	if !hasOption(c.mountOptions, "index") {
		if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
			c.mountOptions = append(c.mountOptions, "index=off")
		}
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter root %s: metadata: %w", root, err)
	}
	s := &Snapshotter{
		root:         root,
		ms:           ms,
		fs:           c.fs,
		locator:      c.locator,
		log:          c.logger,
		m:            c.metrics,
		mountTimeout: c.mountTimeout,
		options:      c.mountOptions,
		hosts:        map[string]string{},
	}
	s.restored = make(chan struct{})
	if s.fs == nil {
		close(s.restored)
		return s, nil
	}
	remotes, err := s.listRemotes(ctx)
	if err != nil {
		ms.Close()
		return nil, err
	}
	// Restoring runs in the background so that a slow or unreachable
	// registry cannot keep the daemon from serving: a container that needs
	// a layer before its turn restores it itself (ensureParents).
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopRestore = cancel
	s.restoring.Add(1)
	go func() {
		defer s.restoring.Done()
		defer close(s.restored)
		s.restoreAll(rctx, remotes)
	}()
	return s, nil
}

func hasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

// Metrics returns the snapshotter's counters.
func (s *Snapshotter) Metrics() *Metrics { return s.m }

// Stat returns the info of an active or committed snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update updates the info of a snapshot. The labels that make a snapshot
// remote survive an update that replaces all labels, so that a restart still
// knows what to mount.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		if old.Labels[LabelRemote] != "" && replacesLabels(fieldpaths) {
			labels := make(map[string]string, len(info.Labels)+4)
			for k, v := range info.Labels {
				labels[k] = v
			}
			for _, k := range []string{LabelRemote, LabelImageRef, LabelLayerDigest, LabelImageLayers} {
				if v, ok := old.Labels[k]; ok {
					labels[k] = v
				}
			}
			info.Labels = labels
		}
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return newInfo, err
}

func replacesLabels(fieldpaths []string) bool {
	if len(fieldpaths) == 0 {
		return true
	}
	for _, p := range fieldpaths {
		if p == "labels" {
			return true
		}
	}
	return false
}

// Usage returns the disk space an active snapshot's upper directory uses, or
// the recorded usage of a committed one (0 for a remote snapshot: its bytes
// live in the node's block cache).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("snapshot %s: usage: %w", key, err)
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
}

// Prepare creates an active snapshot. When the labels mark it as one layer of
// a pull (LabelTargetRef) and name a lazyfs layer, the layer is mounted lazily
// and committed under the target name, and Prepare returns an error wrapping
// errdefs.ErrAlreadyExists: containerd then skips downloading and unpacking it.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	// Lazy parents must serve before the new snapshot reads its parent's owner.
	if err := s.ensureParents(ctx, parent); err != nil {
		return nil, err
	}
	sn, _, err := s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	if target, ok := base.Labels[LabelTargetRef]; ok && target != "" {
		if s.prepareRemote(ctx, key, target, sn.ID, sn.ParentIDs, base.Labels, opts) {
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
	}
	return s.mounts(sn), nil
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := s.ensureParents(ctx, parent); err != nil {
		return nil, err
	}
	sn, _, err := s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
	if err != nil {
		return nil, err
	}
	return s.mounts(sn), nil
}

// Mounts returns the mounts of an active or view snapshot, after checking
// that the lazy mounts among its parents still serve.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		sn   storage.Snapshot
		info snapshots.Info
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if sn, err = storage.GetSnapshot(ctx, key); err != nil {
			return fmt.Errorf("snapshot %s: %w", key, err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return fmt.Errorf("snapshot %s: %w", key, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := s.ensureParents(ctx, info.Parent); err != nil {
		return nil, err
	}
	return s.mounts(sn), nil
}

// Commit turns an active snapshot into a committed one named name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		usage, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return fmt.Errorf("snapshot %s: usage: %w", key, err)
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...); err != nil {
			return fmt.Errorf("commit snapshot %s as %s: %w", key, name, err)
		}
		return nil
	})
}

// Remove removes a snapshot and, once the removal is recorded, unmounts and
// deletes every directory no snapshot owns any more.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var dirs []string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if _, _, err = storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove snapshot %s: %w", key, err)
		}
		dirs, err = s.orphanDirs(ctx)
		return err
	}); err != nil {
		return err
	}
	// The removal is committed: failures from here on are logged, and the
	// next Cleanup tries again.
	for _, d := range dirs {
		s.removeDir(ctx, d)
	}
	return nil
}

// Walk calls fn for every snapshot that matches the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup unmounts and deletes the directories of removed snapshots.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var dirs []string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = s.orphanDirs(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, d := range dirs {
		s.removeDir(ctx, d)
	}
	return nil
}

// Close closes the metadata store. Lazy mounts belong to the FileSystem and
// stay as they are.
func (s *Snapshotter) Close() error {
	if s.stopRestore != nil {
		s.stopRestore()
		s.restoring.Wait()
	}
	return s.ms.Close()
}

// Restored is closed when the restore pass that New started has tried every
// remote snapshot recorded in the metastore.
func (s *Snapshotter) Restored() <-chan struct{} { return s.restored }

func (s *Snapshotter) orphanDirs(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.root, "snapshots")
	names, err := readDirNames(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if _, ok := ids[n]; !ok {
			out = append(out, filepath.Join(dir, n))
		}
	}
	return out, nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeDir deletes a snapshot directory, first unmounting a lazy mount at
// its fs/ (through the FileSystem, then the kernel directly for a mount whose
// daemon is gone). A directory that stays mounted is never deleted: that
// would delete through the mount.
func (s *Snapshotter) removeDir(ctx context.Context, dir string) {
	mp := filepath.Join(dir, "fs")
	if err := s.unmount(ctx, mp); err != nil {
		s.log.Error("snapshot directory still mounted; left for the next cleanup", "dir", dir, "err", err)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("cannot remove snapshot directory", "dir", dir, "err", err)
	}
}

// unmount makes sure nothing is mounted at mp.
func (s *Snapshotter) unmount(ctx context.Context, mp string) error {
	mounted, err := isMounted(mp)
	if err != nil || !mounted {
		return err
	}
	if s.fs != nil {
		uctx, cancel := context.WithTimeout(ctx, s.mountTimeout)
		err := s.fs.Unmount(uctx, mp)
		cancel()
		if err != nil {
			s.log.Debug("lazy unmount failed; detaching", "mountpoint", mp, "err", err)
		}
		if mounted, _ := isMounted(mp); !mounted {
			return nil
		}
	}
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	if mounted, err := isMounted(mp); err != nil || mounted {
		return fmt.Errorf("unmount %s: still mounted (%v)", mp, err)
	}
	return nil
}

func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (sn storage.Snapshot, info snapshots.Info, err error) {
	var td, path string
	defer func() {
		if err != nil {
			if td != "" {
				os.RemoveAll(td)
			}
			if path != "" {
				os.RemoveAll(path)
			}
		}
	}()
	dir := filepath.Join(s.root, "snapshots")
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		if td, err = prepareDir(dir, kind); err != nil {
			return fmt.Errorf("snapshot %s: %w", key, err)
		}
		if sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return fmt.Errorf("snapshot %s: %w", key, err)
		}
		if len(sn.ParentIDs) > 0 {
			// The new upper directory gets the owner of its parent's, as
			// overlay does (a lazy parent reports its root's owner).
			st, err := os.Stat(s.upperPath(sn.ParentIDs[0]))
			if err != nil {
				return fmt.Errorf("snapshot %s: parent: %w", key, err)
			}
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				if err := os.Lchown(filepath.Join(td, "fs"), int(sys.Uid), int(sys.Gid)); err != nil {
					return fmt.Errorf("snapshot %s: %w", key, err)
				}
			}
		}
		path = filepath.Join(dir, sn.ID)
		if err = os.Rename(td, path); err != nil {
			return fmt.Errorf("snapshot %s: %w", key, err)
		}
		td = ""
		return nil
	})
	return sn, info, err
}

func prepareDir(dir string, kind snapshots.Kind) (string, error) {
	td, err := os.MkdirTemp(dir, "new-")
	if err != nil {
		return "", err
	}
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return td, err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return td, err
		}
	}
	return td, nil
}

func (s *Snapshotter) mounts(sn storage.Snapshot) []mount.Mount {
	if len(sn.ParentIDs) == 0 {
		ro := "rw"
		if sn.Kind == snapshots.KindView {
			ro = "ro"
		}
		return []mount.Mount{{Source: s.upperPath(sn.ID), Type: "bind", Options: []string{ro, "rbind"}}}
	}
	var options []string
	if sn.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(sn.ID),
			"upperdir="+s.upperPath(sn.ID))
	} else if len(sn.ParentIDs) == 1 {
		return []mount.Mount{{Source: s.upperPath(sn.ParentIDs[0]), Type: "bind", Options: []string{"ro", "rbind"}}}
	}
	lowers := make([]string, len(sn.ParentIDs))
	for i, id := range sn.ParentIDs {
		lowers[i] = s.upperPath(id)
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// withLowers returns labels and LabelLowerDirs naming the directories of
// the snapshots parents (ids, the nearest first), for FileSystem.Mount.
func (s *Snapshotter) withLowers(labels map[string]string, parents []string) map[string]string {
	l := maps.Clone(labels)
	if l == nil {
		l = map[string]string{}
	}
	delete(l, LabelLowerDirs)
	if len(parents) > maxLowerDirs {
		parents = parents[:maxLowerDirs]
	}
	if len(parents) > 0 {
		dirs := make([]string, len(parents))
		for i, id := range parents {
			dirs[i] = s.upperPath(id)
		}
		l[LabelLowerDirs] = strings.Join(dirs, ":")
	}
	return l
}

func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}

func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}
