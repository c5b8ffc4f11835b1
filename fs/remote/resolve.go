package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"

	"github.com/lazyfs/lazyfs/internal/platform"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// maxManifestSize bounds a manifest or index body (distribution's own limit is 4 MiB).
const maxManifestSize = 4 << 20

var manifestAccept = strings.Join([]string{
	string(types.OCIImageIndex), string(types.OCIManifestSchema1),
	string(types.DockerManifestList), string(types.DockerManifestSchema2),
}, ", ")

// Image is a resolved image manifest.
type Image struct {
	// Ref is the reference as parsed; Repo its repository.
	Ref  name.Reference
	Repo name.Repository
	// Digest is the digest of the image manifest (for an index, of the
	// selected platform's manifest); IndexDigest is the index's digest, if any.
	Digest      v1.Hash
	IndexDigest v1.Hash
	MediaType   types.MediaType
	Manifest    *v1.Manifest
	RawManifest []byte
	// Platform is the platform selected from an index (nil without an index).
	Platform *v1.Platform
	// Config is the digest of the image config blob.
	Config v1.Hash
	// Layers are the layer descriptors in order, annotations included.
	Layers []Layer
}

// Layer is a layer descriptor of a resolved image.
type Layer struct {
	v1.Descriptor
}

// Chunked reports whether the layer's descriptor carries lazyfs TOC annotations.
func (l *Layer) Chunked() bool {
	_, ok, err := toc.LocationFromAnnotations(l.Annotations)
	return ok && err == nil
}

// LayerBlob opens layer i of the image for range reads.
func (f *Fetcher) LayerBlob(img *Image, i int) *Blob {
	l := img.Layers[i]
	return f.Blob(img.Repo, l.Digest, l.Size)
}

// Resolve fetches ref's manifest, selecting platform from an index (nil
// means the running platform), and returns the image manifest's layers and
// config. Manifests fetched by digest are verified against it.
func (f *Fetcher) Resolve(ctx context.Context, ref string, platform *v1.Platform) (*Image, error) {
	nopts := []name.Option{name.WeakValidation}
	if f.opts.insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("resolve %q: %w", ref, err)
	}
	if platform == nil {
		platform = &v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
		if runtime.GOARCH == "arm" {
			platform.Variant = "v7"
		}
	}
	img := &Image{Ref: r, Repo: r.Context()}
	raw, mt, dig, err := f.manifest(ctx, img.Repo, r.Identifier(), isDigest(r))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	if mt.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w: index: %v", r, ErrBadResponse, err)
		}
		img.IndexDigest = dig
		if img.Platform, raw, mt, dig, err = f.pick(ctx, img.Repo, idx, platform); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", r, err)
		}
	}
	if !mt.IsImage() {
		return nil, fmt.Errorf("resolve %s: %w: media type %q is not an image manifest", r, ErrBadResponse, mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w: manifest: %v", r, ErrBadResponse, err)
	}
	img.Digest, img.MediaType, img.Manifest, img.RawManifest = dig, mt, m, raw
	img.Config = m.Config.Digest
	for _, l := range m.Layers {
		img.Layers = append(img.Layers, Layer{Descriptor: l})
	}
	return img, nil
}

// pick chooses the image of index idx to run on platform, as containerd
// does (platform.Pick: an entry whose platform satisfies it, else one
// without a platform whose config's does; never an attestation). It
// returns the platform and the chosen manifest.
func (f *Fetcher) pick(ctx context.Context, repo name.Repository, idx *v1.IndexManifest, want *v1.Platform) (
	*v1.Platform, []byte, types.MediaType, v1.Hash, error) {
	type got struct {
		raw []byte
		mt  types.MediaType
		dig v1.Hash
	}
	read := map[int]got{}
	get := func(i int) (got, error) {
		if g, ok := read[i]; ok {
			return g, nil
		}
		d := &idx.Manifests[i]
		raw, mt, dig, err := f.manifest(ctx, repo, d.Digest.String(), true)
		if err != nil {
			return got{}, fmt.Errorf("platform %s: manifest %s: %w", want, d.Digest, err)
		}
		if !mt.IsImage() {
			return got{}, fmt.Errorf("platform %s: %w: manifest %s is %q, not an image", want, ErrBadResponse, dig, mt)
		}
		read[i] = got{raw, mt, dig}
		return read[i], nil
	}
	i, p, err := platform.Pick(idx.Manifests, *want, func(i int) (*v1.Platform, error) {
		g, err := get(i)
		if err != nil {
			return nil, err
		}
		p, err := f.configPlatform(ctx, repo, g.raw)
		if err != nil {
			return nil, fmt.Errorf("platform %s: manifest %s: %w", want, g.dig, err)
		}
		return p, nil
	})
	switch {
	case errors.Is(err, platform.ErrUnprobed):
		return nil, nil, "", v1.Hash{}, fmt.Errorf("%w %s: %w", ErrNoPlatform, want, err)
	case err != nil:
		return nil, nil, "", v1.Hash{}, err
	case i < 0:
		return nil, nil, "", v1.Hash{}, fmt.Errorf("%w %s", ErrNoPlatform, want)
	}
	g, err := get(i)
	if err != nil {
		return nil, nil, "", v1.Hash{}, err
	}
	return p, g.raw, g.mt, g.dig, nil
}

// maxConfigSize bounds an image config read to learn its platform.
const maxConfigSize = 4 << 20

// configPlatform reads the config of the image manifest raw (verified by
// its digest) and returns its os, architecture and variant.
func (f *Fetcher) configPlatform(ctx context.Context, repo name.Repository, raw []byte) (*v1.Platform, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrBadResponse, err)
	}
	if m.Config.Size <= 0 || m.Config.Size > maxConfigSize {
		return nil, fmt.Errorf("%w: config %s of %d bytes", ErrBadResponse, m.Config.Digest, m.Config.Size)
	}
	b := make([]byte, m.Config.Size)
	if _, err := f.Blob(repo, m.Config.Digest, m.Config.Size).ReadAt(ctx, b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("config: %w", err)
	}
	if sum := sha256.Sum256(b); m.Config.Digest.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != m.Config.Digest.Hex {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, toc.ErrDigestMismatch)
	}
	var cf struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
		OSVersion    string `json:"os.version"`
	}
	if err := json.Unmarshal(b, &cf); err != nil {
		return nil, fmt.Errorf("%w: config %s: %v", ErrBadResponse, m.Config.Digest, err)
	}
	return &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant, OSVersion: cf.OSVersion}, nil
}

func isDigest(r name.Reference) bool {
	_, ok := r.(name.Digest)
	return ok
}

// manifest fetches a manifest by tag or digest; by digest, the body is verified.
func (f *Fetcher) manifest(ctx context.Context, repo name.Repository, id string, byDigest bool) ([]byte, types.MediaType, v1.Hash, error) {
	var want v1.Hash
	cp := capResolve
	if byDigest {
		h, err := v1.NewHash(id)
		if err != nil {
			return nil, "", v1.Hash{}, fmt.Errorf("%w: digest %q: %v", ErrBadResponse, id, err)
		}
		want, cp = h, capPull
	}
	var raw []byte
	var mt types.MediaType
	var got v1.Hash
	err := f.do(ctx, repo, cp, nil, func(ctx context.Context, ep *endpoint, c *http.Client) error {
		rctx, cancel := context.WithTimeout(ctx, 2*f.opts.stallTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, ep.manifestURL(repo, id), nil)
		if err != nil {
			return err
		}
		for k, vs := range ep.header {
			req.Header[k] = vs
		}
		req.Header.Set("Accept", manifestAccept)
		f.st.requests.Add(1)
		resp, err := c.Do(req)
		if err != nil {
			return doError(err, rctx)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return responseError(resp)
		}
		if resp.ContentLength > maxManifestSize {
			return fmt.Errorf("%w: manifest of %d bytes", ErrBadResponse, resp.ContentLength)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
		if err != nil {
			return transient(err)
		}
		if len(b) > maxManifestSize {
			return fmt.Errorf("%w: manifest larger than %d bytes", ErrBadResponse, maxManifestSize)
		}
		sum := sha256.Sum256(b)
		got = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
		if byDigest && want.Algorithm == "sha256" && got != want {
			return &verifyError{fmt.Errorf("manifest %s from %s: %w: got %s", want, ep.base, toc.ErrDigestMismatch, got)}
		}
		mt = types.MediaType(strings.TrimSpace(strings.Split(resp.Header.Get("Content-Type"), ";")[0]))
		if !mt.IsIndex() && !mt.IsImage() {
			mt = sniffMediaType(b)
		}
		raw = b
		return nil
	})
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	return raw, mt, got, nil
}

// sniffMediaType reads mediaType from the body when the Content-Type header is missing or generic.
func sniffMediaType(b []byte) types.MediaType {
	var probe struct {
		MediaType types.MediaType  `json:"mediaType"`
		Manifests []v1.Descriptor  `json:"manifests"`
		Layers    *[]v1.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return ""
	}
	switch {
	case probe.MediaType != "":
		return probe.MediaType
	case probe.Manifests != nil:
		return types.OCIImageIndex
	case probe.Layers != nil:
		return types.OCIManifestSchema1
	}
	return ""
}
