package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// profileNode starts a Node with its state (and so its learned profiles)
// in root and a fresh in-memory cache: a restart after the cache was wiped.
func profileNode(t *testing.T, root string, pc node.ProfileConfig) *node.Node {
	t.Helper()
	n, err := node.New(context.Background(), node.Config{Root: root, CacheDir: node.MemoryCache, CacheSize: 1 << 30, Fetcher: remote.New(), Profiles: pc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// waitProgress polls the node's list until the mount at dir has progress
// for which done holds (or the test's deadline: no wall-clock assertion).
func waitProgress(t *testing.T, c *node.Client, dir string, done func(*node.Progress) bool) *node.Progress {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		ms, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Dir == dir && m.Progress != nil && done(m.Progress) {
				return m.Progress
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("mount %s: progress never got there: %+v", dir, ms)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// gauges returns the node's per-mount gauges by metric name, summed.
func gauges(t *testing.T, n *node.Node) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, col := range n.Collectors() {
		if err := reg.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				got[mf.GetName()] += g.GetValue()
			}
		}
	}
	return got
}

// TestDaemonLearnsProfile: a merged mount served by the daemon over its
// control API records its first-read order, fills the rest of the image
// (on by default) with its progress in ls and the metrics, and stores the
// profile under the node's root on unmount; after a restart with a wiped
// cache, the next mount of the image prefetches that profile, after which
// the workload's files read without a registry request; the per-layer
// mounts (the snapshotter's) prefetch their own layer's part of it and
// together learn the image's next profile.
func TestDaemonLearnsProfile(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	files := map[string][]byte{}
	var layers [2][]toctest.File
	for i, name := range []string{"bin/app", "lib/a.so", "lib/b.so", "etc/conf", "share/unused", "lib/c.so"} {
		files[name] = toctest.Random(uint64(40+i), (i+1)*60<<10)
		layers[i%2] = append(layers[i%2], toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Data: files[name]})
	}
	ref := reg.PushConverted(t, "learn", layers[0], layers[1])
	workload := []string{"etc/conf", "bin/app", "lib/c.so", "lib/a.so"}
	read := func(dir, name string) {
		t.Helper()
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, files[name]) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
	ctx := context.Background()
	root := t.TempDir()

	// First start: nothing learned; the daemon's default fill fetches the rest.
	n1 := profileNode(t, root, node.ProfileConfig{})
	c1 := node.NewClient(serveControl(t, n1), 30*time.Second)
	dir := mountDir(t, "mnt")
	st, err := c1.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if st.ProfileSource != "" {
		t.Fatalf("first mount prefetches a %q profile: nothing was learned yet", st.ProfileSource)
	}
	for _, name := range workload {
		read(dir, name)
	}
	p := waitProgress(t, c1, dir, func(p *node.Progress) bool { return p.Phase == "done" })
	if p.ImageChunks != int64(st.Chunks) || p.ImageLocal != p.ImageChunks || p.ProfileChunks != 0 {
		t.Fatalf("after fill: %+v, want all %d chunks local and no profile", p, st.Chunks)
	}
	if g := gauges(t, n1); g["lazyfs_node_mount_chunks"] != float64(st.Chunks) || g["lazyfs_node_mount_local_chunks"] != float64(st.Chunks) {
		t.Fatalf("gauges %v, want %d chunks, all local", g, st.Chunks)
	}
	if err := c1.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	prof, err := n1.Profiles().Load(digest.Digest(st.Digest))
	if err != nil {
		t.Fatalf("no profile learned under %s: %v", root, err)
	}
	if got := prof.Paths(); !slices.Equal(got, workload) {
		t.Fatalf("learned %v, want %v", got, workload)
	}
	if _, err := os.Stat(filepath.Join(root, "profiles")); err != nil {
		t.Fatalf("the node's profile store is not under its root: %v", err)
	}
	n1.Close()

	// Restart with a wiped cache; fill off, so that only the profile is fetched.
	n2 := profileNode(t, root, node.ProfileConfig{NoFill: true})
	c2 := node.NewClient(serveControl(t, n2), 30*time.Second)
	st, err = c2.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if st.ProfileSource != "node" {
		t.Fatalf("second cold mount: profile source %q, want the node's", st.ProfileSource)
	}
	p = waitProgress(t, c2, dir, func(p *node.Progress) bool { return p.Phase == "done" })
	if p.ProfileSource != "node" || p.ProfileChunks != int64(prof.Chunks()) || p.ProfileLocal != p.ProfileChunks || p.ImageLocal >= p.ImageChunks {
		t.Fatalf("after the profile: %+v, want its %d chunks local and not the whole image", p, prof.Chunks())
	}
	if g := gauges(t, n2); g["lazyfs_node_mount_profile_chunks"] != float64(prof.Chunks()) || g["lazyfs_node_mount_profile_local_chunks"] != float64(prof.Chunks()) {
		t.Fatalf("gauges %v, want %d profile chunks, all local", g, prof.Chunks())
	}
	blobs := reg.Blobs.Load()
	for _, name := range workload {
		read(dir, name)
	}
	if got := reg.Blobs.Load(); got != blobs {
		t.Fatalf("the prefetched workload made %d blob requests, want 0", got-blobs)
	}
	read(dir, "share/unused")
	if reg.Blobs.Load() == blobs {
		t.Fatal("an unprofiled file read without a blob request: the check above proves nothing")
	}
	if err := c2.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	// Recording again replaces the profile: now with share/unused.
	if prof, err = n2.Profiles().Load(digest.Digest(st.Digest)); err != nil || !slices.Equal(prof.Paths(), append(workload, "share/unused")) {
		t.Fatalf("relearned profile: %v %v", prof, err)
	}

	// The snapshotter's per-layer mounts: layer 1's prefetches that layer's
	// spans of the learned profile; their reads are recorded into one
	// profile of the image, stored when the last of them is unmounted.
	n3 := profileNode(t, root, node.ProfileConfig{})
	img, err := n3.Fetcher().Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, l := range img.Layers {
		digests = append(digests, l.Digest.String())
	}
	want := 0
	for _, s := range prof.Spans {
		if prof.Layers[s.Layer] == digests[1] {
			want += s.N
		}
	}
	if want == 0 || want == prof.Chunks() {
		t.Fatalf("layer 1 holds %d of the profile's %d chunks: the test needs a profile across both layers", want, prof.Chunks())
	}
	ldirs := []string{mountDir(t, "layer0"), mountDir(t, "layer1")}
	for i, d := range ldirs {
		if err := n3.LayerFS().Mount(ctx, d, labels(ref, digests[i], digests...)); err != nil {
			t.Fatal(err)
		}
	}
	c3 := node.NewClient(serveControl(t, n3), 30*time.Second)
	p = waitProgress(t, c3, ldirs[1], func(p *node.Progress) bool { return p.Phase == "done" })
	if p.ProfileSource != "node" || p.ProfileChunks != int64(want) || p.ProfileLocal != p.ProfileChunks {
		t.Fatalf("per-layer mount: %+v, want layer 1's %d profile chunks local", p, want)
	}
	read(ldirs[0], "lib/b.so")
	read(ldirs[1], "etc/conf")
	if err := n3.LayerFS().Unmount(ctx, ldirs[1]); err != nil {
		t.Fatal(err)
	}
	if again, err := n3.Profiles().Load(digest.Digest(st.Digest)); err != nil || !slices.Equal(again.Paths(), prof.Paths()) {
		t.Fatalf("the profile changed while a layer of the image is still mounted: %v %v", again, err)
	}
	if err := n3.LayerFS().Unmount(ctx, ldirs[0]); err != nil {
		t.Fatal(err)
	}
	got, err := n3.Profiles().Load(digest.Digest(st.Digest))
	if err != nil || !slices.Equal(got.Paths(), []string{"lib/b.so", "etc/conf"}) {
		t.Fatalf("profile learned by the layer mounts: %v %v", got, err)
	}
	for _, s := range got.Spans {
		if want := map[string]string{"lib/b.so": digests[0], "etc/conf": digests[1]}[s.Path]; got.Layers[s.Layer] != want {
			t.Fatalf("span %+v names layer %s, want %s", s, got.Layers[s.Layer], want)
		}
	}
}
