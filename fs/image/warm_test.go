package image_test

import (
	"archive/tar"
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/prewarm"
)

// TestWarmOverPrewarmContract: lazyfs-prewarm's HTTPWarmer asks the cache
// owner's /v1/warm endpoint (image.WarmHandler) to warm an image; the start-up
// set (first chunk of every file) and then the whole image land in the cache.
func TestWarmOverPrewarmContract(t *testing.T) {
	reg := newRegistry(t)
	files := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/big.so", Mode: 0o755}, Data: toctest.Random(5, 300<<10)},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "app/main.py", Mode: 0o644}, Data: []byte("print('hi')\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "empty/", Mode: 0o755}},
	}
	ref := pushConverted(t, reg, "warm", files) // 64 KiB chunks: big.so has 5
	cache := blobcache.NewMemory()
	sock := filepath.Join(t.TempDir(), "cache.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: image.WarmHandler(remote.New(), cache)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	w := &prewarm.HTTPWarmer{Socket: sock}
	res, err := w.Warm(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks != 2 || cache.Stats().Entries != 2 || res.Digest == "" {
		t.Fatalf("start-up warm: %+v, cache %+v; want the first chunk of each of 2 files", res, cache.Stats())
	}
	// Again: nothing new to fetch.
	if res, err = w.Warm(context.Background(), ref); err != nil || res.Chunks != 0 {
		t.Fatalf("second warm: %+v %v", res, err)
	}
	w.Whole = true
	if res, err = w.Warm(context.Background(), ref); err != nil || res.Chunks != 4 || cache.Stats().Entries != 6 {
		t.Fatalf("whole warm: %+v %v, cache %+v", res, err, cache.Stats())
	}
	// A plain image is refused with a clear error.
	if _, err := w.Warm(context.Background(), reg.host+"/warm:plain"); err == nil {
		t.Fatal("warmed an image that is not converted")
	}
}
