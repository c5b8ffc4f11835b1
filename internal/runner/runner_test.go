package runner_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/runner"
)

// BusyboxLayer returns the tar entries of a minimal image: a static
// busybox with a few applets, /etc/passwd, /tmp, /home/app.
func busyboxLayer(t testing.TB) []toctest.File {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static (/bin/busybox)")
	}
	dir := func(n string, mode int64) toctest.File {
		return toctest.File{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: mode}}
	}
	files := []toctest.File{
		dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("etc/", 0o755), dir("tmp/", 0o1777), dir("home/", 0o755),
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "home/app/", Mode: 0o755, Uid: 1000, Gid: 1000}},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "usr/bin"}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/busybox", Mode: 0o755}, Data: bb},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, Data: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, Data: []byte("root:x:0:\napp:x:1000:\nstaff:x:50:\n")},
		// A resolv.conf that is a symlink to an absolute path: the run must
		// replace it, not write through it onto the host.
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/resolv.conf", Linkname: "/run/lazyfs-runner-test/stub-resolv.conf"}},
		// The image's own device node: a lazy mount is nodev, so it must not be the one used.
		{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
	}
	for _, a := range []string{"sh", "cat", "echo", "head", "wc", "id", "pwd", "sleep", "ls", "env", "true", "false", "mount"} {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/" + a, Linkname: "busybox"}})
	}
	return files
}

// mountImage mounts a busybox image lazily (FUSE) and returns its directory.
func mountImage(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces, FUSE, overlayfs); CI runs as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	blob, res := toctest.Convert(t, toctest.Tar(t, busyboxLayer(t)), toc.WithChunkSize(64<<10))
	root, err := fs.NewRoot([]fs.Layer{{Name: "busybox", TOC: res.TOC, Fetcher: fstest.NewBlobFetcher(blob)}}, fs.Options{Cache: fstest.NewMemCache()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := fs.Mount(dir, root, fs.MountOptions{})
	if err != nil {
		root.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount the image after the runs: %v", err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

func run(t *testing.T, c runner.Config) (*runner.Result, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := runner.Run(ctx, c)
	if err != nil {
		t.Fatalf("run %v: %v", c.Args, err)
	}
	return res, out.String(), errb.String()
}

func TestRunBusybox(t *testing.T) {
	dir := mountImage(t)
	script := `set -e
echo written > /tmp/x; cat /tmp/x
echo discarded > /dev/null
head -c 32 /dev/urandom | wc -c
head -c 8 /dev/zero | wc -c
head -n 1 /proc/self/status
ls /sys/kernel >/dev/null && echo sys
pwd; id -u; id -g; echo "$GREETING"
`
	res, out, errs := run(t, runner.Config{Root: dir, Args: []string{"sh", "-c", script},
		Env: []string{"GREETING=hello from the image"}, WorkDir: "/home/app", User: "app"})
	want := "written\n32\n8\nName:\thead\nsys\n/home/app\n1000\n1000\nhello from the image\n"
	if res.ExitCode != 0 || out != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want stdout %q", res.ExitCode, out, errs, want)
	}
	// The writes went to the run's overlay, not to the image, and no mount
	// of the run is left in this namespace.
	if _, err := os.Stat(filepath.Join(dir, "tmp/x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the run wrote into the image: %v", err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, "lazyfs-run-") && !strings.Contains(l, "fuse.lazyfs") {
			t.Fatalf("a run mount leaked into the host namespace: %s", l)
		}
	}

	res, _, _ = run(t, runner.Config{Root: dir, Args: []string{"sh", "-c", "exit 7"}, User: "1000:50"})
	if res.ExitCode != 7 {
		t.Fatalf("exit code %d, want 7", res.ExitCode)
	}
	res, out, _ = run(t, runner.Config{Root: dir, Args: []string{"id", "-g"}, User: "app:staff"})
	if res.ExitCode != 0 || out != "50\n" {
		t.Fatalf("group: exit %d out %q", res.ExitCode, out)
	}
	if _, err := runner.Run(context.Background(), runner.Config{Root: dir, Args: []string{"python3"}}); !errors.Is(err, runner.ErrNotFound) {
		t.Fatalf("missing command: %v, want ErrNotFound", err)
	}
}

// TestRunNetworkFiles: a run resolves names as the host does: it sees the
// host's /etc/resolv.conf, /etc/hosts and /etc/hostname (as a runtime
// gives a container on the host's network), copied into its overlay; the
// image's resolv.conf symlink to an absolute path is replaced, not
// followed onto the host, and the image is not changed.
func TestRunNetworkFiles(t *testing.T) {
	dir := mountImage(t)
	var want string
	for _, p := range []string{"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("the host has no %s", p)
		}
		want += string(b)
	}
	res, out, errs := run(t, runner.Config{Root: dir, Args: []string{"cat", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"}})
	if res.ExitCode != 0 || out != want {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the host's files %q", res.ExitCode, out, errs, want)
	}
	if _, err := os.Lstat("/run/lazyfs-runner-test"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the run wrote through the image's symlink onto the host: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "etc/resolv.conf")); err != nil || l != "/run/lazyfs-runner-test/stub-resolv.conf" {
		t.Errorf("the image's resolv.conf changed: %q, %v", l, err)
	}
}

func TestRunReadyLineAndTimeout(t *testing.T) {
	dir := mountImage(t)
	res, out, _ := run(t, runner.Config{Root: dir, Args: []string{"sh", "-c", "echo starting; echo listening on :80; sleep 60; echo never"},
		ReadyLine: regexp.MustCompile(`listening on`), KillGrace: time.Second})
	if !res.Ready || res.TimedOut || strings.Contains(out, "never") || !strings.Contains(out, "listening on :80") {
		t.Fatalf("ready line: %+v, stdout %q", res, out)
	}
	res, _, _ = run(t, runner.Config{Root: dir, Args: []string{"sleep", "60"}, Timeout: 200 * time.Millisecond, KillGrace: time.Second})
	if !res.TimedOut || res.Ready || res.ExitCode != 128+int(syscall.SIGTERM) {
		t.Fatalf("timeout: %+v", res)
	}
}
