package image_test

import (
	"archive/tar"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestResolverOncePerImage: 16 concurrent callers resolve an image and
// load its TOC with one manifest request and one TOC load; the caches are
// bounded (images by count, TOCs by weight) and a tag expires.
func TestResolverOncePerImage(t *testing.T) {
	reg := imagetest.New(t)
	var refs []string
	for i := range 3 {
		refs = append(refs, reg.PushConverted(t, fmt.Sprintf("r%d", i), []toctest.File{
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: []byte(fmt.Sprint(i))},
		}))
	}
	reg.Manifests.Store(0)
	r := image.NewResolver(remote.New(), image.ResolverOptions{TagTTL: time.Hour, MaxImages: 2, MaxTOCWeight: 5})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			img, err := r.Resolve(context.Background(), refs[0], nil)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := r.TOC(context.Background(), img, 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if st := r.Stats(); st.Resolves != 1 || st.TOCLoads != 1 || reg.Manifests.Load() != 1 {
		t.Fatalf("16 callers: %+v, %d manifest requests; want 1 resolve, 1 TOC load", st, reg.Manifests.Load())
	}
	for _, ref := range refs {
		img, err := r.Resolve(context.Background(), ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.TOC(context.Background(), img, 0); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); st.Images != 2 || st.TOCs > 2 {
		t.Fatalf("bounds: %+v; want 2 images (MaxImages) and TOCs within weight 5 (2 entries + 1 each)", st)
	}
	// A tag expires after TagTTL.
	short := image.NewResolver(remote.New(), image.ResolverOptions{TagTTL: time.Nanosecond})
	for range 2 {
		if _, err := short.Resolve(context.Background(), refs[1], nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if st := short.Stats(); st.Resolves != 2 {
		t.Fatalf("expired tag resolved %d times, want 2", st.Resolves)
	}
}
