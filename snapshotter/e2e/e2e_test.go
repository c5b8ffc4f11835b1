// Package e2e_test runs lazyfs-snapshotter end to end: a private containerd
// with the daemon as its proxy snapshotter, a real registry on 127.0.0.1,
// `lazyfs pull` (package pull) and `ctr run` with runc.
package e2e_test

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/registrytest"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

// countingRegistry is ggcr's registry (blobs on disk) that counts the blob
// bytes it serves per repository: the bytes a node fetched.
type countingRegistry struct {
	host  string
	mu    sync.Mutex
	bytes map[string]int64
}

func newRegistry(t *testing.T) *countingRegistry {
	r := &countingRegistry{bytes: map[string]int64{}}
	reg := registrytest.New(t, registrytest.WithMiddleware(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			repo, _, isBlob := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), "/blobs/sha256:")
			if req.Method == http.MethodGet && isBlob {
				cw := &countingWriter{ResponseWriter: w}
				h.ServeHTTP(cw, req)
				r.mu.Lock()
				r.bytes[repo] += cw.n
				r.mu.Unlock()
				return
			}
			h.ServeHTTP(w, req)
		})
	}))
	r.host = reg.Host
	return r
}

func (r *countingRegistry) ref(s string) string { return r.host + "/" + s }

func (r *countingRegistry) fetched(repo string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes[repo]
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func layer(t *testing.T, files []toctest.File) v1.Layer {
	t.Helper()
	b := toctest.Tar(t, files)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(b))), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func reg(name string, mode int64, data []byte) toctest.File {
	return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, Data: data}
}

func dir(name string) toctest.File {
	return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func push(t *testing.T, ref string, layers ...v1.Layer) {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// needE2E skips the test where containerd, runc, FUSE or busybox-static
// are missing (CI installs them), and returns the built lazyfs-snapshotter
// and busybox.
func needE2E(t *testing.T) (bin string, busybox []byte) {
	t.Helper()
	ctrtest.Skip(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static")
	}
	return buildDaemon(t), busybox
}

// busyboxLayer is a layer of /bin/busybox with /bin/sh linked to it.
func busyboxLayer(t *testing.T, busybox []byte) v1.Layer {
	t.Helper()
	return layer(t, []toctest.File{dir("bin/"), reg("bin/busybox", 0o755, busybox), symlink("bin/sh", "busybox")})
}

// corruptTOC rewrites ref's manifest so that its last layer's TOC digest
// annotation names other bytes: the TOC no longer verifies, the blob itself
// (and the diffID) is unchanged.
func corruptTOC(t *testing.T, ref string) {
	t.Helper()
	editLastLayer(t, ref, func(_ name.Reference, ld map[string]any) {
		ann := ld["annotations"].(map[string]any)
		if _, ok := ann[toc.AnnotationTOCDigest]; !ok {
			t.Fatalf("converted layer has no %s annotation: %v", toc.AnnotationTOCDigest, ann)
		}
		ann[toc.AnnotationTOCDigest] = "sha256:" + strings.Repeat("0", 64)
	})
}

// editLastLayer lets edit change the descriptor of ref's last layer (as
// JSON, so that any field can be made wrong) and puts the manifest back
// under ref with its media type.
func editLastLayer(t *testing.T, ref string, edit func(r name.Reference, ld map[string]any)) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	layers := m["layers"].([]any)
	edit(r, layers[len(layers)-1].(map[string]any))
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r, rawManifest{b: b, mt: desc.MediaType}); err != nil {
		t.Fatal(err)
	}
}

type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.b, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// daemon is a lazyfs-snapshotter process.
type daemon struct {
	t                   *testing.T
	bin, root, sock     string
	control, metricsURL string
	metricsAddr         string
	args                []string // extra arguments ("holder" first for the holder)
	ready               string   // socket that answers when it is ready (default sock)
	logName             string
	cmd                 *exec.Cmd
	exited              chan struct{}
	log                 *os.File
}

// buildDaemon builds cmd/lazyfs-snapshotter (and cmd/lazyfs, at build.cli)
// once per test binary.
func buildDaemon(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			if _, err := os.Stat("/usr/local/go/bin/go"); err != nil {
				build.skip = "needs the go tool to build lazyfs-snapshotter"
				return
			}
			gobin = "/usr/local/go/bin/go"
		}
		dir, err := os.MkdirTemp("", "lazyfs-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		build.path = filepath.Join(dir, "lazyfs-snapshotter")
		build.cli = filepath.Join(dir, "lazyfs")
		if b, err := exec.Command(gobin, "build", "-o", dir+"/", "github.com/lazyfs/lazyfs/cmd/lazyfs-snapshotter", "github.com/lazyfs/lazyfs/cmd/lazyfs").CombinedOutput(); err != nil {
			build.err = fmt.Errorf("build lazyfs-snapshotter and lazyfs: %v\n%s", err, b)
		}
	})
	if build.skip != "" {
		t.Skip(build.skip)
	}
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

var build struct {
	once                 sync.Once
	dir, path, cli, skip string
	err                  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newDaemon(t *testing.T, bin string) *daemon {
	d := prepareDaemon(t, bin)
	d.start()
	return d
}

// prepareDaemon is newDaemon without the start: set d.args, then d.start().
func prepareDaemon(t *testing.T, bin string) *daemon {
	base, err := os.MkdirTemp("", fmt.Sprintf("lazyfs-e2e-snap-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		t:           t,
		bin:         bin,
		root:        filepath.Join(base, "root"),
		sock:        filepath.Join(base, "run", "snapshotter.sock"),
		control:     filepath.Join(base, "run", "control.sock"),
		metricsAddr: freePort(t),
	}
	d.metricsURL = "http://" + d.metricsAddr + "/metrics"
	t.Cleanup(func() {
		if d.cmd != nil {
			d.stop()
		}
		unmountUnder(t, base)
		os.RemoveAll(base)
	})
	return d
}

// newHolderPair starts `lazyfs-snapshotter holder` and a snapshotter with
// --holder that uses it, sharing one root and control socket.
func newHolderPair(t *testing.T, bin string) (holder, front *daemon) {
	base, err := os.MkdirTemp("", fmt.Sprintf("lazyfs-e2e-snap-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) *daemon {
		d := &daemon{
			t:           t,
			bin:         bin,
			root:        filepath.Join(base, "root"),
			sock:        filepath.Join(base, "run", "snapshotter.sock"),
			control:     filepath.Join(base, "run", "control.sock"),
			metricsAddr: freePort(t),
			logName:     name + ".log",
		}
		d.metricsURL = "http://" + d.metricsAddr + "/metrics"
		return d
	}
	holder, front = mk("holder"), mk("front")
	holder.args = []string{"holder", "--holder-metrics-address", holder.metricsAddr, "--metrics-address", ""}
	holder.ready = holder.control
	front.args = []string{"--holder"}
	t.Cleanup(func() {
		front.stop()
		holder.stop()
		unmountUnder(t, base)
		os.RemoveAll(base)
	})
	holder.start()
	front.start()
	return holder, front
}

func (d *daemon) start() {
	t := d.t
	t.Helper()
	var err error
	d.log, err = os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", "", "--root", d.root, "--address", d.sock, "--control-address", d.control,
		"--metrics-address", d.metricsAddr, "--cache-size", "1GiB", "--log-level", "debug"}
	if len(d.args) > 0 && d.args[0] == "holder" {
		args = append([]string{"holder"}, append(args, d.args[1:]...)...)
	} else {
		args = append(args, d.args...)
	}
	d.cmd = exec.Command(d.bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func(c *exec.Cmd, ch chan struct{}) { c.Wait(); close(ch) }(d.cmd, d.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := d.sock
		if d.ready != "" {
			ready = d.ready
		}
		if c, err := net.Dial("unix", ready); err == nil {
			c.Close()
			if resp, err := http.Get(d.metricsURL); err == nil {
				resp.Body.Close()
				return
			}
		}
		select {
		case <-d.exited:
			t.Fatalf("lazyfs-snapshotter exited:\n%s", d.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lazyfs-snapshotter not ready within 30s:\n%s", d.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) logPath() string {
	name := d.logName
	if name == "" {
		name = "daemon.log"
	}
	return filepath.Join(filepath.Dir(d.root), name)
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.logPath())
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// kill9 kills the daemon without a chance to clean up.
func (d *daemon) kill9() {
	d.cmd.Process.Kill()
	<-d.exited
	d.log.Close()
}

func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.ProcessState != nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		d.t.Errorf("lazyfs-snapshotter did not stop within 20s of SIGTERM")
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.log.Close()
}

// proxyRedialing reports whether err is containerd still failing to reach
// a restarted snapshotter's socket: "Unavailable" (containerd 1.6), or
// "connection error ... connection refused" (2.x), until its proxy
// connection redials.
// startAfter starts d for containerd c, which runs already
// (--containerd-address, --hosts-dir hosts), and waits until c reaches it:
// c's proxy connection backs off (up to 3 s) between redials, so the first
// calls after d.start() may find it unavailable.
func (d *daemon) startAfter(c *ctrtest.Containerd, hosts string) {
	t := d.t
	t.Helper()
	d.args = []string{"--containerd-address", c.Address, "--hosts-dir", hosts}
	d.start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := c.Ctr("snapshots", "--snapshotter", "lazyfs", "ls")
		if err == nil {
			return
		}
		if !proxyRedialing(fmt.Errorf("%w: %s", err, out)) || time.Now().After(deadline) {
			t.Fatalf("containerd does not reach the snapshotter: %v\n%s\n%s", err, out, d.logTail())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func proxyRedialing(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "unavailable") || strings.Contains(m, "connection refused") || strings.Contains(m, "connection error")
}

// metric sums the samples of a metric whose line starts with prefix (a name,
// or a name and the start of its labels).
func (d *daemon) metric(prefix string) float64 {
	d.t.Helper()
	resp, err := http.Get(d.metricsURL)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func unmountUnder(t *testing.T, dir string) {
	ms := mountsUnder(t, dir)
	for i := len(ms) - 1; i >= 0; i-- {
		syscall.Unmount(ms[i], syscall.MNT_DETACH)
	}
}

func md5hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

// TestContainerdLazyPull is the node story: pull a converted image through
// the daemon, run it, and check what it fetched, fallbacks, a burst of
// containers and a kill -9 of the daemon.
func TestContainerdLazyPull(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	r := newRegistry(t)
	big := toctest.Random(1, 24<<20)  // never read: the lazy pull must not fetch it
	burst := toctest.Random(2, 3<<20) // read by 8 containers at once
	later := toctest.Random(3, 1<<20) // read after the daemon was killed
	base := busyboxLayer(t, busybox)
	app := layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("served lazily by lazyfs\n")),
		dir("data/"), reg("data/big", 0o644, big), reg("data/burst", 0o644, burst), reg("data/later", 0o644, later)})
	push(t, r.ref("src/app:1"), base, app)
	if _, err := convert.Image(ctx, r.ref("src/app:1"), r.ref("lazy/app:1"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	// A second image whose own layer carries a copy of data/burst: once the
	// first image's containers read it, its chunks are in the node's cache.
	push(t, r.ref("src/other:1"), base, layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("another image\n")),
		dir("data/"), reg("data/copy", 0o644, burst)}))
	if _, err := convert.Image(ctx, r.ref("src/other:1"), r.ref("other/app:1"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	push(t, r.ref("plain/app:1"), base, layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("plain image\n"))}))
	push(t, r.ref("src/bad:1"), base, layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("toc did not verify\n"))}))
	if _, err := convert.Image(ctx, r.ref("src/bad:1"), r.ref("bad/app:1"), convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	corruptTOC(t, r.ref("bad/app:1"))
	imageSize := imageBytes(t, r.ref("lazy/app:1"))

	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	id := 0
	run := func(ref string, args ...string) (string, error) {
		id++
		return c.Ctr(append([]string{"run", "--rm", "--snapshotter", "lazyfs", ref, fmt.Sprintf("snap-e2e-%d-%d", os.Getpid(), id)}, args...)...)
	}
	pullRef := func(ref string) error {
		_, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace))
		return err
	}

	// 1. lazyfs pull, then ctr run: the layers are remote snapshots, the
	// container sees the image, and the node fetched a small part of it.
	lazy := r.ref("lazy/app:1")
	if err := pullRef(lazy); err != nil {
		t.Fatalf("lazyfs pull: %v\n%s", err, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers after pulling a 2-layer converted image: %v, want 2\n%s", got, d.logTail())
	}
	out, err := run(lazy, "/bin/sh", "-c", "cat /etc/motd; busybox --help | head -1")
	if err != nil || !strings.Contains(out, "served lazily by lazyfs") || !strings.Contains(out, "BusyBox") {
		t.Fatalf("ctr run: %v\n%s\n%s", err, out, d.logTail())
	}
	fetched := r.fetched("lazy/app")
	t.Logf("image %d bytes; fetched %d bytes (%.1f%%) to pull and run it", imageSize, fetched, 100*float64(fetched)/float64(imageSize))
	if fetched > imageSize/4 {
		t.Errorf("lazy pull and run fetched %d of %d bytes; want far less than the image", fetched, imageSize)
	}

	// 2. Eight containers of the image at once read the same file: each chunk
	// is fetched once, and every container reads the right bytes.
	before := r.fetched("lazy/app")
	var wg sync.WaitGroup
	outs := make([]string, 8)
	errs := make([]error, 8)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Through the Go client, output through a file: ctr run
			// once returned success with no output in such a burst.
			outs[i], errs[i] = runIn(ctx, c, lazy, "lazyfs", "busybox md5sum /data/burst")
		}()
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil || !strings.Contains(outs[i], md5hex(burst)) {
			t.Fatalf("container %d of the burst: %v %q, want md5 %s", i, errs[i], outs[i], md5hex(burst))
		}
	}
	burstFetched := r.fetched("lazy/app") - before
	t.Logf("8 containers read a %d-byte file; fetched %d bytes (%.2fx the file)", len(burst), burstFetched, float64(burstFetched)/float64(len(burst)))
	if burstFetched > int64(len(burst))*3/2 {
		t.Errorf("8 containers reading one %d-byte file fetched %d bytes: chunks fetched more than once", len(burst), burstFetched)
	}

	// 2b. Another image with the same file: its chunks are shared through
	// the content-addressed cache and not fetched again.
	other := r.ref("other/app:1")
	if err := pullRef(other); err != nil {
		t.Fatalf("lazyfs pull of the second image: %v", err)
	}
	before = r.fetched("other/app")
	if out, err := run(other, "busybox", "md5sum", "/data/copy"); err != nil || !strings.Contains(out, md5hex(burst)) {
		t.Fatalf("second image: %v %q", err, out)
	}
	shared := r.fetched("other/app") - before
	t.Logf("second image read its %d-byte copy of a cached file; fetched %d bytes", len(burst), shared)
	if shared > int64(len(burst))/10 {
		t.Errorf("a file whose chunks are cached (read through another image) fetched %d of %d bytes again", shared, len(burst))
	}

	// The node's control API (lazyfs ls) lists the snapshotter's layer mounts.
	ms, err := node.NewClient(d.control, 10*time.Second).List(ctx)
	if err != nil {
		t.Fatalf("control API: %v", err)
	}
	layers := 0
	for _, m := range ms {
		if m.Kind == node.KindLayer {
			layers++
		}
	}
	if layers != 3 { // busybox (shared), app, other's app layer
		t.Errorf("control API lists %d layer mounts, want 3: %+v", layers, ms)
	}

	// 3. A plain image falls back to containerd's unpack, counted with a reason.
	// This pull goes through the lazyfs command line itself.
	fb := d.metric("lazyfs_snapshotter_fallback_layers_total")
	if out, err := exec.CommandContext(ctx, build.cli, "pull", "--address", c.Address, "--namespace", c.Namespace, r.ref("plain/app:1")).CombinedOutput(); err != nil {
		t.Fatalf("lazyfs pull of a plain image: %v\n%s", err, out)
	}
	if got := d.metric("lazyfs_snapshotter_fallback_layers_total") - fb; got != 1 {
		t.Errorf("fallbacks counted for the plain image's one new layer: %v, want 1", got)
	}
	if out, err := run(r.ref("plain/app:1"), "busybox", "cat", "/etc/motd"); err != nil || out != "plain image\n" {
		t.Fatalf("plain image: %v %q", err, out)
	}

	// 4. A layer whose TOC does not verify is not mounted lazily: it falls
	// back (or the pull fails clearly); never a container with wrong bytes.
	fb = d.metric("lazyfs_snapshotter_fallback_layers_total")
	if err := pullRef(r.ref("bad/app:1")); err != nil {
		t.Logf("pull of an image with a corrupt TOC failed (allowed): %v", err)
	} else {
		if got := d.metric("lazyfs_snapshotter_fallback_layers_total") - fb; got != 1 {
			t.Errorf("fallbacks counted for the corrupt-TOC layer: %v, want 1", got)
		}
		if out, err := run(r.ref("bad/app:1"), "busybox", "cat", "/etc/motd"); err != nil || out != "toc did not verify\n" {
			t.Fatalf("corrupt-TOC image through the fallback: %v %q", err, out)
		}
	}
	t.Logf("fallback reasons:\n%s", metricLines(t, d.metricsURL, "lazyfs_snapshotter_fallback_layers_total{"))

	// 5. kill -9 of the daemon, restart: the remote snapshots are mounted
	// again and a new container of the image runs and reads a file it never read.
	// containerd's proxy connection backs off up to 3 s between redials, so
	// the first calls after the restart may still find it unavailable.
	d.kill9()
	d.start()
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, err = run(lazy, "/bin/sh", "-c", "cat /etc/motd; busybox md5sum /data/later")
		if err == nil || !proxyRedialing(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || !strings.Contains(out, "served lazily by lazyfs") || !strings.Contains(out, md5hex(later)) {
		t.Fatalf("container after kill -9 and restart: %v\n%s\n%s", err, out, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_restored_mounts_total"); got < 3 {
		t.Errorf("restored mounts after restart: %v, want ≥ 3", got)
	}

	// 5b. A graceful stop (SIGTERM) unmounts the layers; the next start
	// mounts them again.
	d.stop()
	if ms := mountsUnder(t, d.root); len(ms) != 0 {
		t.Errorf("mounts left after SIGTERM: %v", ms)
	}
	d.start()
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, err = run(other, "busybox", "cat", "/etc/motd")
		if err == nil || !proxyRedialing(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || out != "another image\n" {
		t.Fatalf("container after SIGTERM and restart: %v %q\n%s", err, out, d.logTail())
	}

	// 6. Removing the images frees every lazy mount.
	for _, ref := range []string{lazy, other, r.ref("plain/app:1"), r.ref("bad/app:1")} {
		c.Ctr("images", "rm", "--sync", ref)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms := mountsUnder(t, d.root)
		if len(ms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			out, _ := c.Ctr("snapshots", "--snapshotter", "lazyfs", "ls")
			t.Fatalf("mounts left after removing every image: %v\nsnapshots:\n%s", ms, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func metricLines(t *testing.T, url, prefix string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func imageBytes(t *testing.T, ref string) int64 {
	r, _ := name.ParseReference(ref)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range ls {
		s, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		n += s
	}
	return n
}
