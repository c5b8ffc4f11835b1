// Package imagetest extends the in-process registry fixture
// (internal/registrytest) for tests of lazy images: helpers that push an
// image built from files and convert it to lazyfs layers.
package imagetest

import (
	"context"
	"testing"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// Registry is the shared in-process registry fixture
// (internal/registrytest) with helpers that push lazy images.
type Registry struct {
	*registrytest.Registry
}

// New starts a registry that is closed when the test ends.
func New(t testing.TB, opts ...registrytest.Option) *Registry {
	t.Helper()
	return &Registry{registrytest.New(t, opts...)}
}

// PushPlain pushes an image with one layer per file list (bottom first) as
// Host/repo:plain and returns that reference.
func (r *Registry) PushPlain(t testing.TB, repo string, layers ...[]toctest.File) string {
	t.Helper()
	tars := make([][]byte, len(layers))
	for i, fl := range layers {
		tars[i] = toctest.Tar(t, fl)
	}
	src := r.Host + "/" + repo + ":plain"
	registrytest.PushTars(t, src, tars...)
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
