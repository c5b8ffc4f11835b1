package bench

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/lazyfs/lazyfs/fs/profile"
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
// image optimize` and `nerdctl image convert --estargz` run), gzip at the
// default level. prioritized[i] are layer i's files to put first, in
// order, behind a prefetch landmark (what ctr-remote optimize records by
// running the image); a layer without any gets the no-prefetch landmark,
// so stargz-snapshotter prefetches nothing of it. The layers carry the TOC
// digest and uncompressed size annotations stargz-snapshotter verifies
// them by. A dst already in the registry is kept. Layers are spooled under
// tmpDir ("" for the system's).
func toEstargz(ctx context.Context, src, dst, tmpDir string, prioritized [][]string) error {
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
	if len(prioritized) > len(layers) {
		return fmt.Errorf("image %s: %d layers, but prioritized files for %d", src, len(layers), len(prioritized))
	}
	for i, l := range layers {
		var files []string
		if i < len(prioritized) {
			files = prioritized[i]
		}
		el, err := estargzLayer(ctx, l, tmp, files)
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

func estargzLayer(ctx context.Context, l v1.Layer, dir string, prioritized []string) (*esgzLayer, error) {
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
	var missed []string // a profiled path this layer lacks (a whiteout's target, say)
	blob, err := estargz.Build(io.NewSectionReader(tarf, 0, n), estargz.WithContext(ctx), estargz.WithCompressionLevel(gzip.DefaultCompression),
		estargz.WithPrioritizedFiles(prioritized), estargz.WithAllowPrioritizeNotFound(&missed))
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

// Estargz adds to refs the plain image's eStargz copy (ImageRefs.Stargz),
// converting it unless the registry has it already, within Timeout.
func (im *Images) Estargz(ctx context.Context, refs ImageRefs) (ImageRefs, error) {
	ctx, cancel := im.bounded(ctx)
	defer cancel()
	repo, err := plainRepo(refs)
	if err != nil {
		return refs, err
	}
	ref := repo + ":" + estargzTag()
	im.logf("converting %s to eStargz %s", refs.Plain, ref)
	if err := toEstargz(ctx, refs.Plain, ref, "", nil); err != nil {
		return refs, err
	}
	img, err := remoteImageInsecure(ctx, ref)
	if err != nil {
		return refs, err
	}
	if refs.StargzBytes, err = layerBytes(img); err != nil {
		return refs, fmt.Errorf("image %s: %w", ref, err)
	}
	refs.Stargz = ref
	return refs, nil
}

// plainRepo is the repository of a prepared image (its plain tag's).
func plainRepo(refs ImageRefs) (string, error) {
	repo, ok := strings.CutSuffix(refs.Plain, ":plain")
	if !ok {
		return "", fmt.Errorf("image %s: not a prepared plain image", refs.Plain)
	}
	return repo, nil
}

// EstargzProfiled adds to refs w's eStargz copy with the files of w's
// start-up profile (attached to refs.Profiled by Record) prioritized, in
// the order the workload first read them, layer by layer: what ctr-remote
// image optimize records by running the image, taken from the same
// recorded run lazy+profile starts from. It converts unless the registry
// has the copy already, within Timeout.
func (im *Images) EstargzProfiled(ctx context.Context, w *Workload, refs ImageRefs) (ImageRefs, error) {
	if refs.Profiled == "" {
		return refs, fmt.Errorf("workload %s: no recorded start-up profile to prioritize", w.Name)
	}
	ctx, cancel := im.bounded(ctx)
	defer cancel()
	repo, err := plainRepo(refs)
	if err != nil {
		return refs, err
	}
	prio, key, err := profiledFiles(ctx, refs)
	if err != nil {
		return refs, fmt.Errorf("workload %s: %w", w.Name, err)
	}
	ref := repo + ":" + estargzTag() + "-" + key
	im.logf("converting %s to eStargz %s, prioritizing %s's start-up profile", refs.Plain, ref, w.Name)
	if err := toEstargz(ctx, refs.Plain, ref, "", prio); err != nil {
		return refs, err
	}
	refs.StargzProfiled = ref
	return refs, nil
}

// profiledFiles returns, for each layer of refs.Plain, the paths of that
// layer the start-up profile on refs.Profiled names, in first-read order,
// and a short key of the profile. The converted image's layers are the
// plain image's, one for one and in order.
func profiledFiles(ctx context.Context, refs ImageRefs) ([][]string, string, error) {
	pref, err := name.ParseReference(refs.Profiled, name.Insecure)
	if err != nil {
		return nil, "", err
	}
	lazy, err := remote.Image(pref, remote.WithContext(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("image %s: %w", refs.Profiled, err)
	}
	d, err := lazy.Digest()
	if err != nil {
		return nil, "", err
	}
	p, desc, err := profile.Pull(ctx, pref.Context(), d, remote.WithContext(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("start-up profile of %s: %w", refs.Profiled, err)
	}
	plain, err := remoteImageInsecure(ctx, refs.Plain)
	if err != nil {
		return nil, "", err
	}
	pm, err := plain.Manifest()
	if err != nil {
		return nil, "", err
	}
	lm, err := lazy.Manifest()
	if err != nil {
		return nil, "", err
	}
	if len(pm.Layers) != len(lm.Layers) {
		return nil, "", fmt.Errorf("image %s has %d layers, its conversion %s %d", refs.Plain, len(pm.Layers), refs.Profiled, len(lm.Layers))
	}
	index := make(map[string]int, len(lm.Layers))
	for i, l := range lm.Layers {
		index[l.Digest.String()] = i
	}
	prio := make([][]string, len(lm.Layers))
	seen := make(map[[2]string]bool)
	for _, s := range p.Spans {
		if s.Layer < 0 || s.Layer >= len(p.Layers) {
			return nil, "", fmt.Errorf("start-up profile %s: span of %s names layer %d of %d", desc.Digest, s.Path, s.Layer, len(p.Layers))
		}
		i, ok := index[p.Layers[s.Layer]]
		if !ok {
			return nil, "", fmt.Errorf("start-up profile %s: layer %s is not in %s", desc.Digest, p.Layers[s.Layer], refs.Profiled)
		}
		if k := [2]string{p.Layers[s.Layer], s.Path}; !seen[k] {
			seen[k] = true
			prio[i] = append(prio[i], s.Path)
		}
	}
	return prio, shortHash(desc.Digest.String()), nil
}
