package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
)

// TestCRIPassesLabels: containerd's CRI plugin, configured as
// docs/kubernetes.md says (snapshotter = "lazyfs",
// disable_snapshot_annotations = false), pulls a converted image for the
// kubelet with every layer mounted lazily and no lazyfs pull involved.
func TestCRIPassesLabels(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	pushCRIImage(ctx, t, r, busybox, "pulled by CRI\n", 7)
	d := newDaemon(t, bin)
	c := ctrtest.StartWith(t, ctrtest.Options{
		Proxies: map[string]string{"lazyfs": d.sock},
		CRI: fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "lazyfs"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
  endpoint = ["http://%s"]
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "lazyfs"
  disable_snapshot_annotations = false
`, r.host, r.host),
	})
	images := criImages(t, c)
	ref := r.ref("lazy/cri:1")
	resp, err := criPull(ctx, images, ref)
	if err != nil {
		t.Fatalf("CRI PullImage: %v\n%s", err, d.logTail())
	}
	t.Logf("CRI pulled %s as %s", ref, resp.ImageRef)
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers after a CRI pull: %v, want 2 (fallbacks: %s)\n%s", got,
			metricLines(t, d.metricsURL, "lazyfs_snapshotter_fallback_layers_total{"), d.logTail())
	}
	if size := imageBytes(t, ref); r.fetched("lazy/cri") > size/4 {
		t.Errorf("CRI pull fetched %d of %d bytes", r.fetched("lazy/cri"), size)
	}
	k8s := &ctrtest.Containerd{Address: c.Address, Namespace: "k8s.io"}
	out, err := k8s.Ctr("snapshots", "--snapshotter", "lazyfs", "ls")
	if err != nil || strings.Count(out, "Committed") != 2 {
		t.Errorf("k8s.io snapshots: %v\n%s", err, out)
	}
	if _, err := images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Errorf("CRI RemoveImage: %v", err)
	}
}

// TestCRIWithoutAnnotations: containerd's CRI plugin as configured out of
// the box (disable_snapshot_annotations = true: on containerd 1.x no image
// labels reach the snapshotter), with its registry hosts in a config_path directory that
// the daemon reads as its hosts_dir, pulls a converted image from a
// registry on a port other than 443 with every layer mounted lazily: the
// snapshotter finds the image in containerd's content store and the
// registry's port from the HOST:PORT entry of that directory.
func TestCRIWithoutAnnotations(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	pushCRIImage(ctx, t, r, busybox, "pulled by CRI without labels\n", 8)
	hosts := t.TempDir()
	writeHostsTOML(t, hosts, r.host, fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+r.host, "http://"+r.host))
	d := prepareDaemon(t, bin)
	c := ctrtest.StartWith(t, ctrtest.Options{
		Proxies: map[string]string{"lazyfs": d.sock},
		CRI: fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "lazyfs"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "lazyfs"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = %q
`, hosts, hosts),
	})
	d.startAfter(c, hosts)
	ref := r.ref("lazy/cri:1")
	if _, err := criPull(ctx, criImages(t, c), ref); err != nil {
		t.Fatalf("CRI PullImage: %v\n%s", err, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers after a CRI pull without annotations: %v, want 2 (fallbacks: %s)\n%s", got,
			metricLines(t, d.metricsURL, "lazyfs_snapshotter_fallback_layers_total{"), d.logTail())
	}
	// containerd 1.x's CRI pulls by itself and passes no labels: the layers
	// were located. 2.x's pulls through the transfer service, whose unpack
	// passes them (the proxy plugin exports enable_remote_snapshot_annotations).
	want := 0.0
	if v := containerdVersion(ctx, t, c); strings.HasPrefix(v, "1.") {
		want = 2
	}
	if got := d.metric("lazyfs_snapshotter_located_layers_total"); got != want {
		t.Errorf("layers located in containerd's content store: %v, want %v", got, want)
	}
	if size := imageBytes(t, ref); r.fetched("lazy/cri") > size/4 {
		t.Errorf("CRI pull fetched %d of %d bytes", r.fetched("lazy/cri"), size)
	}
}

// criImages returns a CRI image service client of containerd c.
func criImages(t *testing.T, c *ctrtest.Containerd) runtimeapi.ImageServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewImageServiceClient(conn)
}

// criPull pulls ref through CRI, waiting up to 30s for the CRI plugin,
// which initialises after containerd's socket answers.
func criPull(ctx context.Context, images runtimeapi.ImageServiceClient, ref string) (*runtimeapi.PullImageResponse, error) {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err == nil || time.Now().After(deadline) || !strings.Contains(err.Error(), "Unimplemented") && !strings.Contains(err.Error(), "not initialized") {
			return resp, err
		}
	}
}

// pushCRIImage pushes src/cri:1 to r (busybox, then /etc/motd and an
// 8 MiB /etc/big of random bytes from seed) and converts it to lazy/cri:1.
func pushCRIImage(ctx context.Context, t *testing.T, r *countingRegistry, busybox []byte, motd string, seed uint64) {
	t.Helper()
	push(t, r.ref("src/cri:1"),
		busyboxLayer(t, busybox),
		layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte(motd)), reg("etc/big", 0o644, toctest.Random(seed, 8<<20))}))
	if _, err := convert.Image(ctx, r.ref("src/cri:1"), r.ref("lazy/cri:1")); err != nil {
		t.Fatal(err)
	}
}
