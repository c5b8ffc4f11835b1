package convert_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// testRegistry is an in-process registry that counts blob uploads.
type testRegistry struct {
	host    string
	uploads atomic.Int64
}

func newRegistry(t testing.TB) *testRegistry {
	r := &testRegistry{}
	r.host = registrytest.New(t, registrytest.WithMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Method == http.MethodPost && strings.Contains(req.URL.Path, "/blobs/uploads") {
				r.uploads.Add(1)
			}
			h.ServeHTTP(w, req)
		})
	})).Host
	return r
}

func (r *testRegistry) ref(s string) string { return r.host + "/" + s }

func tarLayer(t testing.TB, files []toctest.File, mt types.MediaType) v1.Layer {
	t.Helper()
	b := toctest.Tar(t, files)
	var l v1.Layer
	var err error
	switch mt {
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return static.NewLayer(b, mt)
	case types.OCILayerZStd:
		l, err = tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
			tarball.WithCompression(compression.ZStd), tarball.WithMediaType(mt))
	default:
		l, err = tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
			tarball.WithMediaType(mt))
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// sourceImage is a Docker v2 image with gzip, zstd and uncompressed layers
// covering every tar entry type.
func sourceImage(t *testing.T, platform string) v1.Image {
	t.Helper()
	base := mutate.MediaType(empty.Image, types.DockerManifestSchema2)
	base = mutate.ConfigMediaType(base, types.DockerConfigJSON)
	img, err := mutate.AppendLayers(base,
		tarLayer(t, toctest.AllTypes(600<<10), types.DockerLayer),
		tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644}, Data: []byte("ID=" + platform + "\n")}}, types.DockerLayer),
		tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "zstd/file", Mode: 0o644}, Data: toctest.Random(9, 300<<10)}}, types.OCILayerZStd),
		tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "plain/file", Mode: 0o644}, Data: []byte("plain")}}, types.DockerUncompressedLayer),
	)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	p, _ := v1.ParsePlatform(platform)
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.Labels = map[string]string{"org.example": "label"}
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

func pull(t *testing.T, ref string) v1.Image {
	t.Helper()
	r, _ := name.ParseReference(ref)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return img
}

// checkConverted checks a converted image against its source: same config
// bytes, tar layers rewritten as chunked zstd with valid TOCs and identical
// tars, the image valid for a plain client.
func checkConverted(t *testing.T, src, dst v1.Image) {
	t.Helper()
	// ggcr's validate package assumes gzip layers, so check digests,
	// sizes and diffIDs here the way a pulling client does.
	if err := validate.Image(dst, validate.Fast); err != nil {
		t.Fatalf("converted image's blobs are not all there: %v", err)
	}
	dstCfgFile, _ := dst.ConfigFile()
	srcCfg, _ := src.RawConfigFile()
	dstCfg, _ := dst.RawConfigFile()
	if !bytes.Equal(srcCfg, dstCfg) {
		t.Fatal("config changed")
	}
	mt, _ := dst.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("manifest type %s", mt)
	}
	m, _ := dst.Manifest()
	srcLayers, _ := src.Layers()
	for i, d := range m.Layers {
		if d.MediaType != toc.MediaTypeLayer {
			t.Errorf("layer %d: media type %s", i, d.MediaType)
			continue
		}
		loc, ok, err := toc.LocationFromAnnotations(d.Annotations)
		if !ok || err != nil {
			t.Fatalf("layer %d: no toc annotations: %v", i, err)
		}
		l, _ := dst.LayerByDigest(d.Digest)
		rc, _ := l.Compressed()
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if h, n, _ := v1.SHA256(bytes.NewReader(blob)); h != d.Digest || n != d.Size {
			t.Fatalf("layer %d: blob %s/%d, descriptor %s/%d", i, h, n, d.Digest, d.Size)
		}
		tc, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(blob), int64(len(blob)), &loc)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		want, _ := srcLayers[i].Uncompressed()
		wantTar, _ := io.ReadAll(want)
		got, _ := l.Uncompressed()
		gotTar, _ := io.ReadAll(got)
		if !bytes.Equal(wantTar, gotTar) {
			t.Fatalf("layer %d: tar differs after conversion", i)
		}
		if h, _, _ := v1.SHA256(bytes.NewReader(gotTar)); h != dstCfgFile.RootFS.DiffIDs[i] {
			t.Fatalf("layer %d: diffID %s, config says %s", i, h, dstCfgFile.RootFS.DiffIDs[i])
		}
		if tc.TarSize != int64(len(wantTar)) || len(tc.Entries) == 0 {
			t.Errorf("layer %d: toc tar size %d entries %d", i, tc.TarSize, len(tc.Entries))
		}
		if d.Annotations[toc.AnnotationSourceDigest] == "" {
			t.Errorf("layer %d: no source digest annotation", i)
		}
	}
}

func TestConvertImage(t *testing.T) {
	reg := newRegistry(t)
	src := sourceImage(t, "linux/amd64")
	push(t, reg.ref("app:v1"), src)

	var progressed atomic.Int64
	rep, err := convert.Image(context.Background(), reg.ref("app:v1"), reg.ref("app:v1-lazy"),
		convert.WithChunkSize(64<<10), convert.WithProgress(func(p convert.Progress) { progressed.Store(p.Done) }))
	if err != nil {
		t.Fatal(err)
	}
	if rep.AlreadyConverted || len(rep.Images) != 1 || len(rep.Images[0].Layers) != 4 || rep.Stats.Layers != 4 {
		t.Fatalf("report: %+v", rep)
	}
	if l := rep.Images[0].Layers[0]; l.Chunks < 10 || l.Entries != len(toctest.AllTypes(1)) || l.TOCSize == 0 {
		t.Errorf("layer report %+v", l)
	}
	if progressed.Load() == 0 {
		t.Error("no progress reported")
	}
	dst := pull(t, reg.ref("app:v1-lazy"))
	if d, _ := dst.Digest(); d.String() != rep.Digest {
		t.Errorf("pushed %s, report says %s", d, rep.Digest)
	}
	checkConverted(t, src, dst)

	// Converting the converted image is a no-op that says so.
	before := reg.uploads.Load()
	rep2, err := convert.Image(context.Background(), reg.ref("app:v1-lazy"), reg.ref("app:v1-lazy"))
	if err != nil {
		t.Fatal(err)
	}
	if !rep2.AlreadyConverted || rep2.Digest != rep.Digest {
		t.Errorf("second conversion: already=%v digest %s vs %s", rep2.AlreadyConverted, rep2.Digest, rep.Digest)
	}
	if n := reg.uploads.Load() - before; n != 0 {
		t.Errorf("no-op conversion uploaded %d blobs", n)
	}

	// Converting again to another tag: deterministic, nothing uploaded again.
	before = reg.uploads.Load()
	rep3, err := convert.Image(context.Background(), reg.ref("app:v1"), reg.ref("app:v1-again"), convert.WithChunkSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	if rep3.Digest != rep.Digest {
		t.Errorf("conversion is not deterministic: %s vs %s", rep3.Digest, rep.Digest)
	}
	if n := reg.uploads.Load() - before; n != 0 {
		t.Errorf("re-conversion uploaded %d blobs that were there already", n)
	}
}

func TestConvertIndex(t *testing.T) {
	reg := newRegistry(t)
	amd, arm := sourceImage(t, "linux/amd64"), sourceImage(t, "linux/arm64/v8")
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, Annotations: map[string]string{"a": "b"}}},
	)
	r, _ := name.ParseReference(reg.ref("multi:1"))
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}

	rep, err := convert.Image(context.Background(), reg.ref("multi:1"), reg.ref("multi:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 2 || rep.MediaType != string(types.OCIImageIndex) {
		t.Fatalf("report %+v", rep)
	}
	// The layer shared by both platforms (AllTypes) is converted once.
	if rep.Images[0].Layers[0].Digest != rep.Images[1].Layers[0].Digest {
		t.Error("shared layer converted to different blobs")
	}
	dr, _ := name.ParseReference(reg.ref("multi:lazy"))
	didx, err := remote.Index(dr)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(didx, validate.Fast); err != nil {
		t.Fatalf("converted index is incomplete: %v", err)
	}
	im, _ := didx.IndexManifest()
	if len(im.Manifests) != 2 || im.Manifests[1].Platform.Variant != "v8" || im.Manifests[1].Annotations["a"] != "b" {
		t.Fatalf("index manifest %+v", im.Manifests)
	}
	for i, src := range []v1.Image{amd, arm} {
		img, _ := didx.Image(im.Manifests[i].Digest)
		checkConverted(t, src, img)
	}

	// --platform picks one image and pushes it alone.
	rep, err = convert.Image(context.Background(), reg.ref("multi:1"), reg.ref("multi:arm"),
		convert.WithPlatform(&v1.Platform{OS: "linux", Architecture: "arm64"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 1 || rep.Images[0].Platform != "linux/arm64/v8" {
		t.Fatalf("platform report %+v", rep.Images)
	}
	checkConverted(t, arm, pull(t, reg.ref("multi:arm")))
	if _, err := convert.Image(context.Background(), reg.ref("multi:1"), reg.ref("multi:s390x"),
		convert.WithPlatform(&v1.Platform{OS: "linux", Architecture: "s390x"})); !errors.Is(err, convert.ErrNoMatchingPlatform) {
		t.Fatalf("missing platform: %v", err)
	}
}

// TestBadInputPushesNothing: every failure leaves no manifest at DST.
func TestBadInputPushesNothing(t *testing.T) {
	reg := newRegistry(t)
	good := tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "ok", Mode: 0o644}, Data: []byte("ok")}}, types.OCILayer)

	escape := tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "../../etc/cron.d/x", Mode: 0o644}, Data: []byte("x")}}, types.OCILayer)
	img, _ := mutate.AppendLayers(empty.Image, good, escape)
	push(t, reg.ref("bad:escape"), img)

	// A gzip layer whose compressed bytes are cut short: the registry holds
	// what it was given, under the digest of those bytes.
	full := toctest.Tar(t, toctest.AllTypes(300<<10))
	truncated := newRawLayer(gzipStd(full)[:20000], full, types.DockerLayer)
	img2, err := mutate.AppendLayers(empty.Image, good, truncated)
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.ref("bad:truncated"), img2)

	// A config whose diffID does not match the layer.
	img3, _ := mutate.AppendLayers(empty.Image, good)
	cf, _ := img3.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	img3, _ = mutate.ConfigFile(img3, cf)
	push(t, reg.ref("bad:diffid"), img3)

	for _, tc := range []struct {
		src  string
		want error
		text string
	}{
		{"bad:escape", toc.ErrUnsafePath, "layer 1"},
		{"bad:truncated", toc.ErrBadTar, "layer 1"},
		{"bad:diffid", convert.ErrDiffIDMismatch, "layer 0"},
		{"bad:missing", nil, "MANIFEST_UNKNOWN"},
	} {
		t.Run(tc.src, func(t *testing.T) {
			dst := reg.ref("out:" + strings.ReplaceAll(tc.src, ":", "-"))
			_, err := convert.Image(context.Background(), reg.ref(tc.src), dst)
			if err == nil {
				t.Fatal("converted bad input")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), reg.host) {
				t.Errorf("error %q does not name the image and %q", err, tc.text)
			}
			r, _ := name.ParseReference(dst)
			if _, err := remote.Head(r); err == nil {
				t.Error("a manifest was pushed for a failed conversion")
			}
		})
	}
}

func TestUnknownManifestType(t *testing.T) {
	reg := newRegistry(t)
	r, _ := name.ParseReference(reg.ref("odd:1"))
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json","layers":[]}`)
	if err := remote.Put(r, rawManifest{raw, "application/vnd.example.thing+json"}); err != nil {
		t.Fatal(err)
	}
	_, err := convert.Image(context.Background(), reg.ref("odd:1"), reg.ref("odd:2"))
	if !errors.Is(err, convert.ErrUnsupportedMediaType) || !strings.Contains(err.Error(), "vnd.example.thing") {
		t.Fatalf("got %v", err)
	}
}

type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

func TestReportJSON(t *testing.T) {
	rep := convert.Report{Source: "a", Images: []convert.ImageReport{{Layers: []convert.LayerReport{{Kept: "already chunked"}}}}}
	b, err := json.Marshal(rep)
	if err != nil || !strings.Contains(string(b), `"kept":"already chunked"`) {
		t.Fatalf("%s %v", b, err)
	}
}

// TestIndexWithAttestation: a BuildKit-style attestation manifest (in-toto
// layer, no diffIDs, platform unknown/unknown) is kept byte for byte, and its
// reference annotation follows the converted image's new digest.
func TestIndexWithAttestation(t *testing.T) {
	reg := newRegistry(t)
	amd := sourceImage(t, "linux/amd64")
	amdDigest, _ := amd.Digest()
	att, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1"}`), "application/vnd.in-toto+json"))
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := att.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = nil
	att, _ = mutate.ConfigFile(att, cf)
	attDigest, _ := att.Digest()
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{
				"vnd.docker.reference.type":   "attestation-manifest",
				"vnd.docker.reference.digest": amdDigest.String(),
			},
		}},
	)
	r, _ := name.ParseReference(reg.ref("att:1"))
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	rep, err := convert.Image(context.Background(), reg.ref("att:1"), reg.ref("att:lazy"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Images[1].Layers[0].Kept != "not a tar layer" {
		t.Errorf("attestation layer report %+v", rep.Images[1].Layers[0])
	}
	dr, _ := name.ParseReference(reg.ref("att:lazy"))
	out, err := remote.Index(dr)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := out.IndexManifest()
	if im.Manifests[1].Digest != attDigest {
		t.Errorf("attestation manifest changed: %s, was %s", im.Manifests[1].Digest, attDigest)
	}
	if got := im.Manifests[1].Annotations["vnd.docker.reference.digest"]; got != im.Manifests[0].Digest.String() || got == amdDigest.String() {
		t.Errorf("attestation refers to %s; converted image is %s (source %s)", got, im.Manifests[0].Digest, amdDigest)
	}
	img, _ := out.Image(im.Manifests[0].Digest)
	checkConverted(t, amd, img)
}

// TestPushByDigest: WithPushByDigest pushes the converted image under its
// digest and leaves the destination's tag alone (lazyfs convert --record
// tags it later).
func TestPushByDigest(t *testing.T) {
	reg := newRegistry(t)
	push(t, reg.ref("app:v1"), sourceImage(t, "linux/amd64"))
	rep, err := convert.Image(context.Background(), reg.ref("app:v1"), reg.ref("app:v1-lazy"), convert.WithChunkSize(64<<10), convert.WithPushByDigest(true))
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.ParseReference(reg.ref("app:v1-lazy"))
	if _, err := remote.Head(tag); err == nil {
		t.Fatal("the destination tag was pushed")
	}
	d, err := remote.Head(tag.Context().Digest(rep.Digest))
	if err != nil || d.Digest.String() != rep.Digest {
		t.Fatalf("the converted image is not in the registry by digest: %v %v", d, err)
	}
}
