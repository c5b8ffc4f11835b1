package convert_test

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
)

// TestContainerdRunsConvertedImage: an unmodified containerd (1.6 from
// Debian) pulls a converted image, checks its diffIDs while unpacking it with
// its own zstd decoder, and runs it with runc.
func TestContainerdRunsConvertedImage(t *testing.T) {
	ctrtest.Skip(t)
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

	c := ctrtest.Start(t, nil)
	ctr := c.Ctr
	ref := reg.ref("ctr:lazy")
	if out, err := ctr("images", "pull", "--plain-http", ref); err != nil {
		t.Fatalf("ctr pull: %v\n%s", err, out)
	}
	out, err := ctr("run", "--rm", ref, fmt.Sprintf("lazyfs-convert-%d", os.Getpid()), "/bin/sh", "-c", "cat /etc/motd; busybox --help | head -1")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "converted by lazyfs") || !strings.Contains(out, "BusyBox") {
		t.Fatalf("container output: %q", out)
	}
}
