package node_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
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
	// The same with NoLearn (lazyfs run --profile-dir ""): no profile
	// store, the registry's profile still prefetched, nothing learned.
	for _, pc := range []node.ProfileConfig{{Registry: true}, {Registry: true, NoLearn: true}} {
		t.Run(fmt.Sprintf("NoLearn=%v", pc.NoLearn), func(t *testing.T) {
			root := t.TempDir()
			n2, err := node.New(ctx, node.Config{Root: root, CacheDir: node.MemoryCache, CacheSize: 1 << 30,
				Fetcher: remote.New(remote.WithHostsDir(hosts)), Profiles: pc})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { n2.Close() })
			lookups := reg.Referrers.Load()
			_, digests := resolveLayers(t, n2, ref)
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
			if pc.NoLearn {
				if n2.Profiles() != nil {
					t.Fatal("a node with NoLearn has a profile store")
				}
				if ents, _ := os.ReadDir(filepath.Join(root, "profiles")); len(ents) > 0 {
					t.Fatalf("a node with NoLearn stored %d profiles", len(ents))
				}
			}
		})
	}
}

// TestManifestProfile: a profile carried in the image manifest (lazyfs
// convert --record, profile.Embed) is prefetched without asking the
// registry for referrers; one whose annotations do not match its blob is
// ignored with a warning and the referrers' profile is used instead.
func TestManifestProfile(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	var layers [2][]toctest.File
	names := []string{"bin/app", "lib/a.so", "lib/b.so", "etc/conf"}
	for i, n := range names {
		layers[i%2] = append(layers[i%2], toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, Data: toctest.Random(uint64(90+i), (i+1)*50<<10)})
	}
	ref := reg.PushConverted(t, "manprof", layers[0], layers[1])
	ctx := context.Background()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := ggcr.Head(r)
	if err != nil {
		t.Fatal(err)
	}
	// The profile a node learns from reading the four files.
	n0 := profileNode(t, t.TempDir(), node.ProfileConfig{NoFill: true})
	c0 := node.NewClient(serveControl(t, n0), 30*time.Second)
	dir0 := mountDir(t, "learn")
	st, err := c0.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir0})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := os.ReadFile(filepath.Join(dir0, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c0.Unmount(ctx, dir0); err != nil {
		t.Fatal(err)
	}
	prof, err := n0.Profiles().Load(digest.Digest(st.Digest))
	if err != nil || len(prof.Spans) < 2 {
		t.Fatalf("learned %v %v, want a profile of several spans", prof, err)
	}
	tag, err := name.NewTag(strings.Replace(ref, ":lazy", ":profiled", 1))
	if err != nil {
		t.Fatal(err)
	}
	e, err := profile.Embed(ctx, tag, desc.Digest, v1.Hash{}, prof)
	if err != nil {
		t.Fatal(err)
	}
	mount := func(ref string) (*node.Progress, int64) {
		t.Helper()
		n := profileNode(t, t.TempDir(), node.ProfileConfig{NoFill: true, Registry: true})
		c := node.NewClient(serveControl(t, n), 30*time.Second)
		dir := mountDir(t, "mnt")
		lookups := reg.Referrers.Load()
		if _, err := c.MountImage(ctx, node.MountRequest{Ref: ref, Dir: dir}); err != nil {
			t.Fatal(err)
		}
		p := waitProgress(t, c, dir, func(p *node.Progress) bool { return p.Phase == "done" })
		if err := c.Unmount(ctx, dir); err != nil {
			t.Fatal(err)
		}
		return p, reg.Referrers.Load() - lookups
	}
	p, lookups := mount(tag.String())
	if p.ProfileSource != "registry" || p.ProfileChunks != int64(prof.Chunks()) || p.ProfileLocal != p.ProfileChunks {
		t.Fatalf("mount of the image carrying a profile: %+v, want its %d chunks prefetched", p, prof.Chunks())
	}
	if lookups != 0 {
		t.Fatalf("the registry was asked for referrers %d times: the manifest's profile comes first", lookups)
	}

	// The same manifest with a size annotation that does not match its
	// blob, and another profile as its referrer: the referrer's is used.
	raw, err := ggcr.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	m.Annotations[toc.AnnotationProfileSize] = strconv.FormatInt(e.Blob.Size-1, 10)
	bad, err := mutateManifest(tag.Context().Tag("badsize"), m)
	if err != nil {
		t.Fatal(err)
	}
	small := *prof
	small.Spans = prof.Spans[:1]
	if _, err := profile.Push(ctx, tag.Context(), bad, &small); err != nil {
		t.Fatal(err)
	}
	p, lookups = mount(tag.Context().Tag("badsize").String())
	if p.ProfileSource != "registry" || p.ProfileChunks != int64(small.Chunks()) || lookups != 1 {
		t.Fatalf("mount of an image whose manifest's profile is bad: %+v after %d referrers lookups, want the referrer's %d chunks", p, lookups, small.Chunks())
	}
}

// mutateManifest pushes m to tag and returns its descriptor.
func mutateManifest(tag name.Tag, m v1.Manifest) (v1.Descriptor, error) {
	raw, err := json.Marshal(&m)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := ggcr.Put(tag, rawManifest(raw)); err != nil {
		return v1.Descriptor{}, err
	}
	d, err := ggcr.Head(tag)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return *d, nil
}

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
