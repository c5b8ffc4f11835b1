package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	digest "github.com/opencontainers/go-digest"
)

// TestToEstargz converts an image in a real registry and checks the copy
// the way stargz-snapshotter reads it: every digest and diff ID in the
// manifest and config holds (validate.Image reads every byte), each layer
// is eStargz whose TOC matches the digest annotated on it, the uncompressed
// size annotation is right, and every file has the original's bytes.
func TestToEstargz(t *testing.T) {
	ln, err := netListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, dst := reg.Host()+"/t/img:plain", reg.Host()+"/t/img:esgz"
	orig, err := random.Image(300<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustRef(t, src), orig, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	if err := toEstargz(ctx, src, dst, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	img, err := remoteImageInsecure(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("converted image invalid: %v", err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	origLayers, _ := orig.Layers()
	if len(m.Layers) != len(origLayers) || m.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("manifest: %d layers (want %d), %s", len(m.Layers), len(origLayers), m.MediaType)
	}
	layers, _ := img.Layers()
	for i, desc := range m.Layers {
		blob, err := readAll(layers[i].Compressed())
		if err != nil {
			t.Fatal(err)
		}
		r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
		if err != nil {
			t.Fatalf("layer %d is not eStargz: %v", i, err)
		}
		toc, err := digest.Parse(desc.Annotations[estargz.TOCJSONDigestAnnotation])
		if err != nil {
			t.Fatalf("layer %d: TOC digest annotation: %v (annotations %v)", i, err, desc.Annotations)
		}
		if _, err := r.VerifyTOC(toc); err != nil {
			t.Errorf("layer %d: TOC does not match its annotation: %v", i, err)
		}
		usize, err := readAll(layers[i].Uncompressed())
		if err != nil {
			t.Fatal(err)
		}
		if got := desc.Annotations[estargz.StoreUncompressedSizeAnnotation]; got != strconv.Itoa(len(usize)) {
			t.Errorf("layer %d: uncompressed size annotation %q, the layer has %d bytes", i, got, len(usize))
		}
		files := 0
		forEachFile(t, origLayers[i], func(name string, want []byte) {
			files++
			sr, err := r.OpenFile(name)
			if err != nil {
				t.Fatalf("layer %d: %s: %v", i, name, err)
			}
			got, _ := io.ReadAll(sr)
			if !bytes.Equal(got, want) {
				t.Errorf("layer %d: %s: %d bytes differ from the original's %d", i, name, len(got), len(want))
			}
		})
		if files == 0 {
			t.Fatalf("layer %d: the original has no files to compare", i)
		}
	}
	// Without prioritized files, stargz-snapshotter is told to prefetch
	// nothing; with them, they come first, in order, before the landmark.
	for i := range layers {
		r := openEstargz(t, layers[i])
		if _, ok := r.Lookup(estargz.NoPrefetchLandmark); !ok {
			t.Errorf("layer %d: no %s", i, estargz.NoPrefetchLandmark)
		}
	}
	var names []string
	forEachFile(t, origLayers[1], func(name string, _ []byte) { names = append(names, name) })
	prio := [][]string{nil, {names[len(names)-1], "not/in/this/layer"}}
	if err := toEstargz(ctx, src, dst+"-prio", t.TempDir(), prio); err != nil {
		t.Fatal(err)
	}
	pimg, err := remoteImageInsecure(ctx, dst+"-prio")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(pimg); err != nil {
		t.Fatalf("prioritized copy invalid: %v", err)
	}
	players, _ := pimg.Layers()
	if _, ok := openEstargz(t, players[0]).Lookup(estargz.NoPrefetchLandmark); !ok {
		t.Errorf("layer 0, nothing prioritized: no %s", estargz.NoPrefetchLandmark)
	}
	r1 := openEstargz(t, players[1])
	mark, ok := r1.Lookup(estargz.PrefetchLandmark)
	if !ok {
		t.Fatalf("layer 1, a file prioritized: no %s", estargz.PrefetchLandmark)
	}
	first, ok := r1.Lookup(names[len(names)-1])
	if !ok || first.Offset >= mark.Offset {
		t.Errorf("layer 1: prioritized %s (%+v) is not before the landmark at %d", names[len(names)-1], first, mark.Offset)
	}
	for _, n := range names[:len(names)-1] {
		if e, ok := r1.Lookup(n); ok && e.Offset < mark.Offset {
			t.Errorf("layer 1: %s, not prioritized, is before the landmark", n)
		}
	}
	if err := toEstargz(ctx, src, dst+"-bad", t.TempDir(), make([][]string, 4)); err == nil {
		t.Error("prioritized files for 4 layers of a 3-layer image: no error")
	}

	// Converting again keeps the copy in the registry as it is.
	before, _ := img.Digest()
	if err := toEstargz(ctx, src, dst, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	again, err := remoteImageInsecure(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := again.Digest(); d != before {
		t.Errorf("second conversion replaced the copy: %s, was %s", d, before)
	}
}

func openEstargz(t *testing.T, l v1.Layer) *estargz.Reader {
	t.Helper()
	blob, err := readAll(l.Compressed())
	if err != nil {
		t.Fatal(err)
	}
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readAll(rc io.ReadCloser, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// forEachFile calls f with each regular file of l's tar.
func forEachFile(t *testing.T, l v1.Layer, f func(name string, b []byte)) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			f(h.Name, b)
		}
	}
}
