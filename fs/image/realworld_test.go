package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// blobLayer is a layer pushed exactly as given: blob is what the registry
// stores (compressed or not, whatever the media type says), tar what it
// unpacks to (for the config's diffID).
type blobLayer struct {
	blob, tar []byte
	mt        types.MediaType
}

func (l *blobLayer) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.blob))
	return h, err
}
func (l *blobLayer) DiffID() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(l.tar))
	return h, err
}
func (l *blobLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}

// gzipMembers compresses each part as its own gzip member, concatenated
// (pigz -i, some layer writers and appenders write such streams).
func gzipMembers(parts ...[]byte) []byte {
	var out bytes.Buffer
	for _, p := range parts {
		w := gzip.NewWriter(&out)
		w.Write(p)
		w.Close()
	}
	return out.Bytes()
}

func zstdBytes(p []byte) []byte {
	e, _ := zstd.NewWriter(nil)
	defer e.Close()
	return e.EncodeAll(p, nil)
}

// attestationImage is a manifest as BuildKit attaches to an index for
// provenance: an in-toto statement layer, platform unknown/unknown.
func attestationImage(t *testing.T) v1.Image {
	t.Helper()
	att, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2"}`), "application/vnd.in-toto+json"),
		Annotations: map[string]string{"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := att.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "unknown", "unknown"
	att, err = mutate.ConfigFile(att, cf)
	if err != nil {
		t.Fatal(err)
	}
	return att
}

// TestRealWorldImage converts an index as registries hold them (BuildKit
// attestations beside two platforms; Docker schema2 manifests and config;
// gzip layers of several members, Docker's 32-byte empty layer (twice), a
// zero-byte tar, zstd and uncompressed layers, a "gzip" layer that is a
// plain tar; history with empty_layer entries), checks that the converted
// index is whole for any client (go-containerregistry's full validation:
// every blob's digest, every layer's diffID), mounts the amd64 image and
// compares every file with containerd's extraction of its layers.
func TestRealWorldImage(t *testing.T) {
	needFUSE(t)
	reg := registrytest.New(t)
	at := time.Unix(1700000000, 0)
	file := func(name, data string) toctest.File {
		return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: at, Format: tar.FormatPAX}, Data: []byte(data)}
	}
	base := toctest.AllTypes(200 << 10)
	tars := [][]byte{
		toctest.Tar(t, base),
		make([]byte, 1024), // the empty layer of RUN steps that change nothing
		toctest.Tar(t, []toctest.File{file("usr/bin/tool", string(toctest.Random(7, 300<<10))), file("etc/hostname", "upper\n")}),
		toctest.Tar(t, []toctest.File{file("zstd/file", "from a zstd layer\n")}),
		toctest.Tar(t, []toctest.File{file("plain/file", "from an uncompressed layer\n")}),
		nil, // a zero-byte tar
		toctest.Tar(t, []toctest.File{file("lying/file", "gzip media type, plain bytes\n")}),
		make([]byte, 1024), // the same empty layer again: one blob, two layers
	}
	half := len(tars[0]) / 2
	layers := []*blobLayer{
		{gzipMembers(tars[0][:half], tars[0][half:]), tars[0], types.DockerLayer},
		{gzipMembers(tars[1]), tars[1], types.DockerLayer},
		{gzipMembers(tars[2][:1000], tars[2][1000:5000], tars[2][5000:]), tars[2], types.DockerLayer},
		{zstdBytes(tars[3]), tars[3], types.OCILayerZStd},
		{tars[4], tars[4], types.DockerUncompressedLayer},
		{gzipMembers(tars[5]), tars[5], types.DockerLayer},
		{tars[6], tars[6], types.DockerLayer},
		{gzipMembers(tars[7]), tars[7], types.DockerLayer},
	}
	platformImage := func(arch string) v1.Image {
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.DockerManifestSchema2), types.DockerConfigJSON)
		for i, l := range layers {
			var err error
			if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "layer", Created: v1.Time{Time: at}}}); err != nil {
				t.Fatal(err)
			}
			if i == 1 {
				img, _ = mutate.Append(img, mutate.Addendum{History: v1.History{CreatedBy: "ENV PATH=/usr/bin", EmptyLayer: true}})
			}
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		img, err := mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	amd, arm := platformImage("amd64"), platformImage("arm64")
	amdDigest, _ := amd.Digest()
	armDigest, _ := arm.Digest()
	att := attestationImage(t)
	attOf := func(d v1.Hash) mutate.IndexAddendum {
		return mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": d.String()}}}
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		attOf(amdDigest), attOf(armDigest),
	)
	src, err := name.ParseReference(reg.Ref("app:plain"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcr.WriteIndex(src, idx); err != nil {
		t.Fatal(err)
	}

	rep, err := convert.Image(context.Background(), reg.Ref("app:plain"), reg.Ref("app:lazy"), convert.WithChunkSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 4 || rep.Images[2].Digest != rep.Images[2].SourceDigest || rep.Images[2].Layers[0].Kept != "not a tar layer" {
		t.Errorf("report: %+v", rep.Images)
	}
	dst, _ := name.ParseReference(reg.Ref("app:lazy"))
	out, err := ggcr.Index(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(out, validate.Fast); err != nil {
		t.Errorf("the converted index does not validate: %v", err)
	}
	im, _ := out.IndexManifest()
	for _, d := range im.Manifests[:2] {
		img, err := out.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		pulledLikeACLient(t, img)
	}
	for i, d := range im.Manifests[2:] {
		if got, want := d.Annotations["vnd.docker.reference.digest"], im.Manifests[i].Digest.String(); got != want {
			t.Errorf("attestation %d refers to %s, want the converted %s", i, got, want)
		}
	}

	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := image.Mount(context.Background(), reg.Ref("app:lazy"), dir, image.Options{Fetcher: remote.New(),
		Cache: fstest.NewMemCache(), Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if m.Image().Digest != im.Manifests[0].Digest || len(m.Image().Layers) != len(layers) {
		t.Errorf("mounted %s (%d layers), want %s", m.Image().Digest, len(m.Image().Layers), im.Manifests[0].Digest)
	}
	want := fstest.ReadTree(t, fstest.ExtractContainerd(t, tars...))
	if d := fstest.DiffExtracted(want, fstest.ReadTree(t, dir)); d != "" {
		t.Errorf("mount differs from containerd's extraction (-containerd +lazyfs):\n%s", d)
	}
}

// pulledLikeACLient reads every layer of img as go-containerregistry's
// clients (crane, ko) do, through Compressed and Uncompressed (which tell
// the compression by the blob's first bytes), and checks each blob's
// digest and each tar's diffID against the manifest and the config.
// (validate.Image does this for gzip layers only.)
func pulledLikeACLient(t *testing.T, img v1.Image) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		d, _ := l.Digest()
		for what, open := range map[string]func() (io.ReadCloser, error){"blob": l.Compressed, "tar": l.Uncompressed} {
			rc, err := open()
			if err != nil {
				t.Fatalf("layer %d %s: %v", i, what, err)
			}
			h, _, err := v1.SHA256(rc)
			rc.Close()
			want := d
			if what == "tar" {
				want = cf.RootFS.DiffIDs[i]
			}
			if err != nil || h != want {
				t.Errorf("layer %d (%s): %s is %s (%v), want %s", i, d, what, h, err, want)
			}
		}
	}
}

// TestForeignLayer: a non-distributable layer (Windows base layers: its
// blob is served from its URLs, not by the registry) is kept as it is by
// convert, which says so in its report, and a mount refuses the image
// naming the layer, with --pull too, rather than failing on a 404 as a
// "bad tar".
func TestForeignLayer(t *testing.T) {
	reg := registrytest.New(t)
	t1 := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "base", Mode: 0o644}, Data: []byte("base")}})
	t2 := toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "app", Mode: 0o644}, Data: []byte("app")}})
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.DockerManifestSchema2),
		mutate.Addendum{Layer: &blobLayer{gzipMembers(t1), t1, types.DockerForeignLayer}, URLs: []string{"https://mcr.example/base.tar.gz"}},
		mutate.Addendum{Layer: &blobLayer{gzipMembers(t2), t2, types.DockerLayer}})
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Push(t, reg.Ref("win:plain"), img)
	rep, err := convert.Image(context.Background(), reg.Ref("win:plain"), reg.Ref("win:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	if l := rep.Images[0].Layers; l[0].Kept != "not distributable" || l[1].Kept != "" {
		t.Errorf("layers %+v", l)
	}
	for _, pull := range []bool{false, true} {
		dir := t.TempDir()
		_, err := image.Mount(context.Background(), reg.Ref("win:lazy"), dir, image.Options{Fetcher: remote.New(), Pull: pull, TempDir: t.TempDir()})
		if !errors.Is(err, image.ErrNonDistributable) || !strings.Contains(err.Error(), "layer 0") || !strings.Contains(err.Error(), "mcr.example") {
			t.Errorf("pull=%v: %v, want ErrNonDistributable naming layer 0 and its URL", pull, err)
		}
	}
}
