// Package image serves images and single layers of images: a Resolver
// resolves references and fetches and verifies layers' TOCs once per image
// and once per layer (shared by every mount, warming and inspect);
// OpenLayer opens one layer, lazily from its TOC or, with Pull, fetched
// whole and converted locally; Mount serves an image's merged root and
// MountLayer one layer as an overlayfs lower layer, through package fs,
// with chunks from the registry (package fs/remote) through the node's
// block cache.
package image

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// ErrNotConverted means the image has layers that are not lazyfs-chunked.
var ErrNotConverted = errors.New("not a lazyfs image")

// ErrNonDistributable means the image has a non-distributable ("foreign")
// layer, whose blob its descriptor's URLs serve instead of the registry
// (Windows base layers): lazyfs convert keeps such layers as they are, and
// a lazy mount cannot serve them, pulled or not.
var ErrNonDistributable = errors.New("non-distributable (foreign) layer")

// ErrBusy means a mount could not be unmounted because files in it are in use.
var ErrBusy = errors.New("mount is busy")

// Options configures Mount and MountLayer.
type Options struct {
	// Platform picks the image of an index (nil: the running platform).
	Platform *v1.Platform
	// Fetcher reaches the registry (required unless Resolver is set).
	Fetcher *remote.Fetcher
	// Resolver shares resolved images and TOCs between mounts (nil: a
	// private one over Fetcher).
	Resolver *Resolver
	// Cache is the node's chunk cache (nil: none).
	Cache fs.Cache
	// Pull fetches layers that are not converted whole and converts them
	// locally into TempDir instead of refusing the image.
	Pull    bool
	TempDir string
	Logger  *slog.Logger
	// FS and Mount are passed to fs.NewRoot and fs.Mount.
	FS    fs.Options
	Mount fs.MountOptions
	// OnFetch, if set, is called after each fetch of chunks for the mount
	// (reads and read-ahead), e.g. to feed a latency histogram. It must be
	// fast and safe for concurrent use.
	OnFetch func(FetchEvent)
	// Profiles configures start-up profiles, prefetch and fill (profile.go).
	Profiles ProfileOptions
}

// FetchEvent describes one fetch of chunks for a mount.
type FetchEvent struct {
	Chunks   int           // chunks delivered
	Bytes    int64         // their compressed bytes
	Duration time.Duration // from the call to its return
	Err      error
}

func (o *Options) resolver() (*Resolver, error) {
	if o.Resolver != nil {
		return o.Resolver, nil
	}
	if o.Fetcher == nil {
		return nil, errors.New("image: no fetcher")
	}
	return NewResolver(o.Fetcher, ResolverOptions{}), nil
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Mounted is an image, or one layer of it, served at a directory. Its
// methods are safe for concurrent use.
type Mounted struct {
	img     *remote.Image
	layers  []*Layer
	layer   string // the layer's digest for a per-layer mount
	root    *fs.Root
	srv     *fs.Server
	fetcher *remote.Fetcher
	counts  []*fetchCounter
	ready   time.Duration
	conn    uint32        // FUSE connection number (fusectl)
	done    chan struct{} // closed when the FUSE server stopped serving

	profiles *profileState

	closeOnce sync.Once
	closeErr  error
}

// Stats are a mount's counters, for `lazyfs stats`, `lazyfs ls` and the demo.
type Stats struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
	// Layer is the served layer's digest for a per-layer mount ("" when the
	// mount is the merged image).
	Layer        string  `json:"layer,omitempty"`
	Dir          string  `json:"dir"`
	Layers       int     `json:"layers"`
	ImageSize    int64   `json:"imageSize"`
	TarSize      int64   `json:"tarSize"`
	Entries      int     `json:"entries"`
	Chunks       int     `json:"chunks"`
	ReadySeconds float64 `json:"readySeconds"`
	PulledLayers int     `json:"pulledLayers"`
	// Fetched counts what this mount's reads and read-ahead had fetched,
	// whoever else shares the fetcher.
	Fetched FetchStats `json:"fetched"`
	FS      fs.Stats   `json:"fs"`
	// Remote are the fetcher's counters: node-wide when the fetcher is
	// shared (a daemon), this mount's alone when it is private.
	Remote remote.Stats `json:"remote"`
	// Prefetch is the profile prefetch and fill's progress (nil: none);
	// ProfileSource says where the profile came from ("node", "registry"
	// or "" for none).
	Prefetch      *fs.PrefetchStats `json:"prefetch,omitempty"`
	ProfileSource string            `json:"profileSource,omitempty"`
}

// FetchStats count the chunks a mount's layers fetched through its fetchers.
type FetchStats struct {
	// Chunks delivered from the registry (or a local pulled blob).
	Chunks int64 `json:"chunks"`
	// Bytes are those chunks' compressed sizes: what the network moved for
	// this mount (a chunk fetched once for two mounts counts for both).
	Bytes int64 `json:"bytes"`
	// Failures counts fetch calls that failed (each is an EIO or a retry).
	Failures int64 `json:"failures"`
}

// Stats returns the mount's counters.
func (m *Mounted) Stats() Stats {
	st := Stats{
		Image: m.img.Ref.String(), Digest: m.img.Digest.String(), Layer: m.layer, Dir: m.srv.Dir(), Layers: len(m.layers),
		ReadySeconds: m.ready.Seconds(), FS: m.root.Stats(),
	}
	if m.fetcher != nil {
		st.Remote = m.fetcher.Stats()
	}
	for i, l := range m.layers {
		st.ImageSize += l.Size()
		st.TarSize += l.TOC.TarSize
		st.Entries += len(l.TOC.Entries)
		st.Chunks += len(l.TOC.Chunks)
		if l.Pulled() {
			st.PulledLayers++
		}
		c := m.counts[i]
		st.Fetched.Chunks += c.chunks.Load()
		st.Fetched.Bytes += c.bytes.Load()
		st.Fetched.Failures += c.failures.Load()
	}
	st.ProfileSource = m.ProfileSource()
	if pf := m.Prefetcher(); pf != nil {
		ps := pf.Stats()
		st.Prefetch = &ps
	}
	return st
}

// FlushCache waits until every chunk the mount fetched has been written to
// the cache (or ctx ends).
func (m *Mounted) FlushCache(ctx context.Context) error { return m.root.FlushCache(ctx) }

// Dir returns the mount point.
func (m *Mounted) Dir() string { return m.srv.Dir() }

// Image returns the resolved image the mount serves. It is shared: do not modify it.
func (m *Mounted) Image() *remote.Image { return m.img }

// Ready is how long mounting took, from the call to a ready root.
func (m *Mounted) Ready() time.Duration { return m.ready }

// Done is closed when the mount stopped serving: unmounted by Close, by
// umount(8) from outside, or its FUSE connection aborted.
func (m *Mounted) Done() <-chan struct{} { return m.done }

// Wait waits until the mount stopped serving (see Done).
func (m *Mounted) Wait() { <-m.done }

// LocalBytes returns how many of the mount's uncompressed chunk bytes the
// cache holds (a chunk shared by files or layers counts once per layer).
func (m *Mounted) LocalBytes(ctx context.Context, cache interface {
	Has(context.Context, digest.Digest) (bool, error)
}) (int64, error) {
	var n int64
	for _, l := range m.layers {
		if l.Pulled() {
			n += l.TOC.TarSize
			continue
		}
		for i := range l.TOC.Chunks {
			if i%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return n, err
				}
			}
			c := &l.TOC.Chunks[i]
			if ok, _ := cache.Has(ctx, c.Digest()); ok {
				n += int64(c.Size)
			}
		}
	}
	return n, nil
}

// Close unmounts and releases the mount's resources (background work,
// goroutines, pulled layers' temp files). If files in the mount are in use
// it returns an error wrapping ErrBusy and the mount keeps serving; Detach
// then unmounts it lazily. If the mount is gone from this namespace but
// its server keeps running (another mount namespace holds a copy), it
// returns an error wrapping ErrPinned; Abort then ends it. Close after a
// successful Close returns nil.
func (m *Mounted) Close() error {
	select {
	case <-m.done:
	default:
		if err := unix.Unmount(m.srv.Dir(), 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("unmount %s: %w", m.srv.Dir(), ErrBusy)
			}
			return fmt.Errorf("unmount %s: %w", m.srv.Dir(), err)
		}
	}
	if err := m.release(pinnedGrace); err != nil {
		return fmt.Errorf("unmount %s: %w: the kernel keeps serving it to another mount namespace "+
			"(a copy made by unshare or a container runtime while it was mounted); Abort ends it", m.srv.Dir(), ErrPinned)
	}
	return nil
}

// pinnedGrace is how long Close waits for the FUSE server to stop after a
// successful unmount before it concludes the mount is pinned elsewhere.
const pinnedGrace = 2 * time.Second

// ErrPinned means a mount is gone from this mount namespace but another
// namespace still holds a copy, so the kernel keeps its FUSE connection
// (and the server) alive.
var ErrPinned = errors.New("mount is still held by another mount namespace")

// Abort ends the mount's FUSE connection (fusectl's abort, mounting
// fusectl at /sys/fs/fuse/connections if needed): every copy of the mount,
// in any namespace, then fails with ENOTCONN and the server stops, so
// Close can free it. For a mount that Close reported ErrPinned.
func (m *Mounted) Abort() error {
	if m.conn == 0 {
		return fmt.Errorf("abort %s: connection unknown", m.srv.Dir())
	}
	const ctl = "/sys/fs/fuse/connections"
	p := fmt.Sprintf("%s/%d/abort", ctl, m.conn)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("abort %s: mount fusectl: %w", m.srv.Dir(), err)
		}
	}
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return fmt.Errorf("abort %s: %w", m.srv.Dir(), err)
	}
	return nil
}

// Detach unmounts lazily (MNT_DETACH): the mount point is free at once,
// processes that have files open keep reading them, and the server stops
// when the last is closed. It returns without waiting; Wait or Done tell
// when the server stopped, then Close releases the rest.
func (m *Mounted) Detach() error {
	if err := unix.Unmount(m.srv.Dir(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach %s: %w", m.srv.Dir(), err)
	}
	return nil
}

// release waits (up to timeout) for the FUSE server to stop after an
// unmount, then frees the Root and the layers.
func (m *Mounted) release(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-m.done:
	case <-t.C:
		return fmt.Errorf("unmount %s: the FUSE server did not stop within %v", m.srv.Dir(), timeout)
	}
	m.closeOnce.Do(func() {
		if m.profiles != nil {
			m.profiles.stop() // ends the prefetch and stores the learned profile
		}
		m.closeErr = m.root.Close()
		for _, l := range m.layers {
			l.Close()
		}
	})
	return m.closeErr
}

// Mount resolves ref and mounts its merged root read-only at dir.
func Mount(ctx context.Context, ref, dir string, o Options) (_ *Mounted, err error) {
	start := time.Now()
	r, err := o.resolver()
	if err != nil {
		return nil, err
	}
	img, err := r.Resolve(ctx, ref, o.Platform)
	if err != nil {
		return nil, err
	}
	for i := range img.Layers {
		if err := checkDistributable(img, i); err != nil {
			return nil, err
		}
	}
	if !o.Pull {
		for i, l := range img.Layers {
			if !l.Chunked() {
				return nil, fmt.Errorf("image %s: %w: layer %d (%s) is %s without a lazyfs index; "+
					"convert the image with `lazyfs convert %s DST` and mount DST, or mount with --pull to fetch the layers whole",
					ref, ErrNotConverted, i, l.Digest, l.MediaType, ref)
			}
		}
	}
	ps := loadProfile(ctx, o.Profiles, img, o.logger())
	layers := make([]*Layer, len(img.Layers))
	defer func() {
		if err != nil {
			for _, l := range layers {
				if l != nil {
					l.Close()
				}
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	lo := LayerOptions{Pull: o.Pull, TempDir: o.TempDir, Logger: o.Logger}
	for i := range img.Layers {
		g.Go(func() error {
			l, err := OpenLayer(gctx, r, img, i, lo)
			layers[i] = l
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if o.Mount.FsName == "" {
		o.Mount.FsName = "lazyfs:" + img.Ref.String()
	}
	return mountLayers(ctx, img, layers, "", dir, r.Fetcher(), o, ps, start)
}

// MountLayer mounts layer (a digest) of the image ref alone at dir, as an
// overlayfs lower layer (fs.Options.OverlayWhiteouts): the per-layer mount
// of a remote snapshot. The layer must be lazyfs-chunked unless o.Pull.
func MountLayer(ctx context.Context, ref string, layer digest.Digest, dir string, o Options) (_ *Mounted, err error) {
	r, err := o.resolver()
	if err != nil {
		return nil, err
	}
	img, err := r.Resolve(ctx, ref, o.Platform)
	if err != nil {
		return nil, err
	}
	i := -1
	for k := range img.Layers {
		if img.Layers[k].Digest.String() == layer.String() {
			i = k
			break
		}
	}
	if i < 0 {
		return nil, fmt.Errorf("image %s (%s): %w: no layer %s", ref, img.Digest, ErrNoLayer, layer)
	}
	return MountImageLayer(ctx, r, img, i, dir, o)
}

// MountImageLayer is MountLayer for layer i of an image already resolved
// (or rebuilt from a recorded descriptor), with r loading its TOC.
func MountImageLayer(ctx context.Context, r *Resolver, img *remote.Image, i int, dir string, o Options) (*Mounted, error) {
	start := time.Now()
	if i < 0 || i >= len(img.Layers) {
		return nil, fmt.Errorf("image %s: %w: index %d of %d", img.Ref, ErrNoLayer, i, len(img.Layers))
	}
	layer := img.Layers[i].Digest
	ps := loadProfile(ctx, o.Profiles, img, o.logger())
	l, err := OpenLayer(ctx, r, img, i, LayerOptions{Pull: o.Pull, TempDir: o.TempDir, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	o.FS.OverlayWhiteouts = true
	if o.Mount.FsName == "" {
		o.Mount.FsName = "lazyfs:" + layer.String()
	}
	m, err := mountLayers(ctx, img, []*Layer{l}, layer.String(), dir, r.Fetcher(), o, ps, start)
	if err != nil {
		l.Close()
		return nil, err
	}
	return m, nil
}

// ErrNoLayer means an image has no layer of the digest asked for.
var ErrNoLayer = errors.New("layer not in image")

func mountLayers(ctx context.Context, img *remote.Image, layers []*Layer, layer, dir string, f *remote.Fetcher, o Options, ps *profileState, start time.Time) (*Mounted, error) {
	m := &Mounted{img: img, layers: layers, layer: layer, fetcher: f, profiles: ps, done: make(chan struct{})}
	fl := make([]fs.Layer, len(layers))
	for i, l := range layers {
		c := &fetchCounter{f: l.fetcher, on: o.OnFetch}
		m.counts = append(m.counts, c)
		fl[i] = fs.Layer{Name: l.Name(), TOC: l.TOC, Fetcher: c}
	}
	fo := o.FS
	fo.Cache = o.Cache
	if fo.PrefetchContext == nil {
		// Read-ahead and neighbour fetches yield request slots to on-demand reads.
		fo.PrefetchContext = remote.Background
	}
	if fo.Logger == nil {
		fo.Logger = o.logger()
	}
	fo.OnRead = ps.onRead(layers, fo.OnRead)
	root, err := fs.NewRoot(fl, fo)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	srv, err := fs.Mount(dir, root, o.Mount)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("mount %s at %s: %w", img.Ref, dir, err)
	}
	m.root, m.srv = root, srv
	var st unix.Stat_t
	if unix.Stat(srv.Dir(), &st) == nil {
		m.conn = unix.Minor(st.Dev) // the fusectl connection number
	}
	go func() {
		srv.Server.Wait() // go-fuse's serve loops, not fs.Server.Wait (which closes the Root)
		close(m.done)
	}()
	if o.Cache != nil {
		ps.start(ctx, root, layers, o.Cache)
	}
	ps.autosave()
	m.ready = time.Since(start)
	return m, nil
}

// fetchCounter passes on fs/remote's claims: without them every background
// fetch would claim its chunks before waiting for a request slot.
var _ fs.ClaimingChunkFetcher = (*fetchCounter)(nil)

// fetchCounter counts what one mount's layer fetched through a fetcher
// that other mounts may share.
type fetchCounter struct {
	f                       fs.ChunkFetcher
	on                      func(FetchEvent)
	chunks, bytes, failures atomic.Int64
}

func (c *fetchCounter) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	return c.FetchChunksOwned(ctx, chunks, nil, func(i int, data []byte, _ bool) error { return fn(i, data) })
}

// FetchChunksOwned passes get and ownership through when the wrapped
// fetcher decodes into the caller's buffers (fs/remote), and otherwise
// delivers with own false.
func (c *fetchCounter) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, get func(int) []byte, fn func(int, []byte, bool) error) error {
	return c.count(chunks, fn, func(fn func(int, []byte, bool) error) error {
		if of, ok := c.f.(fs.OwnedChunkFetcher); ok && get != nil {
			return of.FetchChunksOwned(ctx, chunks, get, fn)
		}
		return c.f.FetchChunks(ctx, chunks, func(i int, data []byte) error { return fn(i, data, false) })
	})
}

// FetchChunksClaimed passes the claims through when the wrapped fetcher
// takes them (fs/remote), and otherwise claims every chunk first.
func (c *fetchCounter) FetchChunksClaimed(ctx context.Context, chunks []toc.Chunk, claim func(int) bool, get func(int) []byte, fn func(int, []byte, bool) error) error {
	return c.count(chunks, fn, func(fn func(int, []byte, bool) error) error {
		if cf, ok := c.f.(fs.ClaimingChunkFetcher); ok {
			return cf.FetchChunksClaimed(ctx, chunks, claim, get, fn)
		}
		return fs.FetchClaimedFirst(ctx, c.f, chunks, claim, get, fn)
	})
}

// count runs fetch with fn counted: chunks and compressed bytes delivered,
// failures, and the event for the mount's observer.
func (c *fetchCounter) count(chunks []toc.Chunk, fn func(int, []byte, bool) error, fetch func(func(int, []byte, bool) error) error) error {
	start := time.Now()
	var n, nb atomic.Int64
	err := fetch(func(i int, data []byte, own bool) error {
		n.Add(1)
		nb.Add(int64(chunks[i].CompressedSize))
		return fn(i, data, own)
	})
	c.chunks.Add(n.Load())
	c.bytes.Add(nb.Load())
	if err != nil {
		c.failures.Add(1)
	}
	if c.on != nil {
		c.on(FetchEvent{Chunks: int(n.Load()), Bytes: nb.Load(), Duration: time.Since(start), Err: err})
	}
	return err
}

// LinkRate passes on the wrapped fetcher's measure of the link (samples -1:
// it has none).
func (c *fetchCounter) LinkRate() (bytesPerSecond, samples int64, rtt time.Duration) {
	if m, ok := c.f.(fs.LinkMeter); ok {
		return m.LinkRate()
	}
	return 0, -1, 0
}

// VerifiesChunks passes on the wrapped fetcher's promise (fs trusts chunks
// that a verifying fetcher delivers).
func (c *fetchCounter) VerifiesChunks() bool {
	v, ok := c.f.(interface{ VerifiesChunks() bool })
	return ok && v.VerifiesChunks()
}

// pullLayer downloads a layer blob whole, checks its digest, and converts its
// tar into a local chunked blob in a temp file.
func pullLayer(ctx context.Context, blob *remote.Blob, l *remote.Layer, tempDir string) (*os.File, *toc.TOC, error) {
	f, err := os.CreateTemp(tempDir, "lazyfs-pull-*")
	if err != nil {
		return nil, nil, err
	}
	br := &blobReader{ctx: ctx, b: blob, size: l.Size, h: sha256.New()}
	tr, err := convert.Decompress(br)
	if err != nil {
		return f, nil, err
	}
	res, err := toc.Convert(ctx, tr, f)
	tr.Close()
	if err != nil {
		return f, nil, err
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return f, nil, err
	}
	if got := digest.NewDigest(digest.SHA256, br.h); got.String() != l.Digest.String() {
		return f, nil, fmt.Errorf("%w: blob is %s", toc.ErrDigestMismatch, got)
	}
	return f, res.TOC, nil
}

// blobReader reads a whole blob sequentially with range requests, hashing it.
type blobReader struct {
	ctx  context.Context
	b    *remote.Blob
	off  int64
	size int64
	h    hash.Hash
}

func (r *blobReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if max := r.size - r.off; int64(len(p)) > max {
		p = p[:max]
	}
	if len(p) > 8<<20 {
		p = p[:8<<20]
	}
	n, err := r.b.ReadAt(r.ctx, p, r.off)
	r.h.Write(p[:n])
	r.off += int64(n)
	if err == io.EOF && r.off < r.size {
		err = io.ErrUnexpectedEOF
	} else if err == io.EOF {
		err = nil
	}
	return n, err
}

// fileFetcher serves chunks of a locally converted blob.
type fileFetcher struct{ f *os.File }

func (l *fileFetcher) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(int, []byte) error) error {
	var frame, data []byte
	for i := range chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := &chunks[i]
		if cap(frame) < int(c.CompressedSize) {
			frame = make([]byte, c.CompressedSize)
		}
		frame = frame[:c.CompressedSize]
		if _, err := l.f.ReadAt(frame, c.CompressedOffset); err != nil {
			return fmt.Errorf("local chunk at %d: %w", c.CompressedOffset, err)
		}
		var err error
		if data, err = toc.DecodeChunk(c, frame, data[:0]); err != nil {
			return err
		}
		if err := fn(i, data); err != nil {
			return err
		}
	}
	return nil
}

var _ fs.ChunkFetcher = (*fileFetcher)(nil)
var _ fs.ChunkFetcher = (*remote.Blob)(nil)
