package node_test

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// TestLayerMountsPrefetchRegistryProfile: on a node that has learned
// nothing, the snapshotter's per-layer mounts of an image prefetch the
// profile attached to it in the registry (lazyfs record), and the layers of
// one image ask the registry for it once, not once per layer.
func TestLayerMountsPrefetchRegistryProfile(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	var layers [2][]toctest.File
	names := []string{"bin/app", "lib/a.so", "lib/b.so", "etc/conf"}
	for i, n := range names {
		layers[i%2] = append(layers[i%2], toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: toctest.Random(uint64(70+i), (i+1)*50<<10)})
	}
	ref := reg.PushConverted(t, "regprof", layers[0], layers[1])
	ctx := context.Background()

	// Learn a profile on one node, then attach it to the image.
	n1 := profileNode(t, t.TempDir(), node.ProfileConfig{NoFill: true})
	c1 := node.NewClient(serveControl(t, n1), 30*time.Second)
	dir := mountDir(t, "mnt")
	st, err := c1.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.ReadFile(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c1.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	prof, err := n1.Profiles().Load(digest.Digest(st.Digest))
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := ggcr.Head(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := profile.Push(ctx, r.Context(), *desc, prof); err != nil {
		t.Fatal(err)
	}

	// A node that learned nothing, reaching the registry under another name
	// through hosts.toml (server = "http://…", as a node with a plain-HTTP
	// registry mirror has it): the registry's profile, looked up once.
	hosts := t.TempDir()
	alias := "registry.lazyfs.test:5000"
	if err := os.MkdirAll(filepath.Join(hosts, alias), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hosts, alias, "hosts.toml"), []byte("server = \"http://"+reg.Host+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref = strings.Replace(ref, reg.Host, alias, 1)
	n2, err := node.New(ctx, node.Config{Root: t.TempDir(), CacheDir: node.MemoryCache, CacheSize: 1 << 30,
		Fetcher: remote.New(remote.WithHostsDir(hosts)), Profiles: node.ProfileConfig{Registry: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2.Close() })
	lookups := reg.Referrers.Load()
	img, err := n2.Fetcher().Resolve(ctx, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, l := range img.Layers {
		digests = append(digests, l.Digest.String())
	}
	ldirs := []string{mountDir(t, "layer0"), mountDir(t, "layer1")}
	var g errgroup.Group
	for i, d := range ldirs {
		g.Go(func() error { return n2.LayerFS().Mount(ctx, d, labels(ref, digests[i], digests...)) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	c2 := node.NewClient(serveControl(t, n2), 30*time.Second)
	var total int64
	for _, d := range ldirs {
		p := waitProgress(t, c2, d, func(p *node.Progress) bool { return p.Phase == "done" })
		if p.ProfileSource != "registry" || p.ProfileLocal != p.ProfileChunks {
			t.Fatalf("layer mount %s: %+v, want the registry's profile, all local", d, p)
		}
		total += p.ProfileChunks
	}
	if total != int64(prof.Chunks()) {
		t.Fatalf("the layer mounts prefetched %d profile chunks, the profile has %d", total, prof.Chunks())
	}
	if got := reg.Referrers.Load() - lookups; got != 1 {
		t.Fatalf("the registry was asked for the image's referrers %d times for one image's layers, want 1", got)
	}
	for _, d := range ldirs {
		if err := n2.LayerFS().Unmount(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}
