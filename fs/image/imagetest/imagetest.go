// Package imagetest is the in-process registry fixture for tests of lazy
// images: a go-containerregistry registry on httptest (blobs on disk, as a
// real registry keeps them), request counters, and a helper that pushes an
// image built from files and converts it to lazyfs layers.
package imagetest

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// Registry is an in-process registry on 127.0.0.1 that counts the requests
// it answers.
type Registry struct {
	// Host is HOST:PORT, for references like Host+"/repo:tag".
	Host string
	// Manifests counts GET/HEAD requests of manifests; Blobs counts GETs of blobs.
	Manifests, Blobs atomic.Int64
}

// New starts a registry that is closed when the test ends.
func New(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithBlobHandler(registry.NewDiskBlobHandler(t.TempDir())))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case strings.Contains(req.URL.Path, "/manifests/") && req.Method != http.MethodPut:
			r.Manifests.Add(1)
		case strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet:
			r.Blobs.Add(1)
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// PushPlain pushes an image with one layer per file list (bottom first) as
// Host/repo:plain and returns that reference.
func (r *Registry) PushPlain(t testing.TB, repo string, layers ...[]toctest.File) string {
	t.Helper()
	img := empty.Image
	for _, fl := range layers {
		b := toctest.Tar(t, fl)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	src := r.Host + "/" + repo + ":plain"
	ref, err := name.ParseReference(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return src
}

// PushConverted pushes the image as PushPlain does, converts it with 64 KiB
// chunks to Host/repo:lazy and returns that reference.
func (r *Registry) PushConverted(t testing.TB, repo string, layers ...[]toctest.File) string {
	t.Helper()
	src := r.PushPlain(t, repo, layers...)
	dst := r.Host + "/" + repo + ":lazy"
	if _, err := convert.Image(context.Background(), src, dst, convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	return dst
}
