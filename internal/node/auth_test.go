package node_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// TestNodeCredentialsFromDockerConfig: a Node that builds its own fetcher
// (the daemon, lazyfs mount standalone) sends a private registry the
// credentials of the Docker config (DOCKER_CONFIG), the same source lazyfs
// pull uses, and serves the image lazily through a real FUSE mount; without
// them the mount fails as unauthorized.
func TestNodeCredentialsFromDockerConfig(t *testing.T) {
	needFUSE(t)
	var locked atomic.Bool
	reg := imagetest.New(t, registrytest.WithMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); locked.Load() && (!ok || u != "alice" || p != "s3cret") {
				w.Header().Set("WWW-Authenticate", `Basic realm="lazyfs-test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	data := toctest.Random(31, 300<<10)
	ref := reg.PushConverted(t, "private/app", []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "data.bin", Mode: 0o644}, Data: data},
	})
	locked.Store(true)

	setDockerConfig := func(cfg string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", dir)
	}
	newOwnFetcherNode := func() *node.Node {
		n, err := node.New(context.Background(), node.Config{Root: t.TempDir(), CacheDir: node.MemoryCache, CacheSize: 1 << 30,
			Profiles: node.ProfileConfig{NoFill: true}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	setDockerConfig(`{}`)
	if _, err := newOwnFetcherNode().MountImage(ctx, ref, mountDir(t, "anon"), node.ImageOptions{}); !errors.Is(err, remote.ErrUnauthorized) {
		t.Fatalf("mount without credentials: %v, want ErrUnauthorized", err)
	}

	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	setDockerConfig(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, auth))
	dir := mountDir(t, "mnt")
	n := newOwnFetcherNode()
	if _, err := n.MountImage(ctx, ref, dir, node.ImageOptions{}); err != nil {
		t.Fatalf("mount with credentials in DOCKER_CONFIG: %v", err)
	}
	t.Cleanup(func() { n.Unmount(context.Background(), dir) })
	if got, err := os.ReadFile(filepath.Join(dir, "data.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through the lazy mount: %d bytes, %v", len(got), err)
	}
}
