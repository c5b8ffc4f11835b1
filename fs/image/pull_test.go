package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

func fileLayer(t testing.TB, name, data string) []byte {
	return toctest.Tar(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Data: []byte(data)}})
}

// TestPullServesPlainImages: the --pull path (Options.Pull) serves an image
// that is not lazyfs-converted by downloading each layer whole, checking its
// digest and converting it locally; the local copies go when the mount does.
// Without Pull the same image is refused with ErrNotConverted.
func TestPullServesPlainImages(t *testing.T) {
	needFUSE(t)
	reg := registrytest.New(t)
	ref := reg.Ref("plain:1")
	registrytest.PushTars(t, ref, fileLayer(t, "etc/base", "bottom\n"), fileLayer(t, "etc/app", "top\n"))
	f := remote.New()
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)

	if _, err := image.Mount(context.Background(), ref, dir, image.Options{Fetcher: f, Cache: fstest.NewMemCache()}); !errors.Is(err, image.ErrNotConverted) {
		t.Fatalf("plain image without Pull: %v; want ErrNotConverted", err)
	}

	pullDir := t.TempDir()
	m, err := image.Mount(context.Background(), ref, dir, image.Options{Fetcher: f, Cache: fstest.NewMemCache(), Pull: true, TempDir: pullDir})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"etc/base": "bottom\n", "etc/app": "top\n"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
	}
	if st := m.Stats(); st.PulledLayers != 2 {
		t.Errorf("PulledLayers %d, want 2", st.PulledLayers)
	}
	if ents, _ := os.ReadDir(pullDir); len(ents) != 2 {
		t.Errorf("%d local layer copies while mounted, want 2", len(ents))
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(pullDir); len(ents) != 0 {
		t.Errorf("local layer copies left after unmount: %v", ents)
	}
}

// TestPullChecksDigest: a registry that serves other (valid) bytes under a
// layer's digest is caught by the whole-blob digest check of the pull path.
func TestPullChecksDigest(t *testing.T) {
	var swap atomic.Value // [2]string: blob path to serve instead
	reg := registrytest.New(t, registrytest.WithMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s, ok := swap.Load().([2]string); ok && strings.HasSuffix(r.URL.Path, s[0]) {
				r.URL.Path = strings.TrimSuffix(r.URL.Path, s[0]) + s[1]
			}
			h.ServeHTTP(w, r)
		})
	}))
	good, other := reg.Ref("p:good"), reg.Ref("p:other")
	goodTar := fileLayer(t, "f", "the real bytes\n")
	registrytest.PushTars(t, good, goodTar)
	// Other bytes of the same compressed size: the registry's range checks
	// pass, only the digest can tell.
	want := gzSize(t, goodTar)
	for i := 0; ; i++ {
		if i == 10000 {
			t.Fatal("no other layer of the same compressed size")
		}
		if b := fileLayer(t, "f", fmt.Sprintf("the real b%04d\n", i)); gzSize(t, b) == want {
			registrytest.PushTars(t, other, b)
			break
		}
	}

	r := image.NewResolver(remote.New(), image.ResolverOptions{})
	img, err := r.Resolve(context.Background(), good, nil)
	if err != nil {
		t.Fatal(err)
	}
	oimg, err := r.Resolve(context.Background(), other, nil)
	if err != nil {
		t.Fatal(err)
	}
	blob := func(d v1.Hash) string { return "/blobs/" + d.String() }
	swap.Store([2]string{blob(img.Layers[0].Digest), blob(oimg.Layers[0].Digest)})

	l, err := image.OpenLayer(context.Background(), r, img, 0, image.LayerOptions{Pull: true, TempDir: t.TempDir()})
	if err == nil {
		l.Close()
		t.Fatal("a layer with the wrong bytes was served")
	}
	if !errors.Is(err, toc.ErrDigestMismatch) || !strings.Contains(err.Error(), img.Layers[0].Digest.String()) {
		t.Fatalf("wrong bytes: %v; want a digest mismatch naming the layer", err)
	}
}

// gzSize is the size of tar b as a gzip layer blob.
func gzSize(t *testing.T, b []byte) int64 {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
