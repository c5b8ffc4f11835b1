package remote

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/internal/platform"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestIndexSelectionLikeContainerd: resolving an index as BuildKit and
// other tools push them picks what containerd would run. Attestation
// manifests (platform unknown/unknown, vnd.docker.reference.type
// attestation-manifest) are never chosen, whatever the platform asked; an
// image whose index entry has no platform (crane index append, some
// build tools) is chosen by its config's os and architecture, as
// containerd does; an entry that names its platform wins over one that
// does not.
func TestIndexSelectionLikeContainerd(t *testing.T) {
	_, host := newRegistry(t, nil)
	ref, err := name.ParseReference(host+"/lazy/att:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	image := func(os, arch, data string) v1.Image { return platformImage(t, os, arch, data) }
	amd, arm, ppc := image("linux", "amd64", "amd64"), image("linux", "arm64", "arm64"), image("linux", "ppc64le", "ppc64le")
	armLabelled := image("linux", "arm64", "arm64, labelled")
	att := image("unknown", "unknown", `{"_type":"https://in-toto.io/Statement/v0.1"}`)
	amdDigest, _ := amd.Digest()
	attestation := func(of v1.Hash, p *v1.Platform) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: p, Annotations: map[string]string{
			"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": of.String()}}}
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		attestation(amdDigest, &v1.Platform{OS: "unknown", Architecture: "unknown"}),
		attestation(amdDigest, nil),    // no platform at all: still never chosen
		mutate.IndexAddendum{Add: arm}, // no platform: its config says linux/arm64
		mutate.IndexAddendum{Add: ppc}, // no platform: its config says linux/ppc64le
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: armLabelled, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	if err := ggcrremote.WriteIndex(ref, idx, ggcrremote.WithTransport(pushTransport(t))); err != nil {
		t.Fatal(err)
	}
	f := newFetcher(t)
	for _, tc := range []struct {
		p    v1.Platform
		want v1.Image
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, amd},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, armLabelled}, // a named platform first
		{v1.Platform{OS: "linux", Architecture: "ppc64le"}, ppc},
	} {
		img, err := f.Resolve(context.Background(), ref.String(), &tc.p)
		if err != nil {
			t.Errorf("%s: %v", tc.p, err)
			continue
		}
		if want, _ := tc.want.Digest(); img.Digest != want {
			t.Errorf("%s: resolved %s, want %s", tc.p, img.Digest, want)
		}
		if img.Platform == nil || img.Platform.OS != tc.p.OS || img.Platform.Architecture != tc.p.Architecture {
			t.Errorf("%s: platform %v", tc.p, img.Platform)
		}
	}
	for _, p := range []v1.Platform{{OS: "unknown", Architecture: "unknown"}, {OS: "linux", Architecture: "s390x"}} {
		if img, err := f.Resolve(context.Background(), ref.String(), &p); !errors.Is(err, ErrNoPlatform) {
			t.Errorf("%s: %v (%v), want ErrNoPlatform", p, img, err)
		}
	}
}

// platformImage is a one-layer lazyfs image whose config names os/arch and
// whose one file holds data (distinct data, distinct digests).
func platformImage(t *testing.T, os, arch, data string) v1.Image {
	t.Helper()
	l := newLayer(t, []toctest.File{{Hdr: toctest.AllTypes(0)[2].Hdr, Data: []byte(data)}}, 64<<10)
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img, err := mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l.blob, toc.MediaTypeLayer),
		Annotations: l.res.Annotations(), MediaType: toc.MediaTypeLayer})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = os, arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestIndexPlatformlessBound: the configs of at most platform.MaxPlatformless index
// entries without a platform are read (two requests each) looking for the
// platform: an index with more is refused with ErrNoPlatform, even when a
// later entry would match, rather than sending the registry's count of
// requests.
func TestIndexPlatformlessBound(t *testing.T) {
	_, host := newRegistry(t, nil)
	for _, n := range []int{platform.MaxPlatformless, platform.MaxPlatformless + 1} {
		ref, err := name.ParseReference(fmt.Sprintf("%s/lazy/many:%d", host, n), name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for i := range n - 1 {
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: platformImage(t, "linux", "ppc64le", fmt.Sprint("ppc ", i))})
		}
		amd := platformImage(t, "linux", "amd64", "amd64, last")
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: amd})
		if err := ggcrremote.WriteIndex(ref, idx, ggcrremote.WithTransport(pushTransport(t))); err != nil {
			t.Fatal(err)
		}
		img, err := newFetcher(t).Resolve(context.Background(), ref.String(), &v1.Platform{OS: "linux", Architecture: "amd64"})
		if n <= platform.MaxPlatformless {
			if want, _ := amd.Digest(); err != nil || img.Digest != want {
				t.Errorf("%d entries without a platform, the last matching: %v, %v", n, img, err)
			}
			continue
		}
		if !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), fmt.Sprint(platform.MaxPlatformless)) {
			t.Errorf("%d entries without a platform: %v (%v), want ErrNoPlatform naming the bound", n, img, err)
		}
	}
}
