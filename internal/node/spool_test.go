package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// TestPassthroughSpool: a Node with FS.Passthrough and no SpoolDir (lazyfs
// serve, lazyfs-snapshotter) keeps the copies in ROOT/spool: what a killed
// node left there is gone when the next one starts, each mount has a
// directory of its own there, removed with the mount, and reads are right.
func TestPassthroughSpool(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	data := toctest.Random(41, 300<<10)
	ref := reg.PushConverted(t, "spool", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: data}})
	root := t.TempDir()
	spool := filepath.Join(root, "spool")
	stale := filepath.Join(spool, "spool-killed")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stale, "7"), data, 0o600)
	n, err := node.New(context.Background(), node.Config{Root: root, CacheDir: node.MemoryCache, CacheSize: 1 << 30,
		FS: fs.Options{Passthrough: true}, Profiles: node.ProfileConfig{NoFill: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a killed node's copies are still there: %v", err)
	}
	if fi, err := os.Stat(spool); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("spool %s: %v %v, want a 0700 directory", spool, fi, err)
	}
	dir := mountDir(t, "mnt")
	if _, err := n.MountImage(context.Background(), ref, dir, node.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(spool); err != nil || len(ents) != 1 {
		t.Fatalf("spool of the mount: %v %v, want one directory", ents, err)
	}
	for range 3 { // the second open may make the copy, a later one use it
		if got, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read: %d bytes, %v", len(got), err)
		}
	}
	if err := n.Unmount(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(spool); err != nil || len(ents) != 0 {
		t.Fatalf("spool after the unmount: %v %v, want empty", ents, err)
	}
}
