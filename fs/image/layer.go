package image

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// Layer is one layer of a resolved image opened to be served: lazily, from
// its verified TOC with chunks fetched from the registry, or pulled whole and
// converted into a local temp file. Mount and MountLayer serve Layers;
// warming and inspect read their TOCs.
type Layer struct {
	// TOC is the layer's verified table of contents; shared, read-only.
	TOC *toc.TOC

	img     *remote.Image
	index   int
	fetcher fs.ChunkFetcher
	temp    *os.File
	pulled  bool
}

// LayerOptions configures OpenLayer.
type LayerOptions struct {
	// Pull fetches a layer that is not lazyfs-chunked whole and converts it
	// into TempDir; without it such a layer is an error wrapping ErrNotConverted.
	Pull    bool
	TempDir string
	Logger  *slog.Logger
}

// OpenLayer opens layer i of img, loading its TOC through r (once per layer
// for all callers).
func OpenLayer(ctx context.Context, r *Resolver, img *remote.Image, i int, o LayerOptions) (*Layer, error) {
	if i < 0 || i >= len(img.Layers) {
		return nil, fmt.Errorf("image %s: no layer %d of %d", img.Ref, i, len(img.Layers))
	}
	d := &img.Layers[i]
	if d.Chunked() {
		t, err := r.TOC(ctx, img, i)
		if err != nil {
			return nil, err
		}
		return &Layer{TOC: t, img: img, index: i, fetcher: r.Fetcher().LayerBlob(img, i)}, nil
	}
	if err := checkDistributable(img, i); err != nil {
		return nil, err
	}
	if !o.Pull {
		return nil, fmt.Errorf("image %s: layer %d (%s): %w: %s without a lazyfs index", img.Ref, i, d.Digest, ErrNotConverted, d.MediaType)
	}
	if o.Logger != nil {
		o.Logger.Info("layer is not converted: fetching it whole", "image", img.Ref.String(), "layer", d.Digest.String(), "size", d.Size)
	}
	f, t, err := pullLayer(ctx, r.Fetcher().LayerBlob(img, i), d, o.TempDir)
	if err != nil {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
		return nil, fmt.Errorf("image %s: layer %d (%s): %w", img.Ref, i, d.Digest, err)
	}
	return &Layer{TOC: t, img: img, index: i, fetcher: &fileFetcher{f: f}, temp: f, pulled: true}, nil
}

// Digest is the layer blob's digest.
func (l *Layer) Digest() v1.Hash { return l.img.Layers[l.index].Digest }

// Size is the layer blob's size in the registry.
func (l *Layer) Size() int64 { return l.img.Layers[l.index].Size }

// Index is the layer's position in its image (0 is the bottom layer).
func (l *Layer) Index() int { return l.index }

// Pulled reports whether the layer was fetched whole and converted locally.
func (l *Layer) Pulled() bool { return l.pulled }

// Name identifies the layer in logs: repo@image-digest/layer-digest.
func (l *Layer) Name() string {
	return fmt.Sprintf("%s@%s/%s", l.img.Repo, l.img.Digest, l.Digest())
}

// Fetcher returns what fetches the layer's chunks (the registry, or the
// local blob of a pulled layer).
func (l *Layer) Fetcher() fs.ChunkFetcher { return l.fetcher }

// Close removes a pulled layer's local blob. Close is idempotent; the Layer must
// not be served any more.
func (l *Layer) Close() error {
	if l.temp == nil {
		return nil
	}
	f := l.temp
	l.temp = nil
	f.Close()
	return os.Remove(f.Name())
}

// checkDistributable fails with ErrNonDistributable for a foreign layer.
func checkDistributable(img *remote.Image, i int) error {
	d := &img.Layers[i]
	if d.MediaType.IsDistributable() {
		return nil
	}
	return fmt.Errorf("image %s: layer %d (%s): %w: %s is served from its URLs %q, not by the registry, "+
		"and lazyfs cannot serve it: run the image with a runtime that pulls it whole",
		img.Ref, i, d.Digest, ErrNonDistributable, d.MediaType, d.URLs)
}
