package image_test

import (
	"context"
	"fmt"
	"os"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// Example mounts one layer of a lazyfs image as an overlayfs lower layer,
// the way the snapshotter does, sharing resolved images, TOCs, the fetcher
// and the block cache with every other mount of the process.
func Example() {
	ctx := context.Background()
	r := image.NewResolver(remote.New(), image.ResolverOptions{})
	cache := blobcache.NewMemory()
	img, err := r.Resolve(ctx, "127.0.0.1:5000/app:1-lazy", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	m, err := image.MountImageLayer(ctx, r, img, 0, "/mnt/layer0", image.Options{Resolver: r, Cache: cache})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer m.Close()
	st := m.Stats()
	fmt.Printf("%s: %d entries, %d bytes fetched\n", st.Layer, st.Entries, st.Fetched.Bytes)
}
