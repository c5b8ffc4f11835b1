package profile_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// ociImage is a random OCI image (only OCI manifests carry annotations).
func ociImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
}

// TestEmbed: the profile lands in the image manifest pushed to the tag (and
// only there: the manifest it was recorded on keeps no tag), with the same
// layers, and FromManifest reads it back; it is a referrer of the new
// manifest too. In an index, the index is rewritten to hold the new manifest.
func TestEmbed(t *testing.T) {
	reg := registrytest.New(t)
	ctx := context.Background()
	for _, withIndex := range []bool{false, true} {
		t.Run(map[bool]string{false: "manifest", true: "index"}[withIndex], func(t *testing.T) {
			img := ociImage(t)
			sub, _ := img.Digest()
			tag, err := name.NewTag(reg.Ref("app:lazy"))
			if err != nil {
				t.Fatal(err)
			}
			repo := tag.Context()
			if err := remote.Write(repo.Digest(sub.String()), img); err != nil {
				t.Fatal(err)
			}
			var index v1.Hash
			if withIndex {
				att := ociImage(t) // a BuildKit attestation of img
				idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
					mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
					mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
						Annotations: map[string]string{"vnd.docker.reference.digest": sub.String(), "vnd.docker.reference.type": "attestation-manifest"}}})
				index, _ = idx.Digest()
				if err := remote.WriteIndex(repo.Digest(index.String()), idx); err != nil {
					t.Fatal(err)
				}
			}
			p := sample()
			e, err := profile.Embed(ctx, tag, sub, index, p)
			if err != nil {
				t.Fatal(err)
			}
			if e.ReferrerErr != nil {
				t.Fatalf("referrer: %v", e.ReferrerErr)
			}
			top, err := remote.Get(tag)
			if err != nil {
				t.Fatal(err)
			}
			if top.Digest != e.Top.Digest {
				t.Fatalf("the tag names %s, want the rewritten %s", top.Digest, e.Top.Digest)
			}
			got, err := remote.Image(tag, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
			if err != nil {
				t.Fatal(err)
			}
			gd, _ := got.Digest()
			if gd != e.Manifest.Digest || gd == sub {
				t.Fatalf("the tag's image is %s, want the rewritten manifest %s (recorded on %s)", gd, e.Manifest.Digest, sub)
			}
			if withIndex {
				im, _ := top.ImageIndex()
				imm, _ := im.IndexManifest()
				if len(imm.Manifests) != 2 || imm.Manifests[0].Digest != gd || imm.Manifests[0].Platform == nil ||
					imm.Manifests[1].Annotations["vnd.docker.reference.digest"] != gd.String() {
					t.Fatalf("rewritten index %+v: want the image's entry and its attestation's reference moved to %s", imm.Manifests, gd)
				}
			}
			m, _ := got.Manifest()
			om, _ := img.Manifest()
			if !reflect.DeepEqual(m.Layers, om.Layers) || m.Config.Digest != om.Config.Digest {
				t.Fatal("embedding changed the layers or the config")
			}
			if m.Annotations[toc.AnnotationProfileDigest] != e.Blob.Digest.String() || m.Annotations[toc.AnnotationProfileSize] != strconv.FormatInt(e.Blob.Size, 10) {
				t.Fatalf("annotations %v, want the blob %+v", m.Annotations, e.Blob)
			}
			back, d, err := profile.FromManifest(ctx, repo, m.Annotations)
			if err != nil {
				t.Fatal(err)
			}
			if d.Digest != e.Blob.Digest || !reflect.DeepEqual(back.Spans, p.Spans) || !reflect.DeepEqual(back.Layers, p.Layers) {
				t.Fatalf("FromManifest: %+v %+v", d, back)
			}
			if _, rd, err := profile.Pull(ctx, repo, gd); err != nil || rd.Digest != e.Referrer {
				t.Fatalf("referrer of the rewritten manifest: %v %v, want %s", rd.Digest, err, e.Referrer)
			}
		})
	}
}

// TestFromManifestRejects: a manifest's profile is checked against its
// annotations' bounds before anything is fetched, then against its size
// and digest, then parsed; each failure is an error, none a profile.
func TestFromManifestRejects(t *testing.T) {
	reg := registrytest.New(t)
	ctx := context.Background()
	repo, err := name.NewRepository(reg.Ref("app"))
	if err != nil {
		t.Fatal(err)
	}
	good, _ := sample().Marshal()
	push := func(b []byte) v1.Hash {
		l := static.NewLayer(b, types.MediaType(profile.MediaType))
		if err := remote.WriteLayer(repo, l); err != nil {
			t.Fatal(err)
		}
		h, _ := l.Digest()
		return h
	}
	gh := push(good)
	junk := push([]byte(`{"version": 7}`))
	ann := func(d string, n int) map[string]string {
		return map[string]string{toc.AnnotationProfileDigest: d, toc.AnnotationProfileSize: strconv.Itoa(n)}
	}
	if p, _, err := profile.FromManifest(ctx, repo, ann(gh.String(), len(good))); err != nil || len(p.Spans) != 2 {
		t.Fatalf("good profile: %v %v", p, err)
	}
	if _, _, err := profile.FromManifest(ctx, repo, map[string]string{"other": "x"}); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("no annotation: %v, want ErrNotFound", err)
	}
	blobs := reg.Blobs.Load()
	for name, c := range map[string]struct {
		a    map[string]string
		want error
	}{
		"bad digest":   {ann("sha256:xyz", len(good)), profile.ErrBadProfile},
		"sha512":       {ann("sha512:"+gh.Hex+gh.Hex, len(good)), profile.ErrBadProfile},
		"no size":      {map[string]string{toc.AnnotationProfileDigest: gh.String()}, profile.ErrBadProfile},
		"zero size":    {ann(gh.String(), 0), profile.ErrBadProfile},
		"over MaxSize": {ann(gh.String(), profile.MaxSize+1), profile.ErrTooLarge},
	} {
		if _, _, err := profile.FromManifest(ctx, repo, c.a); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if got := reg.Blobs.Load(); got != blobs {
		t.Fatalf("annotations out of bounds fetched %d blobs, want none", got-blobs)
	}
	for name, a := range map[string]map[string]string{
		"shorter size":  ann(gh.String(), len(good)-1),
		"longer size":   ann(gh.String(), len(good)+1),
		"not a profile": ann(junk.String(), len(`{"version": 7}`)),
	} {
		if p, _, err := profile.FromManifest(ctx, repo, a); err == nil {
			t.Errorf("%s: got a profile %+v", name, p)
		}
	}
	if _, _, err := profile.FromManifest(ctx, repo, ann("sha256:"+gh.Hex[:60]+"0000", len(good))); err == nil {
		t.Error("a missing blob: no error")
	}
}

// TestPushKeepsEmbeddedReferrer: a profile pushed later as a referrer of a
// manifest that names its own profile blob (Embed, lazyfs convert --record)
// replaces the other referrers but not the one that keeps the manifest's
// blob referenced, which registry garbage collection would otherwise take.
func TestPushKeepsEmbeddedReferrer(t *testing.T) {
	reg := registrytest.New(t)
	ctx := context.Background()
	img := ociImage(t)
	sub, _ := img.Digest()
	tag, err := name.NewTag(reg.Ref("app:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	repo := tag.Context()
	if err := remote.Write(repo.Digest(sub.String()), img); err != nil {
		t.Fatal(err)
	}
	e, err := profile.Embed(ctx, tag, sub, v1.Hash{}, sample())
	if err != nil || e.ReferrerErr != nil {
		t.Fatalf("embed: %v %v", err, e.ReferrerErr)
	}
	p2 := sample()
	p2.Spans = append(p2.Spans, profile.Span{Layer: 0, Path: "second", Chunk: 3, N: 1})
	h2, err := profile.Push(ctx, repo, e.Manifest, p2)
	if err != nil {
		t.Fatal(err)
	}
	p3 := sample()
	p3.Spans = append(p3.Spans, profile.Span{Layer: 0, Path: "third", Chunk: 4, N: 1})
	h3, err := profile.Push(ctx, repo, e.Manifest, p3)
	if err != nil {
		t.Fatal(err)
	}

	kept, err := remote.Get(repo.Digest(e.Referrer.String()))
	if err != nil {
		t.Fatalf("the referrer holding the manifest's profile blob %s was deleted: %v", e.Blob.Digest, err)
	}
	km, err := v1.ParseManifest(bytes.NewReader(kept.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if len(km.Layers) != 1 || km.Layers[0].Digest != e.Blob.Digest {
		t.Fatalf("kept referrer lists %+v, want the blob %s", km.Layers, e.Blob.Digest)
	}
	if _, err := remote.Get(repo.Digest(h2.String())); err == nil {
		t.Fatalf("the replaced referrer %s was kept", h2)
	}
	if got, d, err := profile.Pull(ctx, repo, e.Manifest.Digest); err != nil || d.Digest != h3 || got.Spans[len(got.Spans)-1].Path != "third" {
		t.Fatalf("Pull: %v %v, want the newest %s", d.Digest, err, h3)
	}
	m, err := remote.Image(repo.Digest(e.Manifest.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	mm, _ := m.Manifest()
	if _, _, err := profile.FromManifest(ctx, repo, mm.Annotations); err != nil {
		t.Fatalf("the manifest's own profile: %v", err)
	}
}
