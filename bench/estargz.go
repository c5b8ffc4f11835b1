package bench

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// estargzTag is the tag of a workload's eStargz copy: the estargz library's
// version, so that a new converter converts again.
func estargzTag() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/containerd/stargz-snapshotter/estargz" {
				v = d.Version
			}
		}
	}
	return "estargz-" + v
}

// toEstargz converts the image src into dst, with every layer rebuilt as
// eStargz by stargz-snapshotter's own estargz package (what `ctr-remote
// image optimize --no-optimize` and `nerdctl image convert --estargz` run),
// gzip at the default level, no prioritized files (so stargz-snapshotter
// prefetches nothing: the no-profile baseline). The layers carry the TOC
// digest and uncompressed size annotations stargz-snapshotter verifies
// them by. A dst already in the registry is kept. Layers are spooled under
// tmpDir ("" for the system's).
func toEstargz(ctx context.Context, src, dst, tmpDir string) error {
	r, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return fmt.Errorf("image %s: %w", dst, err)
	}
	if _, err := remote.Head(r, remote.WithContext(ctx)); err == nil {
		return nil
	}
	img, err := remoteImageInsecure(ctx, src)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("image %s: %w", src, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image %s: config: %w", src, err)
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs, cf.History = nil, nil
	tmp, err := os.MkdirTemp(tmpDir, "estargz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	if out, err = mutate.ConfigFile(out, cf); err != nil {
		return err
	}
	for i, l := range layers {
		el, err := estargzLayer(ctx, l, tmp)
		if err != nil {
			return fmt.Errorf("image %s: layer %d: eStargz: %w", src, i, err)
		}
		out, err = mutate.Append(out, mutate.Addendum{Layer: el, MediaType: types.OCILayer, Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         el.toc,
			estargz.StoreUncompressedSizeAnnotation: fmt.Sprint(el.uncompressed),
		}})
		if err != nil {
			return err
		}
	}
	if err := remote.Write(r, out, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", dst, err)
	}
	return nil
}

// esgzLayer is an eStargz layer spooled to a file.
type esgzLayer struct {
	v1.Layer
	toc          string
	uncompressed int64
}

func estargzLayer(ctx context.Context, l v1.Layer, dir string) (*esgzLayer, error) {
	// Build reads the layer's tar at random offsets: spool it.
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tarf, err := os.CreateTemp(dir, "layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer tarf.Close()
	n, err := io.Copy(tarf, rc)
	if err != nil {
		return nil, err
	}
	blob, err := estargz.Build(io.NewSectionReader(tarf, 0, n), estargz.WithContext(ctx), estargz.WithCompressionLevel(gzip.DefaultCompression))
	if err != nil {
		return nil, err
	}
	defer blob.Close()
	f, err := os.CreateTemp(dir, "layer-*.esgz")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), blob)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, err
	}
	diffID, err := v1.NewHash(blob.DiffID().String())
	if err != nil {
		return nil, err
	}
	cl := &fileBlob{path: f.Name(), size: size, digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}, diffID: diffID}
	layer, err := partial.CompressedToLayer(cl)
	if err != nil {
		return nil, err
	}
	return &esgzLayer{Layer: layer, toc: blob.TOCDigest().String(), uncompressed: usize}, nil
}

// fileBlob is a compressed layer in a file whose digests are known
// (partial.CompressedLayer and partial.WithDiffID).
type fileBlob struct {
	path           string
	size           int64
	digest, diffID v1.Hash
}

func (b *fileBlob) Digest() (v1.Hash, error)            { return b.digest, nil }
func (b *fileBlob) DiffID() (v1.Hash, error)            { return b.diffID, nil }
func (b *fileBlob) Size() (int64, error)                { return b.size, nil }
func (b *fileBlob) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (b *fileBlob) Compressed() (io.ReadCloser, error)  { return os.Open(b.path) }
