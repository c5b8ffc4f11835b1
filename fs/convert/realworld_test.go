package convert_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestDecompressSkippableFirst: a zstd layer whose stream opens with a
// skippable frame (metadata some writers put first; lazyfs layers of an
// empty tar converted before the fix) is decompressed as zstd, as
// containerd's detection does, not taken for a plain tar.
func TestDecompressSkippableFirst(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(10000))
	enc, _ := zstd.NewWriter(nil)
	frame := enc.EncodeAll(tarball, nil)
	enc.Close()
	for magic := uint32(0x184D2A50); magic <= 0x184D2A5F; magic += 0xB {
		blob := binary.LittleEndian.AppendUint32(nil, magic)
		blob = binary.LittleEndian.AppendUint32(blob, 5)
		blob = append(blob, "meta!"...)
		blob = append(blob, frame...)
		rc, err := convert.Decompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, tarball) {
			t.Errorf("magic %#x: %d bytes, %v; want the %d-byte tar", magic, len(got), err, len(tarball))
		}
	}
}

// TestPlatformPickLikeContainerd: --platform chooses from an index as
// containerd and the lazy mount do: never an attestation manifest (even
// when asked for unknown/unknown), and an image whose index entry has no
// platform by its config.
func TestPlatformPickLikeContainerd(t *testing.T) {
	reg := newRegistry(t)
	arm := sourceImage(t, "linux/arm64")
	armDigest, _ := arm.Digest()
	att, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1"}`), "application/vnd.in-toto+json"))
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{
				"vnd.docker.reference.type":   "attestation-manifest",
				"vnd.docker.reference.digest": armDigest.String(),
			},
		}},
		mutate.IndexAddendum{Add: arm}, // no platform in the index: linux/arm64 in its config
	)
	r, _ := name.ParseReference(reg.ref("pick:1"))
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	rep, err := convert.Image(context.Background(), reg.ref("pick:1"), reg.ref("pick:arm"),
		convert.WithPlatform(&v1.Platform{OS: "linux", Architecture: "arm64"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 1 || rep.Images[0].SourceDigest != armDigest.String() || rep.Images[0].Platform != "linux/arm64" {
		t.Errorf("picked %+v, want %s (linux/arm64)", rep.Images, armDigest)
	}
	if _, err := convert.Image(context.Background(), reg.ref("pick:1"), reg.ref("pick:att"),
		convert.WithPlatform(&v1.Platform{OS: "unknown", Architecture: "unknown"})); !errors.Is(err, convert.ErrNoMatchingPlatform) {
		t.Errorf("unknown/unknown: %v, want ErrNoMatchingPlatform", err)
	}
}

// TestConvertedLayerDropsURLs: a distributable layer whose descriptor
// lists URLs (mirrors of the source blob) loses them once converted: the
// converted blob is only in the registry, and containerd tries a
// descriptor's URLs before the registry, so it would fetch the source blob
// and fail its digest.
func TestConvertedLayerDropsURLs(t *testing.T) {
	reg := newRegistry(t)
	tarball := toctest.Tar(t, toctest.AllTypes(1000))
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: newRawLayer(gzipStd(tarball), tarball, types.OCILayer), URLs: []string{"https://mirror.example/blob"},
		Annotations: map[string]string{"org.example": "kept"}})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.ref("urls:1"), img)
	if _, err := convert.Image(context.Background(), reg.ref("urls:1"), reg.ref("urls:lazy")); err != nil {
		t.Fatal(err)
	}
	m, err := pull(t, reg.ref("urls:lazy")).Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if l := m.Layers[0]; len(l.URLs) != 0 || l.Annotations["org.example"] != "kept" {
		t.Errorf("converted layer: urls %q, annotations %v", l.URLs, l.Annotations)
	}
}

// TestPlatformPickBound: convert --platform reads the configs of at most
// 16 index entries without a platform (two requests each) looking for
// it: with more, a later match is not found.
func TestPlatformPickBound(t *testing.T) {
	reg := newRegistry(t)
	ppc, amd := sourceImage(t, "linux/ppc64le"), sourceImage(t, "linux/amd64")
	amdDigest, _ := amd.Digest()
	for _, n := range []int{16, 17} {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for range n - 1 {
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: ppc})
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: amd})
		src := reg.ref(fmt.Sprintf("many:%d", n))
		r, _ := name.ParseReference(src)
		if err := remote.WriteIndex(r, idx); err != nil {
			t.Fatal(err)
		}
		rep, err := convert.Image(context.Background(), src, reg.ref(fmt.Sprintf("many:%d-lazy", n)),
			convert.WithPlatform(&v1.Platform{OS: "linux", Architecture: "amd64"}))
		if n == 16 {
			if err != nil || len(rep.Images) != 1 || rep.Images[0].SourceDigest != amdDigest.String() {
				t.Errorf("16 entries without a platform, the last matching: %+v, %v", rep, err)
			}
			continue
		}
		if !errors.Is(err, convert.ErrNoMatchingPlatform) || !strings.Contains(err.Error(), "16") {
			t.Errorf("17 entries without a platform: %v, want ErrNoMatchingPlatform naming the bound", err)
		}
	}
}
