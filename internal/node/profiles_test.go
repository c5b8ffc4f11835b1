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
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// resolveLayers resolves ref through n's fetcher and returns the image and
// its layers' digests, in order (what per-layer mounts' labels name).
func resolveLayers(t *testing.T, n *node.Node, ref string) (*remote.Image, []string) {
	t.Helper()
	img, err := n.Fetcher().Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	digests := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		digests[i] = l.Digest.String()
	}
	return img, digests
}

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
	// Autosave off: what is checked below is that unmounting one layer does
	// not store the image's profile (TestProfileSurvivesKill checks that
	// autosave stores it while the layers are mounted).
	n3 := profileNode(t, root, node.ProfileConfig{Autosave: profile.AutosaveOptions{Off: true}})
	_, digests := resolveLayers(t, n3, ref)
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

// TestProfileSurvivesKill: what merged and per-layer mounts learn is stored
// while they are still mounted (after the recording has been idle), so a
// daemon killed before unmounting has still learned it: a second node on
// the same state, started while the first one's mounts are up (as after a
// SIGKILL: nothing was unmounted), prefetches the learned profile on its
// first cold mount.
func TestProfileSurvivesKill(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	files := map[string][]byte{}
	var layers [2][]toctest.File
	for i, name := range []string{"bin/app", "lib/a.so", "lib/b.so", "etc/conf"} {
		files[name] = toctest.Random(uint64(140+i), (i+1)*60<<10)
		layers[i%2] = append(layers[i%2], toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Data: files[name]})
	}
	ref := reg.PushConverted(t, "killed", layers[0], layers[1])
	ctx := context.Background()
	autosave := profile.AutosaveOptions{Idle: 20 * time.Millisecond, Interval: time.Hour}
	// waitLearned polls the store under root until it holds a profile of
	// paths (the test's deadline, not a wall-clock assertion).
	waitLearned := func(t *testing.T, n *node.Node, dg string, paths []string) *profile.Profile {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		for {
			if p, err := n.Profiles().Load(digest.Digest(dg)); err == nil && slices.Equal(p.Paths(), paths) {
				return p
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no profile of %v stored while mounted", paths)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	// coldMount mounts the image on a fresh node over root and returns the
	// progress of its profile prefetch.
	coldMount := func(t *testing.T, root string) *node.Progress {
		t.Helper()
		n := profileNode(t, root, node.ProfileConfig{NoFill: true})
		c := node.NewClient(serveControl(t, n), 30*time.Second)
		dir := mountDir(t, "cold")
		if _, err := c.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir}); err != nil {
			t.Fatal(err)
		}
		p := waitProgress(t, c, dir, func(p *node.Progress) bool { return p.Phase == "done" })
		if err := c.Unmount(ctx, dir); err != nil {
			t.Fatal(err)
		}
		return p
	}
	read := func(t *testing.T, dir, name string) {
		t.Helper()
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, files[name]) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
	}

	t.Run("merged", func(t *testing.T) {
		root := t.TempDir()
		n1 := profileNode(t, root, node.ProfileConfig{NoFill: true, Autosave: autosave})
		dir := mountDir(t, "mnt")
		m, err := n1.MountImage(ctx, ref, dir, node.ImageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		read(t, dir, "etc/conf")
		read(t, dir, "bin/app")
		prof := waitLearned(t, n1, m.Image().Digest.String(), []string{"etc/conf", "bin/app"})
		p := coldMount(t, root) // n1's mount is still up
		if p.ProfileSource != "node" || p.ProfileChunks != int64(prof.Chunks()) || p.ProfileLocal != p.ProfileChunks {
			t.Fatalf("cold mount after the kill: %+v, want the %d chunks learned", p, prof.Chunks())
		}
	})
	t.Run("layers", func(t *testing.T) {
		root := t.TempDir()
		n1 := profileNode(t, root, node.ProfileConfig{Autosave: autosave})
		img, digests := resolveLayers(t, n1, ref)
		ldirs := []string{mountDir(t, "layer0"), mountDir(t, "layer1")}
		for i, d := range ldirs {
			if err := n1.LayerFS().Mount(ctx, d, labels(ref, digests[i], digests...)); err != nil {
				t.Fatal(err)
			}
		}
		read(t, ldirs[1], "lib/a.so")
		read(t, ldirs[0], "lib/b.so")
		prof := waitLearned(t, n1, img.Digest.String(), []string{"lib/a.so", "lib/b.so"})
		p := coldMount(t, root)
		if p.ProfileSource != "node" || p.ProfileChunks != int64(prof.Chunks()) || p.ProfileLocal != p.ProfileChunks {
			t.Fatalf("cold mount after the kill: %+v, want the %d chunks the layer mounts learned", p, prof.Chunks())
		}
	})
}

// TestMountRequestFill: a mount request's fill field overrides the node's
// default both ways; without it the node's default applies.
func TestMountRequestFill(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	var files []toctest.File
	for i, name := range []string{"bin/app", "lib/a.so", "etc/conf"} {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, Data: toctest.Random(uint64(160+i), (i+1)*70<<10)})
	}
	ref := reg.PushConverted(t, "fillreq", files)
	ctx := context.Background()
	on, off := true, false
	for _, c := range []struct {
		name   string
		node   node.ProfileConfig
		fill   *bool
		filled bool
	}{
		{"default on", node.ProfileConfig{}, nil, true},
		{"off by request", node.ProfileConfig{}, &off, false},
		{"default off", node.ProfileConfig{NoFill: true}, nil, false},
		{"on by request", node.ProfileConfig{NoFill: true}, &on, true},
		{"on by request, profiles off", node.ProfileConfig{Off: true}, &on, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := profileNode(t, t.TempDir(), c.node)
			cl := node.NewClient(serveControl(t, n), 30*time.Second)
			dir := mountDir(t, "mnt")
			st, err := cl.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir, Fill: c.fill})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Unmount(ctx, dir)
			if !c.filled {
				// Nothing learned and no fill: the mount prefetches nothing.
				if st.Prefetch != nil {
					t.Fatalf("mount prefetches %+v, want no fill", st.Prefetch)
				}
				ms, err := cl.List(ctx)
				if err != nil || len(ms) != 1 || ms[0].Progress != nil {
					t.Fatalf("ls: %+v %v, want a mount without progress", ms, err)
				}
				return
			}
			p := waitProgress(t, cl, dir, func(p *node.Progress) bool { return p.Phase == "done" })
			if p.ImageChunks != int64(st.Chunks) || p.ImageLocal != p.ImageChunks {
				t.Fatalf("filled mount: %+v, want all %d chunks local", p, st.Chunks)
			}
		})
	}
}
