// Package node is the node daemon as a library: one block cache and one
// registry fetcher for the whole node, every lazy mount of the node (the
// snapshotter's per-layer mounts through LayerFS, and merged image mounts
// asked for over the control API), the control API itself, and the node's
// Prometheus collectors. cmd/lazyfs-snapshotter wires it to containerd;
// cmd/lazyfs talks to it over its control socket, or runs a private Node
// standalone when no daemon answers.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// Config configures a Node. Zero values take the defaults noted.
type Config struct {
	// Root holds the node's state (default /var/lib/lazyfs); created 0700.
	Root string
	// CacheDir is the block cache directory (default Root/cache). The
	// special value ":memory:" keeps a private in-memory cache instead.
	CacheDir string
	// CacheSize bounds the block cache (default blobcache.DefaultCapacity);
	// a negative value is an error.
	CacheSize int64
	// HostsDir is a containerd-style hosts.toml directory (mirrors, headers).
	HostsDir string
	// Insecure allows plain HTTP to any registry.
	Insecure bool
	// Logger gets the node's logs (nil: discarded).
	Logger *slog.Logger
	// FetchOptions are appended to the options of the fetcher the Node
	// builds (deadlines, minimum throughput, retries: internal/fetchconf);
	// unused with Fetcher.
	FetchOptions []remote.Option
	// Fetcher, if set, is used instead of a fetcher built from HostsDir,
	// Insecure and FetchOptions (tests, custom transports). The Node does
	// not close it.
	Fetcher *remote.Fetcher
	// Cache, if set, is used instead of opening CacheDir. The Node does not close it.
	Cache Cache
	// FS and Mount are the defaults for every mount's fs.NewRoot and fs.Mount.
	// With FS.Passthrough and no FS.SpoolDir, the passthrough copies live
	// in Root/spool (each mount's in a directory of its own, removed when
	// it unmounts), emptied when the Node starts: a killed node's copies
	// do not stay behind. Give a SpoolDir of its own to a Node that shares
	// Root with another process's Node (a standalone lazyfs mount does).
	FS    fs.Options
	Mount fs.MountOptions
	// PullDir holds the local copies of layers fetched whole (ImageOptions.Pull);
	// default Root/pull.
	PullDir string
	// Resolver bounds the shared image/TOC caches.
	Resolver image.ResolverOptions
	// Profiles configures start-up profiles, prefetch and fill (profiles.go).
	Profiles ProfileConfig
	// UnmountTimeout bounds how long an unmount waits for a FUSE server to
	// stop (default 10 s).
	UnmountTimeout time.Duration
}

// MemoryCache is the Config.CacheDir value for a private in-memory cache.
const MemoryCache = ":memory:"

// DefaultRoot is the default Config.Root.
const DefaultRoot = "/var/lib/lazyfs"

// Cache is what a Node needs of its block cache: reads through it (fs),
// warming it (image.WarmCache), counters and closing. Both blobcache caches
// are one.
type Cache interface {
	fs.Cache
	image.WarmCache
	Stats() blobcache.Stats
	Close() error
}

// Node owns one block cache, one fetcher and every lazy mount of the node.
// Its methods are safe for concurrent use.
type Node struct {
	cfg      Config
	log      *slog.Logger
	cache    Cache
	ownCache bool
	fetcher  *remote.Fetcher
	ownFetch bool
	resolver *image.Resolver
	profiles *profile.Store
	metrics  *metrics

	sources   *sourceMemo // Config.Profiles.Source or the registry's, asked once per image
	recMu     sync.Mutex
	recorders map[digest.Digest]*imageRecorder // per image, shared by its layer mounts

	locks keyedMutex

	mu     sync.Mutex
	mounts map[string]*mountEntry // by mount point
	closed bool
	bg     sync.WaitGroup // releases of detached mounts
}

// Kind says what a mount serves.
type Kind string

// Mount kinds.
const (
	KindImage Kind = "image" // an image's merged root (lazyfs mount)
	KindLayer Kind = "layer" // one layer as an overlayfs lower (the snapshotter)
	// KindUnserved is a lazyfs mount in the mount table that no server
	// answering here serves (lazyfs ls only): stale, or another process's.
	KindUnserved Kind = "unserved"
)

type mountEntry struct {
	kind  Kind
	ref   string
	layer string
	m     *image.Mounted
	since time.Time
	// release, if set, runs once the mount is unmounted (or detached).
	release func()
}

func (e *mountEntry) unmounted() {
	if e.release != nil {
		e.release()
	}
}

// New opens the node's cache and builds its fetcher. A cache that cannot be
// opened is an error that says why and what to do (see OpenCache); it
// never falls back to memory silently.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Root == "" {
		cfg.Root = DefaultRoot
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UnmountTimeout <= 0 {
		cfg.UnmountTimeout = 10 * time.Second
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = blobcache.DefaultCapacity
	}
	if err := MkdirPrivate(cfg.Root); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, mounts: map[string]*mountEntry{}}
	var err error
	if n.profiles, err = openProfiles(cfg); err != nil {
		return nil, err
	}
	src := cfg.Profiles.Source
	if src == nil && cfg.Profiles.Registry {
		src = n.registryProfile // uses n.fetcher, set below before any mount
	}
	if src != nil && !cfg.Profiles.Off {
		n.sources = newSourceMemo(src)
	}
	n.cache = cfg.Cache
	if n.cache == nil {
		dir := cfg.CacheDir
		if dir == "" {
			dir = filepath.Join(cfg.Root, "cache")
		}
		c, err := OpenCache(dir, cfg.CacheSize, cfg.Logger)
		if err != nil {
			return nil, err
		}
		n.cache, n.ownCache = c, true
	}
	if cfg.FS.Passthrough && cfg.FS.SpoolDir == "" {
		// After the cache opened: a second node on the same root and
		// cache is refused before it could empty the first one's spool.
		spool := filepath.Join(cfg.Root, "spool")
		err := os.RemoveAll(spool)
		if err == nil {
			err = MkdirPrivate(spool)
		}
		if err != nil {
			if n.ownCache {
				n.cache.Close()
			}
			return nil, fmt.Errorf("passthrough spool: %w", err)
		}
		n.cfg.FS.SpoolDir = spool
	}
	n.fetcher = cfg.Fetcher
	if n.fetcher == nil {
		opts := []remote.Option{remote.WithInsecure(cfg.Insecure), remote.WithLogger(cfg.Logger), remote.WithUserAgent("lazyfs-node")}
		if cfg.HostsDir != "" {
			opts = append(opts, remote.WithHostsDir(cfg.HostsDir))
		}
		opts = append(opts, cfg.FetchOptions...)
		n.fetcher, n.ownFetch = remote.New(opts...), true
	}
	n.resolver = image.NewResolver(n.fetcher, cfg.Resolver)
	n.metrics = newMetrics(n)
	return n, nil
}

// Close unmounts every mount of the node (lazily where files are still in
// use: see docs/daemon.md), waits up to Config.UnmountTimeout for their
// servers to stop, and closes the cache and fetcher the Node opened. Mounts
// still busy then are logged (not an error); their readers fail once this
// process exits.
func (n *Node) Close() error {
	n.mu.Lock()
	n.closed = true
	dirs := make([]string, 0, len(n.mounts))
	for d := range n.mounts {
		dirs = append(dirs, d)
	}
	n.mu.Unlock()
	var errs []error
	for _, d := range dirs {
		ctx, cancel := context.WithTimeout(context.Background(), n.cfg.UnmountTimeout)
		if err := n.Unmount(ctx, d); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	// Detached busy mounts stop when their last file is closed; a process
	// that exits before then leaves their readers ENOTCONN (docs/daemon.md).
	waited := make(chan struct{})
	go func() { n.bg.Wait(); close(waited) }()
	t := time.NewTimer(n.cfg.UnmountTimeout)
	select {
	case <-waited:
		t.Stop()
	case <-t.C:
		// Not an error of the stop itself: running containers keep files
		// open; they see ENOTCONN once this process is gone.
		n.log.Warn("stopping with detached mounts whose files are still open: their readers fail when this process exits", "waited", n.cfg.UnmountTimeout)
	}
	if n.ownCache {
		errs = append(errs, n.cache.Close())
	}
	if n.ownFetch {
		errs = append(errs, n.fetcher.Close())
	}
	return errors.Join(errs...)
}

// Cache returns the node's block cache.
func (n *Node) Cache() Cache { return n.cache }

// Fetcher returns the node's fetcher.
func (n *Node) Fetcher() *remote.Fetcher { return n.fetcher }

// Resolver returns the node's shared image and TOC resolver.
func (n *Node) Resolver() *image.Resolver { return n.resolver }

// ErrClosed is returned by mounts asked of a closed Node.
var ErrClosed = errors.New("node is closed")

// ErrNotMounted means no mount of the node is at a directory.
var ErrNotMounted = errors.New("not a mount of this node")

// ErrMountPointInUse means a directory is already a mount (of another image or layer).
var ErrMountPointInUse = errors.New("mount point in use")

// ImageOptions configures MountImage.
type ImageOptions struct {
	// Platform picks the image of an index (nil: the running platform).
	Platform *v1.Platform
	// Pull serves layers that are not lazyfs-chunked by fetching them whole.
	Pull bool
	// Record records the mount's first-read order even when the node keeps
	// no profiles (Mounted.Recorded, for lazyfs record).
	Record bool
	// Fill, if set, turns fill on or off for this mount instead of the
	// node's default (ProfileConfig.NoFill): lazyfs mount --fill/--no-fill.
	Fill *bool
	// NoProfile prefetches no start-up profile, neither the node's nor the
	// registry's; the mount still learns one (lazyfs mount --no-profile).
	NoProfile bool
}

// MountImage mounts ref's merged root read-only at dir with the node's
// cache and fetcher (what `lazyfs mount` asks of the daemon).
func (n *Node) MountImage(ctx context.Context, ref, dir string, o ImageOptions) (*image.Mounted, error) {
	dir, err := cleanDir(dir)
	if err != nil {
		return nil, err
	}
	unlock := n.locks.lock(dir)
	defer unlock()
	if e := n.entry(dir); e != nil {
		return nil, fmt.Errorf("mount %s at %s: %w by %s %s", ref, dir, ErrMountPointInUse, e.kind, e.ref)
	}
	if err := n.clearStale(dir); err != nil {
		return nil, err
	}
	opts := n.imageOptions()
	opts.Platform, opts.Pull = o.Platform, o.Pull
	opts.Profiles = n.imageProfiles(o)
	if o.Pull {
		opts.TempDir = n.cfg.PullDir
		if opts.TempDir == "" {
			opts.TempDir = filepath.Join(n.cfg.Root, "pull")
			if err := MkdirPrivate(opts.TempDir); err != nil {
				return nil, err
			}
		}
	}
	m, err := image.Mount(ctx, ref, dir, opts)
	if err != nil {
		return nil, err
	}
	if err := n.add(dir, &mountEntry{kind: KindImage, ref: ref, m: m, since: time.Now()}); err != nil {
		m.Close()
		return nil, err
	}
	n.log.Info("mounted image", "image", ref, "dir", dir, "ready", m.Ready())
	return m, nil
}

func (n *Node) imageOptions() image.Options {
	return image.Options{
		Resolver: n.resolver, Fetcher: n.fetcher, Cache: n.cache, Logger: n.log,
		FS: n.cfg.FS, Mount: n.cfg.Mount, OnFetch: n.metrics.observeFetch,
	}
}

func (n *Node) entry(dir string) *mountEntry {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.mounts[dir]
	if e != nil {
		select {
		case <-e.m.Done():
			// Unmounted from outside or aborted: forget it.
			delete(n.mounts, dir)
			n.bg.Add(1)
			go func() { defer n.bg.Done(); e.m.Close(); e.unmounted() }()
			return nil
		default:
		}
	}
	return e
}

func (n *Node) add(dir string, e *mountEntry) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	n.mounts[dir] = e
	return nil
}

// clearStale unmounts a lazyfs FUSE mount at dir that no server of this
// Node serves: what a killed daemon leaves ("transport endpoint is not
// connected"). Other filesystems are never touched.
func (n *Node) clearStale(dir string) error {
	mounted, err := IsLazyfsMount(dir)
	if err != nil || !mounted {
		return err
	}
	n.log.Warn("unmounting a stale lazyfs mount left by a previous server", "dir", dir)
	if err := DetachMount(dir); err != nil {
		return fmt.Errorf("stale mount at %s: %w", dir, err)
	}
	return nil
}

// Unmount unmounts the node's mount at dir and frees everything of it.
// When files in it are still open the mount is detached lazily (the
// mount point is free at once; the server stops and is freed when the last
// file is closed). A stale lazyfs mount at dir that the node does not serve
// is unmounted too; a directory with neither is ErrNotMounted.
func (n *Node) Unmount(ctx context.Context, dir string) error {
	_, err := n.unmount(ctx, dir)
	return err
}

// Notes of unmount: what happened beyond a plain unmount.
const (
	noteDetached = "files in it are still open: detached; served until they are closed"
	notePinned   = "another mount namespace still held it: its FUSE connection was aborted there"
)

func (n *Node) unmount(ctx context.Context, dir string) (note string, err error) {
	dir, err = cleanDir(dir)
	if err != nil {
		return "", err
	}
	unlock := n.locks.lock(dir)
	defer unlock()
	n.mu.Lock()
	e := n.mounts[dir]
	delete(n.mounts, dir)
	n.mu.Unlock()
	if e == nil {
		if mounted, _ := IsLazyfsMount(dir); mounted {
			return "stale mount without a server", n.clearStale(dir)
		}
		return "", fmt.Errorf("unmount %s: %w", dir, ErrNotMounted)
	}
	err = e.m.Close()
	if errors.Is(err, image.ErrBusy) {
		n.log.Warn("mount is busy: detaching it; its server stops when the last open file is closed", "dir", dir, "image", e.ref, "layer", e.layer)
		if derr := e.m.Detach(); derr != nil {
			n.add(dir, e)
			return "", derr
		}
		n.bg.Add(1)
		go func() {
			defer n.bg.Done()
			<-e.m.Done()
			e.m.Close()
			e.unmounted()
		}()
		return noteDetached, nil
	}
	if errors.Is(err, image.ErrPinned) {
		// Unmounted here; a copy in another mount namespace keeps the
		// kernel connection (and our server) alive. Free it: end the
		// connection, as a process exit would.
		n.log.Warn("mount is still held by another mount namespace: aborting its FUSE connection", "dir", dir, "image", e.ref, "layer", e.layer)
		n.metrics.pinned.Inc()
		if aerr := e.m.Abort(); aerr != nil {
			return "", fmt.Errorf("unmount %s (%s): %w; %w", dir, e.ref, err, aerr)
		}
		if err = e.m.Close(); err == nil {
			note = notePinned
		}
	}
	if err != nil {
		return "", fmt.Errorf("unmount %s (%s): %w", dir, e.ref, err)
	}
	e.unmounted()
	n.log.Info("unmounted", "dir", dir, "kind", e.kind, "image", e.ref, "layer", e.layer)
	return note, nil
}

// MountInfo describes one mount of the node (lazyfs ls).
type MountInfo struct {
	Dir    string `json:"dir"`
	Kind   Kind   `json:"kind"`
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	Layer  string `json:"layer,omitempty"`
	// Size is the compressed size of what the mount serves (its layers' blobs).
	Size int64 `json:"size"`
	// TarSize is the uncompressed size.
	TarSize int64 `json:"tarSize"`
	// LocalBytes are the uncompressed chunk bytes the node's cache holds.
	LocalBytes int64 `json:"localBytes"`
	// FetchedBytes are the compressed bytes this mount fetched.
	FetchedBytes int64     `json:"fetchedBytes"`
	Since        time.Time `json:"since"`
	PID          int       `json:"pid"`
	// Progress is how much of the start-up profile and of the mount's
	// chunks is local (nil: the mount prefetches nothing).
	Progress *Progress `json:"progress,omitempty"`
}

// Progress is a mount's profile prefetch and fill progress, in chunks.
type Progress struct {
	// ProfileSource is where the profile came from: "node", "registry",
	// or "" for none (fill only).
	ProfileSource string `json:"profileSource,omitempty"`
	ProfileChunks int64  `json:"profileChunks"`
	ProfileLocal  int64  `json:"profileLocal"`
	// ImageChunks are the chunks of what the mount serves (the image, or
	// its layer), ImageLocal those known to be in the cache.
	ImageChunks int64 `json:"imageChunks"`
	ImageLocal  int64 `json:"imageLocal"`
	// Phase is "profile", "fill", "done" or "stopped".
	Phase string `json:"phase"`
}

// progressOf returns a mount's Progress from its stats (nil: none).
func progressOf(st image.Stats) *Progress {
	p := st.Prefetch
	if p == nil {
		return nil
	}
	return &Progress{ProfileSource: st.ProfileSource, ProfileChunks: p.ProfileChunks, ProfileLocal: p.ProfileLocal,
		ImageChunks: p.ImageChunks, ImageLocal: p.ImageLocal, Phase: p.Phase}
}

// List returns every mount of the node, sorted by directory.
func (n *Node) List(ctx context.Context) []MountInfo {
	n.mu.Lock()
	es := make(map[string]*mountEntry, len(n.mounts))
	for d, e := range n.mounts {
		es[d] = e
	}
	n.mu.Unlock()
	out := make([]MountInfo, 0, len(es))
	for d, e := range es {
		st := e.m.Stats()
		local, _ := e.m.LocalBytes(ctx, n.cache)
		out = append(out, MountInfo{Dir: d, Kind: e.kind, Ref: e.ref, Digest: st.Digest, Layer: e.layer,
			Size: st.ImageSize, TarSize: st.TarSize, LocalBytes: local, FetchedBytes: st.Fetched.Bytes, Since: e.since, PID: os.Getpid(),
			Progress: progressOf(st)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out
}

// Stats returns the counters of the node's mount at dir.
func (n *Node) Stats(dir string) (image.Stats, error) {
	dir, err := cleanDir(dir)
	if err != nil {
		return image.Stats{}, err
	}
	e := n.entry(dir)
	if e == nil {
		return image.Stats{}, fmt.Errorf("stats %s: %w", dir, ErrNotMounted)
	}
	return e.m.Stats(), nil
}

func cleanDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("no mount point")
	}
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", dir, err)
	}
	return filepath.Clean(d), nil
}

// layerKey checks that labels name an image and a layer digest.
func parseLabels(labels map[string]string) (ref string, layer digest.Digest, err error) {
	ref = labels[LabelImageRef]
	if ref == "" {
		return "", "", fmt.Errorf("no %s label", LabelImageRef)
	}
	s := labels[LabelLayerDigest]
	if s == "" {
		return "", "", fmt.Errorf("image %s: no %s label", ref, LabelLayerDigest)
	}
	layer, err = digest.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("image %s: label %s: %w", ref, LabelLayerDigest, err)
	}
	return ref, layer, nil
}

// maxLowerDirsLabel bounds LabelLowerDirs.
const maxLowerDirsLabel = 128 << 10

// parseLowerDirs reads LabelLowerDirs: absolute, clean paths, at most
// fs.MaxLowerDirs of them.
func parseLowerDirs(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > maxLowerDirsLabel {
		return nil, fmt.Errorf("label %s: %d bytes, more than %d", LabelLowerDirs, len(s), maxLowerDirsLabel)
	}
	dirs := strings.Split(s, ":")
	if len(dirs) > fs.MaxLowerDirs {
		dirs = dirs[:fs.MaxLowerDirs]
	}
	for _, d := range dirs {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d {
			return nil, fmt.Errorf("label %s: %q is not an absolute, clean path", LabelLowerDirs, d)
		}
	}
	return dirs, nil
}

// keyedMutex serialises work per key (mount point).
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
