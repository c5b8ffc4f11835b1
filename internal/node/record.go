package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// layerRecord is what LayerFS remembers of a layer it mounted, in
// Root/layers (0600), so that a restarted daemon can mount it again at the
// same mount point even when the image reference no longer resolves to an
// image holding the layer (a moved tag, a deleted manifest): the layer
// blob and its TOC are all a layer mount needs.
type layerRecord struct {
	Mountpoint  string        `json:"mountpoint"`
	Ref         string        `json:"ref"`
	Repo        string        `json:"repo"`
	ImageDigest string        `json:"imageDigest"`
	Layer       v1.Descriptor `json:"layer"`
}

func (n *Node) recordPath(mountpoint string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	return filepath.Join(n.cfg.Root, "layers", hex.EncodeToString(sum[:12])+".json")
}

func (n *Node) saveRecord(dir, ref string, img *remote.Image, i int) {
	rec := layerRecord{Mountpoint: dir, Ref: ref, Repo: img.Repo.String(), ImageDigest: img.Digest.String(), Layer: img.Layers[i].Descriptor}
	if err := WriteJSONPrivate(n.recordPath(dir), rec); err != nil {
		n.log.Warn("cannot record the layer for a restore after restart", "dir", dir, "layer", rec.Layer.Digest.String(), "error", err)
	}
}

func (n *Node) dropRecord(dir string) { os.Remove(n.recordPath(dir)) }

// recordedImage rebuilds, from the record of mountpoint, a one-layer image
// holding layer (nil if there is no matching record).
func (n *Node) recordedImage(dir, ref string, layer digest.Digest) *remote.Image {
	rec, err := readJSON[layerRecord](n.recordPath(dir), maxStateFile)
	if err != nil || rec.Mountpoint != dir || rec.Ref != ref || rec.Layer.Digest.String() != layer.String() {
		return nil
	}
	opts := []name.Option{name.WeakValidation}
	if n.cfg.Insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(rec.Repo, opts...)
	if err != nil {
		return nil
	}
	dg, err := v1.NewHash(rec.ImageDigest)
	if err != nil {
		return nil
	}
	return &remote.Image{Ref: repo.Digest(rec.ImageDigest), Repo: repo, Digest: dg, Layers: []remote.Layer{{Descriptor: rec.Layer}}}
}

// resolveLayer finds layer in ref's image; when the image cannot be
// resolved or no longer holds the layer, it falls back to the layer's
// record for mountpoint.
func (n *Node) resolveLayer(ctx context.Context, dir, ref string, layer digest.Digest) (*remote.Image, int, error) {
	img, err := n.resolver.Resolve(ctx, ref, nil)
	if err == nil {
		for i := range img.Layers {
			if img.Layers[i].Digest.String() == layer.String() {
				return img, i, nil
			}
		}
		err = fmt.Errorf("image %s (%s): %w: no layer %s", ref, img.Digest, image.ErrNoLayer, layer)
	}
	if rimg := n.recordedImage(dir, ref, layer); rimg != nil {
		n.log.Warn("serving the layer from its recorded descriptor", "dir", dir, "image", ref, "layer", layer.String(), "reason", err)
		return rimg, 0, nil
	}
	return nil, 0, err
}

func readJSON[T any](path string, limit int64) (*T, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes, limit %d", path, fi.Size(), limit)
	}
	var v T
	if err := json.NewDecoder(io.LimitReader(f, limit)).Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &v, nil
}
