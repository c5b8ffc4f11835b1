package e2e_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

// TestManyLayers: an image of 100 layers (Docker allows 127), each mounted
// lazily, runs: the container's overlay stacks 100 FUSE lower directories,
// whose lowerdir option is longer than the page the kernel takes mount
// options in, and sees every layer's file and the top layer's version of
// a file every layer writes.
func TestManyLayers(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const n = 100
	r := newRegistry(t)
	layers := []v1.Layer{busyboxLayer(t, busybox)}
	for i := 1; i < n; i++ {
		layers = append(layers, layer(t, []toctest.File{dir("layers/"),
			reg(fmt.Sprintf("layers/%03d", i), 0o644, []byte(fmt.Sprintf("layer %d\n", i))),
			reg("layers/top", 0o644, []byte(fmt.Sprintf("written by layer %d\n", i)))}))
	}
	push(t, r.ref("src/many:1"), layers...)
	if _, err := convert.Image(ctx, r.ref("src/many:1"), r.ref("lazy/many:1")); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	ref := r.ref("lazy/many:1")
	if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
		t.Fatalf("lazyfs pull: %v\n%s", err, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != n {
		t.Fatalf("remote layers after pulling a %d-layer image: %v\n%s", n, got, d.logTail())
	}
	out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", ref, fmt.Sprintf("many-%d", os.Getpid()),
		"/bin/sh", "-c", "busybox cat /layers/001 /layers/099 /layers/top; busybox ls /layers | busybox wc -l")
	if err != nil {
		t.Fatalf("ctr run over %d lazy layers: %v\n%s\n%s", n, err, out, d.logTail())
	}
	for _, want := range []string{"layer 1\n", "layer 99\n", fmt.Sprintf("written by layer %d\n", n-1), fmt.Sprintf("%d\n", n)} {
		if !strings.Contains(out, want) {
			t.Errorf("container output %q lacks %q", out, want)
		}
	}
}

// TestMixedImage: an image whose lower layers are converted and whose top
// layer is a plain gzip layer added later (a build on top of a lazyfs base
// image): the converted layers are mounted lazily, the plain one falls back
// and containerd unpacks it over them, its whiteout hiding a file of a
// lazy layer and its file replacing one.
func TestMixedImage(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	push(t, r.ref("src/base:1"), busyboxLayer(t, busybox), layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("from the lazy base\n")),
		dir("data/"), reg("data/gone", 0o644, []byte("deleted above\n")), reg("data/kept", 0o644, []byte("kept\n"))}))
	if _, err := convert.Image(ctx, r.ref("src/base:1"), r.ref("lazy/base:1")); err != nil {
		t.Fatal(err)
	}
	baseRef, err := name.ParseReference(r.ref("lazy/base:1"))
	if err != nil {
		t.Fatal(err)
	}
	base, err := remote.Image(baseRef)
	if err != nil {
		t.Fatal(err)
	}
	mixed, err := mutate.AppendLayers(base, layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte("from the plain layer\n")),
		dir("data/"), reg("data/.wh.gone", 0o644, nil)}))
	if err != nil {
		t.Fatal(err)
	}
	ref := r.ref("mixed/app:1")
	mixedRef, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mixedRef, mixed); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
		t.Fatalf("lazyfs pull: %v\n%s", err, d.logTail())
	}
	if got, fb := d.metric("lazyfs_snapshotter_remote_layers_total"), d.metric(`lazyfs_snapshotter_fallback_layers_total{reason="not_converted"}`); got != 2 || fb != 1 {
		t.Fatalf("mixed image: %v layers lazy and %v not converted, want 2 and 1\n%s", got, fb, d.logTail())
	}
	out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", ref, fmt.Sprintf("mixed-%d", os.Getpid()),
		"/bin/sh", "-c", "busybox cat /etc/motd; busybox ls /data")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s\n%s", err, out, d.logTail())
	}
	if want := "from the plain layer\nkept\n"; out != want {
		t.Errorf("container over a plain layer on lazy ones printed %q, want %q", out, want)
	}
}

// TestImplicitDirs: a layer whose tar leaves out parent directories (as
// Bazel's and crane's do) over a base with /tmp 1777 and a home directory
// of its own owner. Mounted lazily, the directories it leaves out show
// what they show when containerd unpacks the same image with its own
// overlayfs snapshotter: the base's mode and owner, not 0755 root (which
// would leave /tmp unwritable for every user but root).
func TestImplicitDirs(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	hdr := func(name string, mode int64, uid int) toctest.File {
		return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}}
	}
	push(t, r.ref("src/implicit:1"), busyboxLayer(t, busybox),
		layer(t, []toctest.File{hdr("tmp/", 0o1777, 0), hdr("home/", 0o755, 0), hdr("home/app/", 0o750, 1000),
			reg("home/app/.keep", 0o644, nil)}),
		layer(t, []toctest.File{reg("tmp/cache/x", 0o644, []byte("x\n")), reg("home/app/.profile", 0o644, []byte("p\n"))}))
	d, c, ref := pullLazily(ctx, t, bin, r, "src/implicit:1", "lazy/implicit:1", 3)
	const script = "busybox stat -c '%n %a %u:%g' / /tmp /tmp/cache /home /home/app"
	lazy, err := runIn(ctx, c, ref, "lazyfs", script)
	if err != nil {
		t.Fatalf("run (lazyfs): %v\n%s\n%s", err, lazy, d.logTail())
	}
	plain := runUnpacked(ctx, t, c, ref, script)
	want := "/ 755 0:0\n/tmp 1777 0:0\n/tmp/cache 755 0:0\n/home 755 0:0\n/home/app 750 1000:1000\n"
	if plain != want {
		t.Fatalf("containerd's own unpack shows\n%s, the test expects\n%s", plain, want)
	}
	if lazy != plain {
		t.Errorf("lazy mounts show\n%s, containerd's unpack\n%s", lazy, plain)
	}
}

// TestLowerHardlink: a layer with a hardlink to a file of the layer below
// (hand-made tars only) cannot be shown by a per-layer mount, which used
// to leave the name out silently. It now falls back (lower_hardlink) and
// containerd unpacks it as it does with its own overlayfs snapshotter:
// into the layer's own directory, where the link's target is missing, so
// the pull fails the same way (as Docker's overlay2 fails too).
func TestLowerHardlink(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	push(t, r.ref("src/hardlink:1"), busyboxLayer(t, busybox),
		layer(t, []toctest.File{dir("etc/"), reg("etc/app.conf", 0o644, []byte("from the lower layer\n"))}),
		layer(t, []toctest.File{dir("etc/"), {Hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/app.link", Linkname: "etc/app.conf"}}}))
	if _, err := convert.Image(ctx, r.ref("src/hardlink:1"), r.ref("lazy/hardlink:1")); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	out, err := c.Ctr("image", "pull", "--plain-http", "--snapshotter", "overlayfs", r.ref("src/hardlink:1"))
	if err == nil || !strings.Contains(err.Error()+out, "app.link") {
		t.Fatalf("containerd's overlayfs unpack of a hardlink into a lower layer: %v\n%s\nthe test expects it to fail on the link", err, out)
	}
	_, err = pull.Pull(ctx, r.ref("lazy/hardlink:1"), pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace))
	if err == nil || !strings.Contains(err.Error(), "app.link") {
		t.Fatalf("lazyfs pull: %v, want containerd's unpack to fail on the link as with overlayfs\n%s", err, d.logTail())
	}
	if got, fb := d.metric("lazyfs_snapshotter_remote_layers_total"), d.metric(`lazyfs_snapshotter_fallback_layers_total{reason="lower_hardlink"}`); got != 2 || fb != 1 {
		t.Fatalf("%v layers lazy and %v lower_hardlink fallbacks, want 2 and 1\n%s", got, fb, d.logTail())
	}
}

// TestSetuidAndCapabilities: a setuid-root program and a program with a
// file capability (security.capability, cap_net_raw+ep), run by an image
// whose user is 1000, get the privileges they get when containerd unpacks
// the image itself: the lazy FUSE lower layers pass the mode bits and the
// xattr through overlayfs to exec.
func TestSetuidAndCapabilities(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	prog := buildProgram(ctx, t, privsProgram)
	r := newRegistry(t)
	capped := reg("bin/capped", 0o755, prog)
	capped.Hdr.Format = tar.FormatPAX
	// VFS_CAP_REVISION_2 with the effective bit; permitted: CAP_NET_RAW (13).
	capped.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}
	img, err := mutate.AppendLayers(empty.Image, busyboxLayer(t, busybox),
		layer(t, []toctest.File{dir("bin/"), reg("bin/suid", 0o4755, prog), capped, reg("bin/plain", 0o755, prog)}))
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, User: "1000:1000"}); err != nil {
		t.Fatal(err)
	}
	srcRef, err := name.ParseReference(r.ref("src/privs:1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(srcRef, img); err != nil {
		t.Fatal(err)
	}
	d, c, ref := pullLazily(ctx, t, bin, r, "src/privs:1", "lazy/privs:1", 2)
	const script = "/bin/plain; /bin/suid; /bin/capped"
	lazy, err := runIn(ctx, c, ref, "lazyfs", script, oci.WithNewPrivileges)
	if err != nil {
		t.Fatalf("run (lazyfs): %v\n%s\n%s", err, lazy, d.logTail())
	}
	plain := runUnpacked(ctx, t, c, ref, script, oci.WithNewPrivileges)
	lines := strings.Split(strings.TrimSpace(plain), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "uid=1000 euid=1000 capeff=0000000000000000") ||
		!strings.Contains(lines[1], "uid=1000 euid=0 ") || !strings.Contains(lines[2], "uid=1000 euid=1000 capeff=0000000000002000") {
		t.Fatalf("containerd's own unpack gives\n%s\nthe test expects no privileges, euid 0, then CAP_NET_RAW alone", plain)
	}
	if lazy != plain {
		t.Errorf("over lazy layers:\n%s\nover containerd's unpack:\n%s", lazy, plain)
	}
}

// runIn runs script in a container of ref over snapshotter with
// containerd's Go client and returns what it printed. opts adjust the
// spec: oci.WithNewPrivileges turns no_new_privs off, as Kubernetes runs a
// pod that allows privilege escalation (ctr run always sets it).
func runIn(ctx context.Context, c *ctrtest.Containerd, ref, snapshotter, script string, opts ...oci.SpecOpts) (string, error) {
	cl, err := client.New(c.Address, client.WithDefaultNamespace(c.Namespace))
	if err != nil {
		return "", err
	}
	defer cl.Close()
	img, err := cl.GetImage(ctx, ref)
	if err != nil {
		return "", err
	}
	id := fmt.Sprintf("run-%s-%d-%d", snapshotter, os.Getpid(), runs.Add(1))
	ctr, err := cl.NewContainer(ctx, id, client.WithImage(img), client.WithSnapshotter(snapshotter), client.WithNewSnapshot(id, img),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(img), oci.WithProcessArgs("/bin/sh", "-c", script)}, opts...)...))
	if err != nil {
		return "", err
	}
	defer ctr.Delete(context.WithoutCancel(ctx), client.WithSnapshotCleanup)
	// The shim writes the output to a file: nothing is lost to a FIFO
	// opened late.
	log := filepath.Join(os.TempDir(), id+".log")
	defer os.Remove(log)
	task, err := ctr.NewTask(ctx, cio.LogFile(log))
	if err != nil {
		return "", err
	}
	exit, err := task.Wait(ctx)
	if err != nil {
		task.Delete(context.WithoutCancel(ctx))
		return "", err
	}
	if err := task.Start(ctx); err != nil {
		task.Delete(context.WithoutCancel(ctx))
		return "", err
	}
	var st client.ExitStatus
	select {
	case st = <-exit:
	case <-ctx.Done():
		task.Kill(context.WithoutCancel(ctx), syscall.SIGKILL)
		<-exit
	}
	if _, err := task.Delete(context.WithoutCancel(ctx)); err != nil {
		return "", err
	}
	out, rerr := os.ReadFile(log)
	if code, _, err := st.Result(); err != nil || code != 0 || ctx.Err() != nil {
		return string(out), fmt.Errorf("exit status %d: %v %v", code, err, ctx.Err())
	}
	return string(out), rerr
}

var runs atomic.Int64 // runIn's containers

// TestSameTreeAsUnpack: an image of every entry type and of the layer
// changes real images make (whiteouts of files and directories, opaque
// directories, a directory's attributes changed, a file replaced by a
// directory and by a symlink, a directory by a file, hardlinks,
// directories a layer leaves out, a path through a lower layer's symlink
// (merged /usr: lib -> usr/lib), setuid and sticky bits, devices, xattrs,
// GNU sparse files, an empty layer, long and non-ASCII names, times before
// 1970), seen from a container over lazy layers and over containerd's own
// overlayfs unpack of the same image: every name, type, mode, owner, link count,
// xattr, and for all but directories size, mtime, device numbers, link
// target and contents' digest must be the same. (containerd's unpack sets
// the mtime of directories it writes into to the time of the unpack.) The
// same holds for lazyfs run (the merged mount under its own overlay) but
// for link counts and the files it writes in /etc.
func TestSameTreeAsUnpack(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := newRegistry(t)
	at := time.Date(2024, 2, 3, 4, 5, 6, 0, time.UTC)
	h := func(typ byte, name string, mode int64, uid int) toctest.File {
		return toctest.File{Hdr: tar.Header{Typeflag: typ, Name: name, Mode: mode, Uid: uid, Gid: uid, ModTime: at}}
	}
	file := func(name string, mode int64, data string) toctest.File {
		f := h(tar.TypeReg, name, mode, 0)
		f.Data = []byte(data)
		return f
	}
	link := func(typ byte, name, target string) toctest.File {
		f := h(typ, name, 0o777, 0)
		f.Hdr.Linkname = target
		return f
	}
	sparse := toctest.GNUSparseTar(t, "sparse", "-H", "posix", "--sparse-version=1.0")
	dev := func(typ byte, name string, major, minor int64) toctest.File {
		f := h(typ, name, 0o660, 0)
		f.Hdr.Devmajor, f.Hdr.Devminor = major, minor
		return f
	}
	push(t, r.ref("src/tree:1"), busyboxLayer(t, busybox),
		layer(t, []toctest.File{reg(".tree", 0o755, buildProgram(ctx, t, treeProgram))}),
		rawLayer(t, sparse),
		layer(t, nil), // an empty layer (RUN true)
		layer(t, toctest.AllTypes(300_000)),
		layer(t, []toctest.File{
			h(tar.TypeDir, "etc/", 0o750, 0), // attributes change, contents kept
			file("etc/.wh.hostname", 0o644, ""),
			h(tar.TypeDir, "etc/empty/", 0o700, 5), // a file becomes a directory
			file("etc/empty/inside", 0o600, "inside\n"),
			link(tar.TypeSymlink, "text/zeros", "../etc/empty/inside"), // a file becomes a symlink
			h(tar.TypeDir, "opaque/", 0o711, 0),
			file("opaque/.wh..wh..opq", 0o644, ""),
			file("opaque/new", 0o644, "new\n"),
			file(".wh.ünïcødé", 0o644, ""),       // a whole directory removed
			file("tmp/left-out/x", 0o640, "x\n"), // tmp/ and tmp/left-out/ left out
			file("data/a", 0o644, "shared\n"),
			link(tar.TypeLink, "data/b", "data/a"),
			link(tar.TypeLink, "data/c", "data/a"),
			h(tar.TypeDir, "home/u/", 0o700, 1000),
			file("home/u/.profile", 0o600, "profile\n"),
			h(tar.TypeDir, "usr/lib/", 0o755, 0), // merged /usr, as Debian 12's
			file("usr/lib/libc.so", 0o644, "libc\n"),
			link(tar.TypeSymlink, "lib", "usr/lib"),
			dev(tar.TypeChar, "var/null", 1, 3), // /dev is the runtime's: devices elsewhere
			dev(tar.TypeBlock, "var/sda", 8, 0),
			h(tar.TypeFifo, "var/fifo", 0o600, 0),
		}),
		layer(t, []toctest.File{
			file("data/.wh.c", 0o644, ""),               // one name of a hardlink group removed
			file("home/u/more/notes", 0o644, "notes\n"), // under a lower directory of its own owner
			file("bin/tool", 0o755, "a new tool\n"),     // replaces a setuid file with hardlinks
			file("etc/empty/.wh..wh..opq", 0o644, ""),   // opaque, with its own directory left out
			file("lib/libfoo.so", 0o644, "foo\n"),       // through a lower layer's symlink, parent left out
			file("text", 0o600, "now a file\n"),         // a directory becomes a file
			h(tar.TypeDir, "deep/", 0o755, 0),           // a directory emptied and filled again, as Docker writes it
			file("deep/.wh..wh..opq", 0o644, ""),
			file("deep/fresh", 0o644, "fresh\n"),
		}))
	d, c, ref := pullLazily(ctx, t, bin, r, "src/tree:1", "lazy/tree:1", 7)
	const script = "/.tree"
	lazy, err := runIn(ctx, c, ref, "lazyfs", script)
	if err != nil {
		t.Fatalf("run (lazyfs): %v\n%s\n%s", err, lazy, d.logTail())
	}
	plain := runUnpacked(ctx, t, c, ref, script)
	for _, want := range []string{"/usr/bin/ping ", "security.capability=", "user.comment=", "/sparse/many ", "/var/sda ", "rdev=2048", "/var/null ", "rdev=259", "/var/fifo ", "/lib/libfoo.so ", "/deep/fresh "} {
		if !strings.Contains(plain, want) {
			t.Fatalf("containerd's unpack shows no %q:\n%s", want, plain)
		}
	}
	// lazyfs run: the merged mount of the whole image under its own overlay.
	cli := filepath.Join(t.TempDir(), "lazyfs")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", cli, "github.com/lazyfs/lazyfs/cmd/lazyfs").CombinedOutput(); err != nil {
		t.Fatalf("go build lazyfs: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, cli, "run", "--insecure", "--cache-dir", "", "--profile-dir", "", ref, "--", "/.tree").Output()
	if err != nil {
		t.Fatalf("lazyfs run: %v\n%s", err, out)
	}
	// Two differences are lazyfs run's own: it writes /etc/hostname, hosts
	// and resolv.conf, as docker run does (ctr run does not), and its
	// merged tree counts the links a name has left (overlayfs shows 1 for
	// a directory merged from several layers, and a lower file's count of
	// names, removed ones included).
	norm := func(s string) string {
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			switch strings.SplitN(l, " ", 2)[0] {
			case "/etc/hostname", "/etc/hosts", "/etc/resolv.conf":
				continue
			}
			keep = append(keep, nlinkRE.ReplaceAllString(l, ""))
		}
		return strings.Join(keep, "\n")
	}
	if run, want := norm(string(out)), norm(plain); run != want {
		t.Errorf("the tree in lazyfs run (+) differs from containerd's unpack (-):\n%s", lineDiff(want, run))
	}
	if lazy != plain {
		t.Errorf("the tree over lazy layers (+) differs from containerd's unpack (-):\n%s", lineDiff(plain, lazy))
	}
}

// privsProgram prints its name, real and effective uid and effective
// capabilities.
const privsProgram = `package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			fmt.Printf("%s uid=%d euid=%d capeff=%s\n", os.Args[0], os.Getuid(), os.Geteuid(), strings.TrimSpace(v))
		}
	}
}
`

// treeProgram prints one line per name under / (the runtime's /proc, /sys,
// /dev and /run left out), sorted: type and mode, owner, link count, and
// for all but directories size, mtime with nanoseconds, device numbers,
// link target or the contents' sha256; then every xattr with its value.
const treeProgram = `package main

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

func main() {
	var lines []string
	filepath.WalkDir("/", func(p string, d fs.DirEntry, err error) error {
		switch p {
		case "/proc", "/sys", "/dev", "/run":
			return fs.SkipDir
		}
		if err != nil {
			lines = append(lines, p+" error "+err.Error())
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			lines = append(lines, p+" lstat "+err.Error())
			return nil
		}
		l := fmt.Sprintf("%s %o %d:%d nlink=%d", p, st.Mode, st.Uid, st.Gid, st.Nlink)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
		case syscall.S_IFLNK:
			t, _ := os.Readlink(p)
			l += fmt.Sprintf(" size=%d mtime=%d.%09d -> %s", st.Size, st.Mtim.Sec, st.Mtim.Nsec, t)
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			l += fmt.Sprintf(" size=%d mtime=%d.%09d sha256=%x err=%v", st.Size, st.Mtim.Sec, st.Mtim.Nsec, sha256.Sum256(b), err)
		default:
			l += fmt.Sprintf(" size=%d mtime=%d.%09d rdev=%d", st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Rdev)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			buf := make([]byte, 64<<10)
			n, _ := syscall.Listxattr(p, buf)
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			for _, x := range names {
				if x == "" {
					continue
				}
				v := make([]byte, 64<<10)
				m, err := syscall.Getxattr(p, x, v)
				if err != nil {
					l += fmt.Sprintf(" %s:%v", x, err)
					continue
				}
				l += fmt.Sprintf(" %s=%q", x, v[:m])
			}
		}
		lines = append(lines, l)
		return nil
	})
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
}
`

// buildProgram builds a static Go program from source and returns it.
func buildProgram(ctx context.Context, t *testing.T, source string) []byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "prog")
	build := exec.CommandContext(ctx, "go", "build", "-o", exe, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawLayer(t *testing.T, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var nlinkRE = regexp.MustCompile(` nlink=[0-9]+`)

// pullLazily converts image src of r to dst, starts the daemon and
// containerd, pulls dst lazily and checks that lazy of its layers were
// mounted lazily.
func pullLazily(ctx context.Context, t *testing.T, bin string, r *countingRegistry, src, dst string, lazy float64) (*daemon, *ctrtest.Containerd, string) {
	t.Helper()
	if _, err := convert.Image(ctx, r.ref(src), r.ref(dst)); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	ref := r.ref(dst)
	if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
		t.Fatalf("lazyfs pull: %v\n%s", err, d.logTail())
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != lazy {
		t.Fatalf("remote layers: %v, want %v\n%s", got, lazy, d.logTail())
	}
	return d, c, ref
}

// runUnpacked pulls ref into containerd's own overlayfs snapshotter (which
// unpacks it) and runs script there (runIn).
func runUnpacked(ctx context.Context, t *testing.T, c *ctrtest.Containerd, ref, script string, opts ...oci.SpecOpts) string {
	t.Helper()
	if out, err := c.Ctr("image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref); err != nil {
		t.Fatalf("ctr image pull (overlayfs): %v\n%s", err, out)
	}
	out, err := runIn(ctx, c, ref, "overlayfs", script, opts...)
	if err != nil {
		t.Fatalf("run (overlayfs): %v\n%s", err, out)
	}
	return out
}

// lineDiff lists the lines of got that want lacks (+) and those of want
// that got lacks (-).
func lineDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	var diff []string
	for _, l := range gl {
		if !slices.Contains(wl, l) {
			diff = append(diff, "+ "+l)
		}
	}
	for _, l := range wl {
		if !slices.Contains(gl, l) {
			diff = append(diff, "- "+l)
		}
	}
	return strings.Join(diff, "\n")
}
