package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/prewarm"
)

// TestControlAPI drives a Node over its control socket as lazyfs mount,
// ls, stats, umount and lazyfs-prewarm do, and reads its metrics.
func TestControlAPI(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	data := toctest.Random(21, 200<<10)
	ref := reg.PushConverted(t, "ctl", []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "data.bin", Mode: 0o644}, Data: data},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "other.bin", Mode: 0o644}, Data: toctest.Random(22, 100<<10)},
	})
	n := newNode(t, remote.New())
	sock := filepath.Join(t.TempDir(), "run", "control.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	ln, err := node.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { served <- node.ServeListener(ctx, ln, n.Handler()) }()
	t.Cleanup(func() { cancel(); <-served })
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v, want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode: %v %v, want 0700", fi.Mode(), err)
	}
	if _, err := node.Listen(sock); err == nil {
		t.Fatal("a second server took over a live control socket")
	}

	c := node.NewClient(sock, 30*time.Second)
	if h, err := c.Health(ctx); err != nil || h.PID != os.Getpid() {
		t.Fatalf("health: %+v %v", h, err)
	}
	dir := mountDir(t, "mnt")
	st, err := c.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if st.Dir != dir || st.Layers != 1 {
		t.Fatalf("mount stats: %+v", st)
	}
	if _, err := c.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir}); !errors.Is(err, node.ErrMountPointInUse) {
		t.Fatalf("second mount on %s: %v", dir, err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %d bytes %v", len(got), err)
	}
	ls, err := c.List(ctx)
	if err != nil || len(ls) != 1 || ls[0].Dir != dir || ls[0].Kind != node.KindImage || ls[0].FetchedBytes == 0 {
		t.Fatalf("list: %+v %v", ls, err)
	}
	st, err = c.Stats(ctx, dir)
	if err != nil || st.FS.Reads == 0 || st.Fetched.Bytes == 0 || st.Fetched.Bytes >= st.ImageSize {
		t.Fatalf("stats after one read: %+v %v", st, err)
	}
	// lazyfs-prewarm warms the node's cache through the same socket.
	w := &prewarm.HTTPWarmer{Socket: sock, Whole: true}
	if res, err := w.Warm(ctx, ref); err != nil || res.Chunks == 0 {
		t.Fatalf("warm: %+v %v", res, err)
	}

	reg2 := prometheus.NewPedanticRegistry()
	for _, col := range n.Collectors() {
		if err := reg2.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg2.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[mf.GetName()] += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				got[mf.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for _, name := range []string{"lazyfs_node_fetched_bytes_total", "lazyfs_node_fetch_duration_seconds", "lazyfs_node_mount_fetched_bytes", "lazyfs_blobcache_puts_total", "lazyfs_node_mounts"} {
		if got[name] <= 0 {
			t.Errorf("metric %s = %v, want > 0 (have %v)", name, got[name], got)
		}
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://lazyfs/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "lazyfs_node_fetched_bytes_total") || !strings.Contains(string(body), "lazyfs_blobcache_hits_total") {
		t.Errorf("GET /metrics on the control socket:\n%.2000s", body)
	}

	if err := c.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if m, _ := node.IsLazyfsMount(dir); m {
		t.Fatal("still mounted")
	}
	if err := c.Unmount(ctx, dir); !errors.Is(err, node.ErrNotMounted) {
		t.Fatalf("unmount twice: %v", err)
	}
}

// TestOpenCacheRefuses: a cache directory that cannot be used is an error
// that says why, never a silent in-memory cache.
func TestOpenCacheRefuses(t *testing.T) {
	dir := t.TempDir()
	held, err := blobcache.Open(dir, blobcache.WithCapacity(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tc := range []struct {
		name, dir string
		size      int64
		want      string
	}{
		{"in use", dir, 64 << 20, "in use by another process"},
		{"not a directory", writeFile(t), 64 << 20, "not a directory"},
		{"capacity 0", t.TempDir(), 0, "must be positive"},
	} {
		c, err := node.OpenCache(tc.dir, tc.size, nil)
		if !errors.Is(err, node.ErrCacheUnavailable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrCacheUnavailable saying %q", tc.name, err, tc.want)
		}
		if c != nil {
			c.Close()
			t.Errorf("%s: got a cache", tc.name)
		}
	}
	_, err = node.New(context.Background(), node.Config{Root: t.TempDir(), CacheDir: dir, CacheSize: 64 << 20})
	if !errors.Is(err, node.ErrCacheUnavailable) {
		t.Errorf("node.New on a held cache: %v", err)
	}
	// A shared, world-writable directory is never used (nor narrowed).
	shared := t.TempDir()
	os.Chmod(shared, 0o1777)
	if c, err := node.OpenCache(shared, 64<<20, nil); !errors.Is(err, node.ErrCacheUnavailable) {
		if c != nil {
			c.Close()
		}
		t.Errorf("world-writable cache dir: %v", err)
	}
}

// TestCacheDirPrivate: the cache directory is made 0700, so cached chunks
// of private images are not readable by other users.
func TestCacheDirPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := node.OpenCache(dir, 64<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache dir: %v %v, want 0700", fi.Mode(), err)
	}
}

func writeFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLogBounded: a mount log rotates at its limit into one previous file,
// both 0600.
func TestLogBounded(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.log")
	l, err := node.OpenLog(p, 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("x", 99) + "\n")
	for range 100 {
		if n, err := l.Write(line); err != nil || n != len(line) {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	l.Close()
	for _, f := range []string{p, p + ".1"} {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > 1000 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v; want ≤ 1000 bytes, 0600", f, fi, err)
		}
	}
	if _, err := os.Stat(p + ".2"); err == nil {
		t.Fatal("more than one old log kept")
	}
}
