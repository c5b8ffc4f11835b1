// Package image mounts a whole image: it resolves a reference, fetches and
// verifies every layer's TOC, and serves the merged root through package fs,
// with chunks coming from the registry (package fs/remote) through the
// node's block cache. Layers that are not lazyfs-converted are refused, or,
// with Options.Pull, fetched whole and converted locally so they are served
// the same way.
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
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// ErrNotConverted means the image has layers that are not lazyfs-chunked.
var ErrNotConverted = errors.New("not a lazyfs image")

// Options configures Mount.
type Options struct {
	// Platform picks the image of an index (nil: the running platform).
	Platform *v1.Platform
	// Fetcher reaches the registry (required).
	Fetcher *remote.Fetcher
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
	// Profiles configures start-up profiles, prefetch and fill (profile.go).
	Profiles ProfileOptions
}

// Mounted is an image served at a directory.
type Mounted struct {
	Image   *remote.Image
	Root    *fs.Root
	Server  *fs.Server
	Fetcher *remote.Fetcher
	// ImageSize is the sum of the layer blob sizes; TarSize of their tars.
	ImageSize, TarSize int64
	// Entries and Chunks count the TOCs' entries and chunks.
	Entries, Chunks int
	// Ready is how long Mount took, from its call to a mounted, ready root.
	Ready time.Duration
	// PulledLayers counts layers fetched whole (Options.Pull).
	PulledLayers int
	tempFiles    []*os.File
	profiles     *profileState
}

// Stats are a mount's counters, for `lazyfs stats` and the demo.
type Stats struct {
	Image        string       `json:"image"`
	Digest       string       `json:"digest"`
	Dir          string       `json:"dir"`
	Layers       int          `json:"layers"`
	ImageSize    int64        `json:"imageSize"`
	TarSize      int64        `json:"tarSize"`
	Entries      int          `json:"entries"`
	Chunks       int          `json:"chunks"`
	ReadySeconds float64      `json:"readySeconds"`
	PulledLayers int          `json:"pulledLayers"`
	FS           fs.Stats     `json:"fs"`
	Remote       remote.Stats `json:"remote"`
	// Prefetch is the profile prefetch and fill's progress (nil: none).
	Prefetch      *fs.PrefetchStats `json:"prefetch,omitempty"`
	ProfileSource string            `json:"profileSource,omitempty"`
}

// Stats returns the mount's counters.
func (m *Mounted) Stats() Stats {
	s := Stats{
		Image: m.Image.Ref.String(), Digest: m.Image.Digest.String(), Dir: m.Server.Dir(), Layers: len(m.Image.Layers),
		ImageSize: m.ImageSize, TarSize: m.TarSize, Entries: m.Entries, Chunks: m.Chunks,
		ReadySeconds: m.Ready.Seconds(), PulledLayers: m.PulledLayers,
		FS: m.Root.Stats(), Remote: m.Fetcher.Stats(), ProfileSource: m.ProfileSource(),
	}
	if pf := m.Prefetcher(); pf != nil {
		ps := pf.Stats()
		s.Prefetch = &ps
	}
	return s
}

// Close unmounts and releases the mount's resources.
func (m *Mounted) Close() error {
	if m.profiles != nil {
		m.profiles.stop()
	}
	err := m.Server.Unmount()
	m.removeTemps()
	return err
}

// removeTemps deletes the locally converted blobs of pulled layers.
func (m *Mounted) removeTemps() {
	for _, f := range m.tempFiles {
		f.Close()
		os.Remove(f.Name())
	}
}

// Mount resolves ref and mounts its merged root read-only at dir.
func Mount(ctx context.Context, ref, dir string, o Options) (_ *Mounted, err error) {
	start := time.Now()
	if o.Fetcher == nil {
		return nil, errors.New("image.Mount: no fetcher")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	img, err := o.Fetcher.Resolve(ctx, ref, o.Platform)
	if err != nil {
		return nil, err
	}
	m := &Mounted{Image: img, Fetcher: o.Fetcher}
	defer func() {
		if err != nil {
			m.removeTemps()
		}
	}()
	if !o.Pull {
		for i, l := range img.Layers {
			if !l.Chunked() {
				return nil, fmt.Errorf("image %s: %w: layer %d (%s) is %s without a lazyfs index; "+
					"convert the image with `lazyfs convert %s DST` and mount DST, or mount with --pull to fetch the layers whole",
					ref, ErrNotConverted, i, l.Digest, l.MediaType, ref)
			}
		}
	}
	m.profiles = loadProfile(ctx, o.Profiles, img, log)
	layers := make([]fs.Layer, len(img.Layers))
	temps := make([]*os.File, len(img.Layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range img.Layers {
		l := &img.Layers[i]
		blob := o.Fetcher.LayerBlob(img, i)
		name := fmt.Sprintf("%s@%s/%s", img.Repo, img.Digest, l.Digest)
		g.Go(func() error {
			if l.Chunked() {
				t, err := blob.TOC(gctx, l.Annotations)
				if err != nil {
					return fmt.Errorf("image %s: layer %d (%s): %w", ref, i, l.Digest, err)
				}
				layers[i] = fs.Layer{Name: name, TOC: t, Fetcher: blob}
				return nil
			}
			log.Info("layer is not converted: fetching it whole", "image", ref, "layer", l.Digest, "size", l.Size)
			f, t, err := pullLayer(gctx, blob, l, o.TempDir)
			if f != nil {
				temps[i] = f
			}
			if err != nil {
				return fmt.Errorf("image %s: layer %d (%s): %w", ref, i, l.Digest, err)
			}
			layers[i] = fs.Layer{Name: name, TOC: t, Fetcher: &fileFetcher{f: f}}
			return nil
		})
	}
	err = g.Wait()
	for _, f := range temps {
		if f != nil {
			m.tempFiles = append(m.tempFiles, f)
			m.PulledLayers++
		}
	}
	if err != nil {
		return nil, err
	}
	for i, l := range layers {
		m.ImageSize += img.Layers[i].Size
		m.TarSize += l.TOC.TarSize
		m.Entries += len(l.TOC.Entries)
		m.Chunks += len(l.TOC.Chunks)
	}
	fo := o.FS
	fo.Cache = o.Cache
	if fo.PrefetchContext == nil {
		// Read-ahead and neighbour fetches yield request slots to on-demand reads.
		fo.PrefetchContext = remote.Background
	}
	if fo.Logger == nil {
		fo.Logger = log
	}
	fo.OnRead = m.profiles.onRead(layers, fo.OnRead)
	root, err := fs.NewRoot(layers, fo)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	mo := o.Mount
	if mo.FsName == "" {
		mo.FsName = "lazyfs:" + img.Ref.String()
	}
	srv, err := fs.Mount(dir, root, mo)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("mount %s at %s: %w", ref, dir, err)
	}
	m.Root, m.Server = root, srv
	if o.Cache != nil {
		m.profiles.start(ctx, root, layers, o.Cache)
	}
	m.Ready = time.Since(start)
	return m, nil
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
