package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// image converts one image's layers and returns the converted image (not yet pushed).
func (c *converter) image(ctx context.Context, img v1.Image, platform *v1.Platform) (v1.Image, ImageReport, error) {
	srcDigest, err := img.Digest()
	if err != nil {
		return nil, ImageReport{}, fmt.Errorf("image %s: %w", c.src, err)
	}
	where := fmt.Sprintf("image %s@%s", c.src.Context(), srcDigest)
	mt, err := img.MediaType()
	if err != nil {
		return nil, ImageReport{}, fmt.Errorf("%s: %w", where, err)
	}
	if mt != types.DockerManifestSchema2 && mt != types.OCIManifestSchema1 {
		return nil, ImageReport{}, fmt.Errorf("%s: %w: manifest type %q", where, ErrUnsupportedMediaType, mt)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, ImageReport{}, fmt.Errorf("%s: %w", where, err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, ImageReport{}, fmt.Errorf("%s: config: %w", where, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, ImageReport{}, fmt.Errorf("%s: config: %w", where, err)
	}
	ir := ImageReport{Platform: platformString(platform), SourceDigest: srcDigest.String(), SourceManifest: string(mt)}

	// Which layer of the manifest is which diffID: the i-th tar layer.
	jobs := make([]*layerJob, len(m.Layers))
	var g errgroup.Group
	g.SetLimit(max(c.o.jobs, 1))
	for i, d := range m.Layers {
		var diffID v1.Hash
		if i < len(cfg.RootFS.DiffIDs) {
			diffID = cfg.RootFS.DiffIDs[i]
		} else if isTarLayer(d.MediaType) && d.MediaType.IsDistributable() {
			return nil, ir, fmt.Errorf("%s: layer %d (%s): no diffID in the config (%d diffIDs, %d layers)", where, i, d.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers))
		}
		c.mu.Lock()
		j, seen := c.layers[d.Digest]
		if !seen {
			j = &layerJob{}
			c.layers[d.Digest] = j
			if isTarLayer(d.MediaType) {
				c.total += d.Size
			}
		}
		c.mu.Unlock()
		jobs[i] = j
		g.Go(func() error {
			j.once.Do(func() { j.err = c.layer(ctx, img, where, i, d, diffID, j) })
			return j.err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, ir, err
	}

	// Nothing converted (already chunked, or not an image of tar layers, such
	// as a build attestation): keep the manifest byte for byte, digest and all.
	converted := false
	for _, j := range jobs {
		converted = converted || j.report.Kept == ""
	}
	if !converted {
		for _, j := range jobs {
			ir.Layers = append(ir.Layers, j.report)
		}
		ir.Digest = srcDigest.String()
		return img, ir, nil
	}

	// The new manifest: OCI, same config bytes, converted layer descriptors.
	nm := m.DeepCopy()
	nm.SchemaVersion = 2
	nm.MediaType = types.OCIManifestSchema1
	if nm.Config.MediaType == types.DockerConfigJSON {
		nm.Config.MediaType = types.OCIConfigJSON
	}
	ci := &convImage{rawConfig: rawCfg, layers: map[v1.Hash]partial.CompressedLayer{}}
	for i, j := range jobs {
		nm.Layers[i] = j.desc
		ci.layers[j.desc.Digest] = j.layer
		r := j.report
		ir.Layers = append(ir.Layers, r)
	}
	if ci.rawManifest, err = json.Marshal(nm); err != nil {
		return nil, ir, err
	}
	out, err := partial.CompressedToImage(ci)
	if err != nil {
		return nil, ir, err
	}
	d, err := out.Digest()
	if err != nil {
		return nil, ir, err
	}
	ir.Digest = d.String()
	return out, ir, nil
}

// layer converts (or keeps) one layer and fills j.
func (c *converter) layer(ctx context.Context, img v1.Image, where string, i int, d v1.Descriptor, diffID v1.Hash, j *layerJob) (err error) {
	start := time.Now()
	where = fmt.Sprintf("%s: layer %d (%s)", where, i, d.Digest)
	l, err := img.LayerByDigest(d.Digest)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	j.report = LayerReport{SourceDigest: d.Digest.String(), SourceMediaType: string(d.MediaType), SourceSize: d.Size}
	keep := func(why string) error {
		j.layer, j.desc = l, d
		j.report.Digest, j.report.MediaType, j.report.Size, j.report.Kept = d.Digest.String(), string(d.MediaType), d.Size, why
		return nil
	}
	switch {
	case !d.MediaType.IsDistributable():
		return keep("not distributable")
	case !isTarLayer(d.MediaType):
		if d.MediaType.IsLayer() || d.MediaType == "" {
			return fmt.Errorf("%s: %w: layer type %q", where, ErrUnsupportedMediaType, d.MediaType)
		}
		return keep("not a tar layer")
	case d.MediaType == toc.MediaTypeLayer:
		if loc, ok, err := toc.LocationFromAnnotations(d.Annotations); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		} else if ok {
			j.report.KeptTOC = "trusted"
			if !c.o.trust {
				if err := c.verifyKept(ctx, l, d, loc, diffID); err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				j.report.KeptTOC = "verified"
			} else {
				c.report("convert", d.Size)
			}
			return keep("already chunked")
		}
	}

	tr, drain, err := openTar(countingLayer{l, c})
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	f, err := os.CreateTemp(c.o.tempDir, "lazyfs-layer-*")
	if err != nil {
		tr.Close()
		drain()
		return fmt.Errorf("%s: %w", where, err)
	}
	j.file = f.Name()
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%s: %w", where, cerr)
		}
	}()
	res, err := toc.Convert(ctx, tr, f, toc.WithChunkSize(c.o.chunkSize), toc.WithLibraryChunkSize(c.o.libChunk), toc.WithLevel(c.o.level), toc.WithStartupLevel(c.o.startLvl))
	tr.Close()
	if derr := drain(); err == nil && derr != nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if res.DiffID.String() != diffID.String() {
		return fmt.Errorf("%s: %w: uncompressed %s, config says %s", where, ErrDiffIDMismatch, res.DiffID, diffID)
	}
	h, err := v1.NewHash(res.Digest.String())
	if err != nil {
		return err
	}
	ann := map[string]string{}
	for k, v := range d.Annotations {
		ann[k] = v
	}
	for k, v := range res.Annotations() {
		ann[k] = v
	}
	ann[toc.AnnotationSourceDigest] = d.Digest.String()
	// No URLs: they serve the source blob, and clients (containerd) try
	// them before the registry, which alone holds the converted one.
	j.desc = v1.Descriptor{MediaType: toc.MediaTypeLayer, Size: res.Size, Digest: h, Annotations: ann}
	j.layer = &fileLayer{path: f.Name(), digest: h, diffID: diffID, size: res.Size}
	j.report.Digest, j.report.MediaType, j.report.Size = h.String(), toc.MediaTypeLayer, res.Size
	j.report.UncompressedSize, j.report.Entries, j.report.Chunks = res.TOC.TarSize, len(res.TOC.Entries), len(res.TOC.Chunks)
	j.report.TOCSize = res.Location.Length
	j.report.Duration = Duration(time.Since(start))
	c.mu.Lock()
	c.converted++
	c.mu.Unlock()
	return nil
}

// verifyKept downloads an already-chunked layer (its digest checked as it
// is read) to a temporary file and checks its TOC against its tar, and the
// tar against the config's diffID.
func (c *converter) verifyKept(ctx context.Context, l partial.CompressedLayer, d v1.Descriptor, loc toc.Location, diffID v1.Hash) error {
	rc, err := countingLayer{l, c}.Compressed()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(c.o.tempDir, "lazyfs-kept-*")
	if err != nil {
		rc.Close()
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	n, err := io.Copy(f, ctxReader{ctx, io.LimitReader(rc, d.Size+1)})
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if n != d.Size {
		return fmt.Errorf("%w: blob of %d bytes, descriptor says %d", ErrKeptLayerMismatch, n, d.Size)
	}
	_, got, err := toc.Verify(ctx, f, n, &loc)
	if err != nil {
		if t, _, rerr := toc.ReadTOC(ctx, f, n, &loc); rerr == nil && errors.Is(err, toc.ErrTOCMismatch) && legacySparse(t) {
			return fmt.Errorf("%w: %w (its TOC predates sparse maps and the layer has sparse files: convert the source image again, or keep it with --trust-chunked, its sparse files then unreadable)",
				ErrKeptLayerMismatch, err)
		}
		return fmt.Errorf("%w: %w", ErrKeptLayerMismatch, err)
	}
	if got.String() != diffID.String() {
		return fmt.Errorf("%w: %w: uncompressed %s, config says %s", ErrKeptLayerMismatch, ErrDiffIDMismatch, got, diffID)
	}
	return nil
}

// legacySparse reports whether t, written before sparse maps, has a sparse
// file without one: today's converter derives another TOC for its layer.
func legacySparse(t *toc.TOC) bool {
	for i := range t.Entries {
		if f := t.Entries[i].Flags; f&toc.FlagSparse != 0 && f&toc.FlagSparseMap == 0 {
			return true
		}
	}
	return false
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// countingLayer reports compressed bytes read for progress.
type countingLayer struct {
	partial.CompressedLayer
	c *converter
}

func (l countingLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.CompressedLayer.Compressed()
	if err != nil {
		return nil, err
	}
	return &progressReader{rc: rc, c: l.c}, nil
}

type progressReader struct {
	rc      io.ReadCloser
	c       *converter
	pending atomic.Int64
}

func (r *progressReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if v := r.pending.Add(int64(n)); v >= 1<<20 || err != nil {
		r.pending.Add(-v)
		r.c.report("convert", v)
	}
	return n, err
}

func (r *progressReader) Close() error { return r.rc.Close() }

// fileLayer is a converted layer staged in a local file.
type fileLayer struct {
	path   string
	digest v1.Hash
	diffID v1.Hash
	size   int64
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return toc.MediaTypeLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

// convImage is the converted image: our manifest, the original config bytes.
type convImage struct {
	rawManifest []byte
	rawConfig   []byte
	layers      map[v1.Hash]partial.CompressedLayer
}

func (i *convImage) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *convImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *convImage) RawManifest() ([]byte, error)        { return i.rawManifest, nil }
func (i *convImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("layer %s not in the converted image", h)
}

// index is a converted image index.
type index struct {
	manifest v1.IndexManifest
	children map[v1.Hash]any // v1.Image or *index
	raw      []byte
	digest   v1.Hash
}

func (x *index) seal() (err error) {
	if x.raw, err = json.Marshal(x.manifest); err != nil {
		return err
	}
	x.digest, _, err = v1.SHA256(bytesReader(x.raw))
	return err
}

func (x *index) MediaType() (types.MediaType, error)       { return types.OCIImageIndex, nil }
func (x *index) Digest() (v1.Hash, error)                  { return x.digest, nil }
func (x *index) Size() (int64, error)                      { return int64(len(x.raw)), nil }
func (x *index) IndexManifest() (*v1.IndexManifest, error) { return x.manifest.DeepCopy(), nil }
func (x *index) RawManifest() ([]byte, error)              { return x.raw, nil }
func (x *index) Image(h v1.Hash) (v1.Image, error) {
	if img, ok := x.children[h].(v1.Image); ok {
		return img, nil
	}
	return nil, fmt.Errorf("image %s: %w", h, errNotChild)
}
func (x *index) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	if idx, ok := x.children[h].(*index); ok {
		return idx, nil
	}
	return nil, fmt.Errorf("index %s: %w", h, errNotChild)
}

var errNotChild = errors.New("not a child of this index")

var _ v1.ImageIndex = (*index)(nil)
