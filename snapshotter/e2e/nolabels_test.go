package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
)

// TestPullWithoutLabels: a client that pulls with unpacking but without
// snapshotters.AppendInfoHandlerWrapper (containerd's Go client as is, which
// is what nerdctl does for a snapshotter it does not know by name) gets the
// converted image's layers mounted lazily all the same: the snapshotter
// finds the image in containerd's content store. containerd never downloads
// those layers. A plain image pulled that way falls back with reason
// not_converted; containerd 1.x's ctr image pull, which downloads every
// blob before it unpacks, unpacks the local copies (2.x's passes labels).
func TestPullWithoutLabels(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	r := newRegistry(t)
	big := toctest.Random(11, 8<<20) // never read
	base := busyboxLayer(t, busybox)
	push(t, r.ref("src/app:1"), base, layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("found without labels\n")),
		dir("data/"), reg("data/big", 0o644, big)}))
	if _, err := convert.Image(ctx, r.ref("src/app:1"), r.ref("lazy/app:1"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	push(t, r.ref("plain/app:1"), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("plain\n"))}))
	push(t, r.ref("src/ctr:1"), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("pulled by ctr\n"))}))
	if _, err := convert.Image(ctx, r.ref("src/ctr:1"), r.ref("lazy/ctr:1"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	imageSize := imageBytes(t, r.ref("lazy/app:1"))

	// containerd's distribution-source label keeps the registry's host
	// name only (it drops the port): a hosts.toml for the bare name says
	// where it is, as here (TestPullWithoutLabelsFindsPort: without one).
	hosts := t.TempDir()
	host, _, _ := strings.Cut(r.host, ":")
	writeHostsTOML(t, hosts, host, fmt.Sprintf("server = %q\n", "http://"+r.host))
	d := prepareDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	d.startAfter(c, hosts)

	cl, pull := unlabelledPuller(t, c)
	plainPull := func(ref string) error { return pull(ctx, ref) }

	lazy := r.ref("lazy/app:1")
	if err := plainPull(lazy); err != nil {
		t.Fatalf("pull without labels: %v\n%s", err, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers after pulling a 2-layer converted image without labels: %v, want 2\n%s", got, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_fallback_layers_total"); got != 0 {
		t.Fatalf("fallback layers: %v, want 0\n%s", got, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_located_layers_total"); got != 2 {
		t.Errorf("layers located in containerd's content store: %v, want 2", got)
	}
	// containerd did not download the layers: their blobs are not in its
	// content store.
	ref, err := name.ParseReference(lazy)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		dg, _ := l.Digest()
		if _, err := cl.ContentStore().Info(ctx, digest.Digest(dg.String())); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("layer %d (%s) is in containerd's content store (%v): it was downloaded", i, dg, err)
		}
	}
	out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", lazy, fmt.Sprintf("nolabels-%d-1", os.Getpid()), "/bin/sh", "-c", "cat /etc/motd; busybox --help | head -1")
	if err != nil || !strings.Contains(out, "found without labels") || !strings.Contains(out, "BusyBox") {
		t.Fatalf("ctr run: %v\n%s\n%s", err, out, d.logTail())
	}
	fetched := r.fetched("lazy/app")
	t.Logf("image %d bytes; fetched %d bytes (%.1f%%) to pull without labels and run it", imageSize, fetched, 100*float64(fetched)/float64(imageSize))
	if fetched > imageSize-int64(len(big))/2 {
		t.Errorf("pull without labels and run fetched %d of %d bytes: the never-read %d-byte file too", fetched, imageSize, len(big))
	}

	// The located layers' snapshots carry the labels the lookup found:
	// after kill -9 and a restart, they are mounted again and a container
	// reads a file it never read (containerd redials the proxy after a
	// back-off, so the first runs may find it unavailable).
	d.kill9()
	d.start()
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, err = c.Ctr("run", "--rm", "--snapshotter", "lazyfs", lazy, fmt.Sprintf("nolabels-%d-3", os.Getpid()), "busybox", "md5sum", "/data/big")
		if err == nil || !proxyRedialing(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || !strings.Contains(out, md5hex(big)) {
		t.Fatalf("container after kill -9 and restart: %v %q\n%s", err, out, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_restored_mounts_total"); got < 2 {
		t.Errorf("restored mounts after restart: %v, want 2", got)
	}

	// A plain image: located, not lazy, unpacked by containerd.
	if err := plainPull(r.ref("plain/app:1")); err != nil {
		t.Fatalf("pull of a plain image: %v\n%s", err, d.logTail())
	}
	if got := d.metric(`lazyfs_snapshotter_fallback_layers_total{reason="not_converted"}`); got != 1 {
		t.Errorf("plain image pulled without labels: not_converted fallbacks %v, want 1\n%s", got, d.logTail())
	}
	if out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", r.ref("plain/app:1"), fmt.Sprintf("nolabels-%d-2", os.Getpid()), "/bin/cat", "/etc/motd"); err == nil {
		t.Logf("plain image ran: %q", out) // no shell in it: ctr run may fail, the unpack is what counts
	}

	// containerd 1.x's ctr image pull fetches every blob, then unpacks:
	// the local copy is unpacked, nothing is mounted lazily. containerd
	// 2.x's goes through the transfer service, which passes the labels
	// (the proxy plugin exports enable_remote_snapshot_annotations): lazy.
	want, ver := 0.0, containerdVersion(ctx, t, c)
	if !strings.HasPrefix(ver, "1.") {
		want = 1
	}
	remoteBefore := d.metric("lazyfs_snapshotter_remote_layers_total")
	if out, err := c.Ctr("image", "pull", "--plain-http", "--snapshotter", "lazyfs", r.ref("lazy/ctr:1")); err != nil {
		t.Fatalf("ctr image pull: %v\n%s\n%s", err, out, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total") - remoteBefore; got != want {
		t.Errorf("ctr image pull of containerd %s mounted %v layers lazily, want %v", ver, got, want)
	}
}

// TestPullWithoutLabelsFindsPort: containerd's distribution-source label
// drops the registry's port, so a pull without labels from a registry on
// another port than 443 names a host that serves nothing. With no
// hosts.toml for the bare name, the snapshotter tries the ports the node
// knows that host with: a HOST:PORT entry of hosts_dir (the second
// registry) and images in containerd's image store (the first: a plain
// image pulled from it before). Both converted images are mounted lazily,
// their snapshots name the registry with its port, and a container reads
// the first one.
func TestPullWithoutLabelsFindsPort(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	r1, r2 := newRegistry(t), newRegistry(t)
	push(t, r1.ref("src/app:1"), busyboxLayer(t, busybox), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("port from the image store\n"))}))
	push(t, r1.ref("plain/app:1"), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("plain\n"))}))
	push(t, r2.ref("src/app:1"), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("port from hosts_dir\n"))}))
	for _, r := range []*countingRegistry{r1, r2} {
		if _, err := convert.Image(ctx, r.ref("src/app:1"), r.ref("lazy/app:1"), convert.WithChunkSize(64<<10)); err != nil {
			t.Fatal(err)
		}
	}
	hosts := t.TempDir()
	writeHostsTOML(t, hosts, r2.host, fmt.Sprintf("server = %q\n", "http://"+r2.host))
	d := prepareDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	d.startAfter(c, hosts)
	cl, pull := unlabelledPuller(t, c)
	plainPull := func(ref string) {
		t.Helper()
		if err := pull(ctx, ref); err != nil {
			t.Fatalf("pull %s without labels: %v\n%s", ref, err, d.logTail())
		}
	}

	plainPull(r1.ref("plain/app:1")) // names r1's port in the image store
	for i, tc := range []struct {
		r      *countingRegistry
		layers float64
	}{{r1, 2}, {r2, 1}} {
		before := d.metric("lazyfs_snapshotter_remote_layers_total")
		plainPull(tc.r.ref("lazy/app:1"))
		if got := d.metric("lazyfs_snapshotter_remote_layers_total") - before; got != tc.layers {
			t.Fatalf("image %d: %v layers mounted lazily, want %v\n%s", i+1, got, tc.layers, d.logTail())
		}
		img, err := cl.GetImage(ctx, tc.r.ref("lazy/app:1"))
		if err != nil {
			t.Fatal(err)
		}
		ids, err := img.RootFS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cl.SnapshotService("lazyfs").Stat(ctx, identity.ChainID(ids).String())
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Labels["containerd.io/snapshot/cri.image-ref"]; !strings.HasPrefix(got, tc.r.host+"/lazy/app@") {
			t.Errorf("image %d: snapshot's image reference %q, want one on %s", i+1, got, tc.r.host)
		}
	}
	if got := d.metric("lazyfs_snapshotter_fallback_layers_total"); got != 1 {
		t.Errorf("fallback layers %v, want 1 (the plain image's)\n%s", got, d.logTail())
	}
	out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", r1.ref("lazy/app:1"), fmt.Sprintf("findsport-%d", os.Getpid()), "busybox", "cat", "/etc/motd")
	if err != nil || !strings.Contains(out, "port from the image store") {
		t.Fatalf("ctr run: %v\n%s\n%s", err, out, d.logTail())
	}
}

// writeHostsTOML writes dir/host/hosts.toml.
func writeHostsTOML(t *testing.T, dir, host, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// unlabelledPuller returns containerd's Go client on c and a pull that
// unpacks into lazyfs without snapshotters.AppendInfoHandlerWrapper, as
// nerdctl does for a snapshotter it does not know by name.
func unlabelledPuller(t *testing.T, c *ctrtest.Containerd) (*client.Client, func(ctx context.Context, ref string) error) {
	t.Helper()
	cl, err := client.New(c.Address, client.WithDefaultNamespace(c.Namespace), client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts))})
	return cl, func(ctx context.Context, ref string) error {
		_, err := cl.Pull(ctx, ref, client.WithPullUnpack, client.WithPullSnapshotter("lazyfs"), client.WithResolver(resolver))
		return err
	}
}

// containerdVersion returns the version of containerd c, without its "v".
func containerdVersion(ctx context.Context, t *testing.T, c *ctrtest.Containerd) string {
	t.Helper()
	cl, err := client.New(c.Address, client.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	v, err := cl.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(v.Version, "v")
}
