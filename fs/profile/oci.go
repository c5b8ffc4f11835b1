package profile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// The OCI 1.1 empty config an artifact manifest carries.
const (
	emptyMediaType = "application/vnd.oci.empty.v1+json"
	// AnnotationCreated orders a subject's profiles: the newest wins.
	AnnotationCreated = "org.opencontainers.image.created"
	// AnnotationProfile marks a profile artifact in a referrers list for
	// registries that report the config's media type instead of the
	// manifest's artifactType (ggcr's registry does).
	AnnotationProfile = "dev.lazyfs.profile"
	// maxReferrers bounds the profile referrers tried when pulling.
	maxReferrers = 16
)

// Push attaches p to the image manifest subject in repo as an OCI 1.1
// artifact (artifactType MediaType, empty config, the encoded profile as its
// one blob, subject the image manifest), so the image's own manifest, digest
// and signatures stay unchanged. Registries without the referrers API get
// ggcr's referrers tag fallback ("sha256-HEX"). Older profiles of the
// subject are deleted where the registry allows it (Pull prefers the newest
// either way), except one whose blob the subject manifest's own
// toc.AnnotationProfileDigest names (lazyfs convert --record): that referrer
// is what keeps the blob referenced for the registry's garbage collection,
// so deleting it would leave the manifest naming a blob that may vanish.
// It returns the artifact manifest's digest.
func Push(ctx context.Context, repo name.Repository, subject v1.Descriptor, p *Profile, opts ...remote.Option) (v1.Hash, error) {
	b, err := p.Marshal()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("profile of %s@%s: %w", repo, subject.Digest, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	blob := static.NewLayer(b, types.MediaType(MediaType))
	empty := static.NewLayer([]byte("{}"), emptyMediaType)
	for _, l := range []v1.Layer{blob, empty} {
		if err := remote.WriteLayer(repo, l, opts...); err != nil {
			return v1.Hash{}, fmt.Errorf("push profile of %s@%s: %w", repo, subject.Digest, err)
		}
	}
	bd, _ := blob.Digest()
	ed, _ := empty.Digest()
	sub := v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  MediaType,
		Config:        v1.Descriptor{MediaType: emptyMediaType, Digest: ed, Size: 2, Data: []byte("{}")},
		Layers:        []v1.Descriptor{{MediaType: types.MediaType(MediaType), Digest: bd, Size: int64(len(b))}},
		Subject:       &sub,
		Annotations:   map[string]string{AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano), AnnotationProfile: MediaType},
	}
	raw, err := json.Marshal(&m)
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Hash{}, err
	}
	old, _ := list(repo, subject.Digest, opts)
	if err := remote.Put(repo.Digest(h.String()), rawManifest(raw), opts...); err != nil {
		return v1.Hash{}, fmt.Errorf("push profile of %s@%s: %w", repo, subject.Digest, err)
	}
	var keep v1.Hash // the blob the subject manifest names, if any
	if len(old) > 0 {
		keep = annotatedBlob(repo, subject.Digest, opts)
	}
	var drop []v1.Hash
	for _, d := range old {
		if d.Digest != h && (keep == (v1.Hash{}) || !holdsBlob(repo, d.Digest, keep, opts)) {
			drop = append(drop, d.Digest)
		}
	}
	if len(drop) > 0 {
		// Best effort: Pull takes the newest anyway.
		unlistFallback(repo, subject.Digest, drop, opts)
		for _, d := range drop {
			_ = remote.Delete(repo.Digest(d.String()), opts...)
		}
	}
	return h, nil
}

// unlistFallback removes drop from the subject's referrers tag fallback
// index ("sha256-HEX", registries without the referrers API), if there is
// one: an index listing a deleted manifest is refused by registries that
// check an index's manifests (distribution, ggcr's), so the next Push, which
// appends to it, would fail.
func unlistFallback(repo name.Repository, subject v1.Hash, drop []v1.Hash, opts []remote.Option) {
	tag := repo.Tag(subject.Algorithm + "-" + subject.Hex)
	desc, err := remote.Get(tag, opts...)
	if err != nil || !desc.MediaType.IsIndex() {
		return
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return
	}
	kept := im.Manifests[:0]
	for _, d := range im.Manifests {
		if !slices.Contains(drop, d.Digest) {
			kept = append(kept, d)
		}
	}
	if len(kept) == len(im.Manifests) {
		return
	}
	im.Manifests = kept
	raw, err := json.Marshal(im)
	if err != nil {
		return
	}
	_ = remote.Put(tag, rawDoc{raw, desc.MediaType}, opts...)
}

// annotatedBlob is the profile blob the manifest subject names in its
// toc.AnnotationProfileDigest annotation, or the zero hash (none, or the
// manifest could not be read).
func annotatedBlob(repo name.Repository, subject v1.Hash, opts []remote.Option) v1.Hash {
	desc, err := remote.Get(repo.Digest(subject.String()), opts...)
	if err != nil {
		return v1.Hash{}
	}
	var m struct {
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(desc.Manifest, &m) != nil {
		return v1.Hash{}
	}
	h, err := v1.NewHash(m.Annotations[toc.AnnotationProfileDigest])
	if err != nil {
		return v1.Hash{}
	}
	return h
}

// holdsBlob reports whether the artifact manifest ref lists blob, or could
// not be read (then it is kept: deleting is only ever best effort).
func holdsBlob(repo name.Repository, ref, blob v1.Hash, opts []remote.Option) bool {
	desc, err := remote.Get(repo.Digest(ref.String()), opts...)
	if err != nil {
		return true
	}
	var m v1.Manifest
	if json.Unmarshal(desc.Manifest, &m) != nil {
		return true
	}
	for _, l := range m.Layers {
		if l.Digest == blob {
			return true
		}
	}
	return false
}

// Pull returns the newest profile attached to the image manifest subject in
// repo, and the descriptor of its artifact manifest; an error wrapping
// ErrNotFound if there is none. The profile blob is bounded by MaxSize and
// verified against its digest.
func Pull(ctx context.Context, repo name.Repository, subject v1.Hash, opts ...remote.Option) (*Profile, v1.Descriptor, error) {
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	descs, err := list(repo, subject, opts)
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("profile of %s@%s: referrers: %w", repo, subject, err)
	}
	if len(descs) == 0 {
		return nil, v1.Descriptor{}, fmt.Errorf("profile of %s@%s: %w", repo, subject, ErrNotFound)
	}
	var errs []error
	for _, d := range descs {
		p, err := pullOne(repo, d, opts)
		if err == nil {
			return p, d, nil
		}
		errs = append(errs, fmt.Errorf("referrer %s: %w", d.Digest, err))
	}
	return nil, v1.Descriptor{}, fmt.Errorf("profile of %s@%s: %w", repo, subject, errors.Join(errs...))
}

// list returns the subject's profile referrers, newest first.
func list(repo name.Repository, subject v1.Hash, opts []remote.Option) ([]v1.Descriptor, error) {
	// No artifactType filter: some registries list an artifact under its
	// config's media type; the annotation identifies ours there.
	idx, err := remote.Referrers(repo.Digest(subject.String()), opts...)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []v1.Descriptor
	for _, d := range im.Manifests {
		if d.ArtifactType == MediaType || d.Annotations[AnnotationProfile] == MediaType {
			out = append(out, d)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return out[i].Annotations[AnnotationCreated] > out[j].Annotations[AnnotationCreated]
	})
	if len(out) > maxReferrers {
		out = out[:maxReferrers]
	}
	return out, nil
}

func pullOne(repo name.Repository, d v1.Descriptor, opts []remote.Option) (*Profile, error) {
	desc, err := remote.Get(repo.Digest(d.Digest.String()), opts...)
	if err != nil {
		return nil, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, fmt.Errorf("%w: artifact manifest: %v", ErrBadProfile, err)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != types.MediaType(MediaType) {
		return nil, fmt.Errorf("%w: artifact has %d blobs, want one %s", ErrBadProfile, len(m.Layers), MediaType)
	}
	ld := m.Layers[0]
	if ld.Size < 0 || ld.Size > MaxSize {
		return nil, fmt.Errorf("%w: blob of %d bytes (max %d)", ErrTooLarge, ld.Size, MaxSize)
	}
	l, err := remote.Layer(repo.Digest(ld.Digest.String()), opts...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed() // verified against the digest at EOF
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return Read(rc)
}

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
