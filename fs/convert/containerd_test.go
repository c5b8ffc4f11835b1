package convert_test

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestContainerdRunsConvertedImage: an unmodified containerd (1.6 from
// Debian) pulls a converted image, checks its diffIDs while unpacking it with
// its own zstd decoder, and runs it with runc.
func TestContainerdRunsConvertedImage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	for _, bin := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install containerd runc)", bin)
		}
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static")
	}
	reg := newRegistry(t)
	files := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, Data: busybox},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777}},
	}
	img, err := mutate.AppendLayers(empty.Image,
		tarLayer(t, files, types.DockerLayer),
		tarLayer(t, []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/motd", Mode: 0o644}, Data: []byte("converted by lazyfs\n")}}, types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.ref("ctr:plain"), img)
	if _, err := convert.Image(context.Background(), reg.ref("ctr:plain"), reg.ref("ctr:lazy"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "opt"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := exec.CommandContext(ctx, "containerd", "--config", filepath.Join(dir, "config.toml"))
	logf, _ := os.Create(filepath.Join(dir, "containerd.log"))
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Wait(); logf.Close() })
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"--address", sock, "--namespace", "lazyfs-test"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for i := 0; ; i++ {
		if _, err := ctr("version"); err == nil {
			break
		} else if i > 100 {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			t.Fatalf("containerd did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ref := reg.ref("ctr:lazy")
	if out, err := ctr("images", "pull", "--plain-http", ref); err != nil {
		t.Fatalf("ctr pull: %v\n%s", err, out)
	}
	out, err := ctr("run", "--rm", ref, "lazyfs-test-1", "/bin/sh", "-c", "cat /etc/motd; busybox --help | head -1")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "converted by lazyfs") || !strings.Contains(out, "BusyBox") {
		t.Fatalf("container output: %q", out)
	}
}
