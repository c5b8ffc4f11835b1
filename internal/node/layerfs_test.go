package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

func needFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// newNode starts a Node with a private in-memory cache and its state in a
// temp dir. Fill (on by default for merged mounts) is off: these tests check
// what reads fetch; profiles_test.go tests fill.
func newNode(t testing.TB, f *remote.Fetcher) *node.Node {
	t.Helper()
	n, err := node.New(context.Background(), node.Config{Root: t.TempDir(), CacheDir: node.MemoryCache, CacheSize: 1 << 30, Fetcher: f,
		Profiles: node.ProfileConfig{NoFill: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("node close: %v", err)
		}
	})
	return n
}

func mountDir(t testing.TB, name string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func labels(ref, layer string, layers ...string) map[string]string {
	l := map[string]string{node.LabelImageRef: ref, node.LabelLayerDigest: layer}
	if len(layers) > 0 {
		s := layers[0]
		for _, x := range layers[1:] {
			s += "," + x
		}
		l[node.LabelImageLayers] = s
	}
	return l
}

// ignoreHTTP ignores the goroutines of idle registry connections (owned by
// the fetcher's transport and the test server, not by a mount).
var ignoreHTTP = []goleak.Option{
	goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
}

// TestLayerFS mounts every layer of a two-layer image at once through the
// snapshotter's interface: the manifest is fetched once, each layer is
// served as an overlayfs lower (whiteouts as 0:0 devices), Mount is
// idempotent, and Unmount leaves no mount and no goroutine.
func TestLayerFS(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	big := toctest.Random(7, 300<<10)
	ref := reg.PushConverted(t, "layers",
		[]toctest.File{
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/tool", Mode: 0o755}, Data: big},
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "gone", Mode: 0o644}, Data: []byte("old")},
		},
		[]toctest.File{
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone", Mode: 0o644}},
			{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/conf", Mode: 0o644}, Data: []byte("v2")},
		})
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, l := range img.Layers {
		digests = append(digests, l.Digest.String())
	}
	before := goleak.IgnoreCurrent()
	n := newNode(t, f)
	lfs := n.LayerFS()
	reg.Manifests.Store(0)

	dirs := []string{mountDir(t, "l0"), mountDir(t, "l1")}
	var wg sync.WaitGroup
	errs := make([]error, len(dirs))
	for i := range dirs {
		wg.Go(func() { errs[i] = lfs.Mount(context.Background(), dirs[i], labels(ref, digests[i], digests...)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("mount layer %d: %v", i, err)
		}
	}
	if got := reg.Manifests.Load(); got != 1 {
		t.Errorf("two layers of one image fetched the manifest %d times, want 1", got)
	}
	if rs := n.Resolver().Stats(); rs.Resolves != 1 || rs.TOCLoads != 2 {
		t.Errorf("resolver: %+v, want 1 resolve and 2 TOC loads", rs)
	}
	if got, err := os.ReadFile(filepath.Join(dirs[0], "bin/tool")); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("layer 0: bin/tool: %d bytes, %v", len(got), err)
	}
	if got, err := os.ReadFile(filepath.Join(dirs[1], "etc/conf")); err != nil || string(got) != "v2" {
		t.Fatalf("layer 1: etc/conf: %q %v", got, err)
	}
	fi, err := os.Lstat(filepath.Join(dirs[1], "gone"))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 || fi.Sys().(*syscall.Stat_t).Rdev != 0 {
		t.Fatalf("layer 1: whiteout of gone is %v, %v; want a 0:0 character device", fi, err)
	}
	for _, d := range dirs {
		if err := lfs.Check(context.Background(), d, nil); err != nil {
			t.Fatalf("check: %v", err)
		}
	}
	// Asked again (a restarted snapshotter restoring its snapshots): nothing changes.
	if err := lfs.Mount(context.Background(), dirs[0], labels(ref, digests[0])); err != nil {
		t.Fatalf("mount again: %v", err)
	}
	// Another layer on a busy mount point is refused.
	if err := lfs.Mount(context.Background(), dirs[0], labels(ref, digests[1])); !errors.Is(err, node.ErrMountPointInUse) {
		t.Fatalf("other layer on a used mount point: %v", err)
	}
	// The cache writes what a read fetched in the background: LocalBytes
	// reaches the file's size soon after the read, not with it.
	ls := n.List(context.Background())
	for deadline := time.Now().Add(10 * time.Second); len(ls) == 2 && ls[0].LocalBytes < int64(len(big)) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		ls = n.List(context.Background())
	}
	if len(ls) != 2 || ls[0].Kind != node.KindLayer || ls[0].Layer != digests[0] || ls[0].FetchedBytes == 0 || ls[0].LocalBytes < int64(len(big)) {
		t.Fatalf("list: %+v", ls)
	}

	for _, d := range dirs {
		if err := lfs.Unmount(context.Background(), d); err != nil {
			t.Fatalf("unmount: %v", err)
		}
		if m, _ := node.IsLazyfsMount(d); m {
			t.Fatalf("%s still mounted after Unmount", d)
		}
		if err := lfs.Check(context.Background(), d, nil); err == nil {
			t.Fatal("check of an unmounted layer succeeded")
		}
	}
	if err := lfs.Unmount(context.Background(), dirs[0]); err != nil {
		t.Fatalf("second unmount: %v", err)
	}
	f.Close()
	goleak.VerifyNone(t, append(ignoreHTTP, before)...)
}

// TestLayerFSRefusesPlainLayers: a layer without a lazyfs index, or not in
// the image, is an error naming the reason (the snapshotter falls back).
func TestLayerFSRefusesPlainLayers(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	ref := reg.PushPlain(t, "plain", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: []byte("x")}})
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, f)
	dir := mountDir(t, "plain")
	err = n.LayerFS().Mount(context.Background(), dir, labels(ref, img.Layers[0].Digest.String()))
	if !errors.Is(err, image.ErrNotConverted) {
		t.Fatalf("plain layer: %v, want ErrNotConverted", err)
	}
	err = n.LayerFS().Mount(context.Background(), dir, labels(ref, "sha256:"+fmt.Sprintf("%064x", 1)))
	if !errors.Is(err, image.ErrNoLayer) {
		t.Fatalf("unknown layer: %v, want ErrNoLayer", err)
	}
	if err := n.LayerFS().Mount(context.Background(), dir, map[string]string{node.LabelImageRef: ref}); err == nil {
		t.Fatal("mount without a layer label succeeded")
	}
	if m, _ := node.IsLazyfsMount(dir); m || len(n.List(context.Background())) != 0 {
		t.Fatal("a refused layer left a mount")
	}
}

// TestSharedChunksFetchedOnce: two images whose layers hold the same file
// (different layers, same chunks) fetch those chunks once through one Node.
func TestSharedChunksFetchedOnce(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	shared := toctest.Random(11, 512<<10) // 8 chunks of 64 KiB
	refA := reg.PushConverted(t, "a", []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/shared.so", Mode: 0o755}, Data: shared},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a.txt", Mode: 0o644}, Data: []byte("a")},
	})
	refB := reg.PushConverted(t, "b", []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib/shared.so", Mode: 0o755}, Data: shared},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "b.txt", Mode: 0o644}, Data: []byte("b")},
	})
	n := newNode(t, remote.New())
	da, db := mountDir(t, "a"), mountDir(t, "b")
	ma, err := n.MountImage(context.Background(), refA, da, node.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mb, err := n.MountImage(context.Background(), refB, db, node.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ma.Image().Layers[0].Digest == mb.Image().Layers[0].Digest {
		t.Fatal("test images share their layer; they must share only chunks")
	}
	for _, d := range []string{da, db} {
		got, err := os.ReadFile(filepath.Join(d, "lib/shared.so"))
		if err != nil || !bytes.Equal(got, shared) {
			t.Fatalf("%s: %d bytes, %v", d, len(got), err)
		}
		// The cache is written behind reads: let a's chunks land first.
		deadline := time.Now().Add(10 * time.Second)
		for n.Cache().Stats().Entries < 8 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	sa, sb := ma.Stats(), mb.Stats()
	if sa.Fetched.Chunks < 8 || sb.Fetched.Chunks != 0 {
		t.Errorf("image a fetched %d chunks, image b %d; want ≥8 and 0 (b reads a's chunks from the node cache)", sa.Fetched.Chunks, sb.Fetched.Chunks)
	}
	if got := n.Fetcher().Stats().ChunksFetched; got != sa.Fetched.Chunks {
		t.Errorf("the node's fetcher fetched %d chunks, the mounts %d", got, sa.Fetched.Chunks)
	}
	if sb.FS.ChunkHits < 8 {
		t.Errorf("image b: %d cache hits, want ≥ 8", sb.FS.ChunkHits)
	}
}

// TestLayerFSReplacesStaleMount: a lazyfs FUSE mount whose server is gone
// (what a SIGKILLed daemon leaves) is replaced when the layer is mounted
// again, as a restarted snapshotter does for its remote snapshots.
func TestLayerFSReplacesStaleMount(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	ref := reg.PushConverted(t, "stale", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "hello", Mode: 0o644}, Data: []byte("hi")}})
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := mountDir(t, "stale")
	deadMount(t, dir)
	if _, err := os.Stat(filepath.Join(dir, "hello")); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("dead mount: %v, want ENOTCONN", err)
	}
	n := newNode(t, f)
	if err := n.LayerFS().Mount(context.Background(), dir, labels(ref, img.Layers[0].Digest.String())); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "hello")); err != nil || string(got) != "hi" {
		t.Fatalf("after restore: %q %v", got, err)
	}
	if err := n.LayerFS().Unmount(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if m, _ := node.IsLazyfsMount(dir); m {
		t.Fatal("stale mount left under the restored one")
	}
}

// deadMount leaves at dir a fuse.lazyfs mount whose server is gone.
func deadMount(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)
	if err := unix.Mount("lazyfs-test", dir, "fuse.lazyfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		unix.Close(fd)
		t.Fatalf("mount: %v", err)
	}
	unix.Close(fd)
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestLayerFSRestoreAfterTagMoved: a daemon restarted after its image's
// tag moved to another image mounts its layer again at the same mount
// point from the descriptor it recorded (a fresh daemon without the record
// cannot).
func TestLayerFSRestoreAfterTagMoved(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	ref := reg.PushConverted(t, "moving", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "v", Mode: 0o644}, Data: []byte("one")}})
	f := remote.New()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	lb := labels(ref, img.Layers[0].Digest.String())
	root, dir := t.TempDir(), mountDir(t, "layer")
	cfg := node.Config{Root: root, CacheDir: node.MemoryCache, CacheSize: 1 << 30, Fetcher: f}
	n1, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.LayerFS().Mount(context.Background(), dir, lb); err != nil {
		t.Fatal(err)
	}
	if err := n1.Close(); err != nil { // the daemon stops; its snapshots stay
		t.Fatal(err)
	}
	reg.PushConverted(t, "moving", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "v", Mode: 0o644}, Data: []byte("two")}})

	fresh := newNode(t, f)
	if err := fresh.LayerFS().Mount(context.Background(), dir, lb); !errors.Is(err, image.ErrNoLayer) {
		t.Fatalf("without a record: %v, want ErrNoLayer", err)
	}
	n2, err := node.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := n2.LayerFS().Mount(context.Background(), dir, lb); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "v")); err != nil || string(got) != "one" {
		t.Fatalf("restored layer: %q %v", got, err)
	}
	if err := n2.LayerFS().Unmount(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	// Unmount forgets the layer: no restore any more.
	if err := n2.LayerFS().Mount(context.Background(), dir, lb); !errors.Is(err, image.ErrNoLayer) {
		t.Fatalf("after Unmount: %v, want ErrNoLayer", err)
	}
}
