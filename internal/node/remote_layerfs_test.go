package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// TestRemoteLayerFS: the snapshotter's FileSystem served by a holder
// process over its control socket. A reader keeps its open file across a
// "restart" of the snapshotter side (a new client asks to restore the same
// mount), and errors (the fallback reasons) come through.
func TestRemoteLayerFS(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	data := toctest.Random(41, 400<<10)
	ref := reg.PushConverted(t, "holder", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib.so", Mode: 0o755}, Data: data}})
	plain := reg.PushPlain(t, "holderplain", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "x", Mode: 0o644}, Data: []byte("x")}})
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	pimg, err := f.Resolve(context.Background(), plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	holder := newNode(t, f)
	sock := filepath.Join(t.TempDir(), "holder", "control.sock")
	ln, err := node.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); node.ServeListener(ctx, ln, holder.Handler()) }()
	t.Cleanup(func() { cancel(); <-served })

	dir := mountDir(t, "layer")
	lb := labels(ref, img.Layers[0].Digest.String())
	before := node.NewRemoteLayerFS(sock)
	if err := before.Mount(ctx, dir, lb); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(filepath.Join(dir, "lib.so"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(fh, head); err != nil {
		t.Fatal(err)
	}

	after := node.NewRemoteLayerFS(sock) // the restarted snapshotter
	if err := after.Mount(ctx, dir, lb); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if err := after.Check(ctx, dir, lb); err != nil {
		t.Fatalf("check: %v", err)
	}
	rest, err := io.ReadAll(fh)
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("the open file across the restart: %d bytes, %v", len(rest), err)
	}
	fh.Close()
	if err := after.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if m, _ := node.IsLazyfsMount(dir); m {
		t.Fatal("still mounted")
	}
	if err := after.Check(ctx, dir, lb); err == nil {
		t.Fatal("check of an unmounted layer succeeded")
	}
	err = after.Mount(ctx, dir, labels(plain, pimg.Layers[0].Digest.String()))
	if err == nil || !strings.Contains(err.Error(), "not a lazyfs image") {
		t.Fatalf("plain layer through the holder: %v", err)
	}
}
