package profile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"strconv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// refDigestAnnotation ties a BuildKit attestation manifest of an index to
// the image manifest it describes.
const refDigestAnnotation = "vnd.docker.reference.digest"

// Embedded is what Embed pushed.
type Embedded struct {
	// Manifest is the rewritten image manifest, carrying the profile.
	Manifest v1.Descriptor
	// Top is what was put at the destination reference: Manifest, or the
	// rewritten index holding it.
	Top v1.Descriptor
	// Blob is the profile blob the manifest's annotations name.
	Blob v1.Descriptor
	// Referrer is the profile's referrer artifact of Manifest (Push); zero
	// when ReferrerErr says why it could not be pushed (the manifest's
	// profile stands without it).
	Referrer    v1.Hash
	ReferrerErr error
}

// Embed writes p into an image manifest of dst's repository
// (docs/format.md §8, "Carrying a profile in the image manifest"): it
// pushes the encoded profile as a blob, rewrites the OCI image manifest
// subject with the annotations toc.AnnotationProfileDigest and
// toc.AnnotationProfileSize naming it, and pushes that manifest. When
// index is not zero, subject is one of that index's manifests: the index
// is rewritten to point at the new manifest instead, and pushed. The
// profile is also attached to the new manifest as a referrer (Push), which
// keeps its blob referenced for registries' garbage collection. Last, the
// top manifest (the index, or the image manifest) is put at dst, so a tag
// names the rewritten image only once all of it is in the registry.
//
// The layers, their digests and the config do not change: a profile
// recorded on subject applies to the rewritten image as is.
func Embed(ctx context.Context, dst name.Reference, subject, index v1.Hash, p *Profile, opts ...remote.Option) (Embedded, error) {
	repo := dst.Context()
	where := fmt.Sprintf("embed profile in %s@%s", repo, subject)
	b, err := p.Marshal()
	if err != nil {
		return Embedded{}, fmt.Errorf("%s: %w", where, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	blob := static.NewLayer(b, types.MediaType(MediaType))
	if err := remote.WriteLayer(repo, blob, opts...); err != nil {
		return Embedded{}, fmt.Errorf("%s: push blob: %w", where, err)
	}
	bd, _ := blob.Digest()
	out := Embedded{Blob: v1.Descriptor{MediaType: types.MediaType(MediaType), Digest: bd, Size: int64(len(b))}}

	desc, err := remote.Get(repo.Digest(subject.String()), opts...)
	if err != nil {
		return out, fmt.Errorf("%s: %w", where, err)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		return out, fmt.Errorf("%s: manifest type %q: only OCI image manifests carry annotations", where, desc.MediaType)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return out, fmt.Errorf("%s: %w", where, err)
	}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[toc.AnnotationProfileDigest] = bd.String()
	m.Annotations[toc.AnnotationProfileSize] = strconv.Itoa(len(b))
	raw, err := json.Marshal(&m)
	if err != nil {
		return out, err
	}
	if out.Manifest, err = put(repo, raw, types.OCIManifestSchema1, opts); err != nil {
		return out, fmt.Errorf("%s: %w", where, err)
	}
	top, topType := raw, types.OCIManifestSchema1
	out.Top = out.Manifest

	if index != (v1.Hash{}) {
		idesc, err := remote.Get(repo.Digest(index.String()), opts...)
		if err != nil {
			return out, fmt.Errorf("%s: index %s: %w", where, index, err)
		}
		var im v1.IndexManifest
		if err := json.Unmarshal(idesc.Manifest, &im); err != nil {
			return out, fmt.Errorf("%s: index %s: %w", where, index, err)
		}
		found := false
		for i := range im.Manifests {
			d := &im.Manifests[i]
			if d.Digest == subject {
				d.Digest, d.Size, d.MediaType = out.Manifest.Digest, out.Manifest.Size, out.Manifest.MediaType
				found = true
			}
			// A BuildKit attestation names the image it describes.
			if d.Annotations[refDigestAnnotation] == subject.String() {
				a := maps.Clone(d.Annotations)
				a[refDigestAnnotation] = out.Manifest.Digest.String()
				d.Annotations = a
			}
		}
		if !found {
			return out, fmt.Errorf("%s: index %s does not hold it", where, index)
		}
		if top, err = json.Marshal(&im); err != nil {
			return out, err
		}
		topType = idesc.MediaType
		if out.Top, err = put(repo, top, topType, opts); err != nil {
			return out, fmt.Errorf("%s: index: %w", where, err)
		}
	}
	out.Referrer, out.ReferrerErr = Push(ctx, repo, out.Manifest, p, opts...)
	if err := remote.Put(dst, rawDoc{top, topType}, opts...); err != nil {
		return out, fmt.Errorf("%s: put %s: %w", where, dst, err)
	}
	return out, nil
}

// put pushes a manifest or index by digest.
func put(repo name.Repository, raw []byte, mt types.MediaType, opts []remote.Option) (v1.Descriptor, error) {
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), rawDoc{raw, mt}, opts...); err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

type rawDoc struct {
	raw []byte
	mt  types.MediaType
}

func (r rawDoc) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawDoc) MediaType() (types.MediaType, error) { return r.mt, nil }

// FromManifest returns the profile an image manifest carries (the blob of
// repo its annotations toc.AnnotationProfileDigest and
// toc.AnnotationProfileSize name) and the blob's descriptor; an error
// wrapping ErrNotFound when the annotations name none. The size must be
// within MaxSize, and the blob must have exactly that size and digest.
func FromManifest(ctx context.Context, repo name.Repository, annotations map[string]string, opts ...remote.Option) (*Profile, v1.Descriptor, error) {
	ds, ok := annotations[toc.AnnotationProfileDigest]
	if !ok {
		return nil, v1.Descriptor{}, fmt.Errorf("profile in the manifest of %s: %w", repo, ErrNotFound)
	}
	d, err := ManifestDescriptor(annotations)
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("profile %s in the manifest of %s: %w", ds, repo, err)
	}
	where := fmt.Sprintf("profile %s in the manifest of %s", d.Digest, repo)
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	l, err := remote.Layer(repo.Digest(d.Digest.String()), opts...)
	if err != nil {
		return nil, d, fmt.Errorf("%s: %w", where, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, d, fmt.Errorf("%s: %w", where, err)
	}
	defer rc.Close()
	h := sha256.New()
	b, err := io.ReadAll(io.LimitReader(io.TeeReader(rc, h), d.Size+1))
	// ggcr checks the digest at EOF; a blob longer than the size is cut
	// short of it, so check both here.
	switch {
	case int64(len(b)) != d.Size:
		return nil, d, fmt.Errorf("%s: %w: blob of %d+ bytes, annotation says %d", where, ErrBadProfile, len(b), d.Size)
	case err != nil:
		return nil, d, fmt.Errorf("%s: %w", where, err)
	case "sha256:"+hex.EncodeToString(h.Sum(nil)) != d.Digest.String():
		return nil, d, fmt.Errorf("%s: %w: digest mismatch", where, ErrBadProfile)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, d, fmt.Errorf("%s: %w", where, err)
	}
	return p, d, nil
}

// ManifestDescriptor returns the profile blob's descriptor an image
// manifest's annotations name, checked against the bounds (sha256 digest,
// 1 ≤ size ≤ MaxSize); an error wrapping ErrNotFound when they name none.
func ManifestDescriptor(annotations map[string]string) (v1.Descriptor, error) {
	ds, ok := annotations[toc.AnnotationProfileDigest]
	if !ok {
		return v1.Descriptor{}, ErrNotFound
	}
	h, err := v1.NewHash(ds)
	if err != nil || h.Algorithm != "sha256" {
		return v1.Descriptor{}, fmt.Errorf("%w: annotation %s %q: not a sha256 digest", ErrBadProfile, toc.AnnotationProfileDigest, ds)
	}
	ss := annotations[toc.AnnotationProfileSize]
	n, err := strconv.ParseInt(ss, 10, 64)
	switch {
	case err != nil || n < 1:
		return v1.Descriptor{}, fmt.Errorf("%w: annotation %s %q", ErrBadProfile, toc.AnnotationProfileSize, ss)
	case n > MaxSize:
		return v1.Descriptor{}, fmt.Errorf("%w: annotation %s %d (max %d)", ErrTooLarge, toc.AnnotationProfileSize, n, MaxSize)
	}
	return v1.Descriptor{MediaType: types.MediaType(MediaType), Digest: h, Size: n}, nil
}
