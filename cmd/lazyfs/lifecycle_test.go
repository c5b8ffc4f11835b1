package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// TestMountLifecycle: a standalone mount is listed by ls; a second server
// on the same cache is refused with the reason; umount of a mount with an
// open file does not report success while its server serves that file,
// and the file keeps reading; logs and state are private.
func TestMountLifecycle(t *testing.T) {
	needFUSE(t)
	t.Setenv("LAZYFS_TEST_MAIN", "1")
	host := testRegistry(t)
	src, dst := host+"/life:1", host+"/life:1-lazy"
	pushSample(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	mnt, mnt2, state := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "mnt2"), filepath.Join(tmp, "state")
	os.Mkdir(mnt, 0o755)
	os.Mkdir(mnt2, 0o755)
	nodaemon := filepath.Join(tmp, "no-daemon.sock")
	common := []string{"--state-dir", state, "--cache-dir", filepath.Join(tmp, "cache"), "--control", nodaemon}
	umount := func(dir string) (string, error) {
		return run(t, "umount", "--state-dir", state, "--control", nodaemon, "--timeout", "1s", dir)
	}
	t.Cleanup(func() { umount(mnt); umount(mnt2) })

	if _, err := run(t, append(append([]string{"mount"}, common...), dst, mnt)...); err != nil {
		t.Fatal(err)
	}
	// The cache is held by the first server: no silent RAM cache for the second.
	_, err := run(t, append(append([]string{"mount"}, common...), dst, mnt2)...)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), "--cache-dir") {
		t.Fatalf("second server on a held cache: %v", err)
	}
	if isMounted(t, mnt2) {
		t.Fatal("the refused mount is there")
	}

	out, err := run(t, "ls", "--json", "--state-dir", state, "--control", nodaemon)
	if err != nil {
		t.Fatal(err)
	}
	ls := lsUnder(t, out, tmp)
	ms, err := node.ReadMountState(state, mnt)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].Dir != mnt || ls[0].Kind != node.KindImage || ls[0].Ref != dst || ls[0].PID != ms.Process.PID || ls[0].Daemon {
		t.Fatalf("ls: %s", out)
	}
	if out, err := run(t, "ls", "--state-dir", state, "--control", nodaemon); err != nil || !strings.Contains(out, mnt) || !strings.Contains(out, "FETCHED") {
		t.Fatalf("ls table: %q %v", out, err)
	}
	statePath, sock, logPath := node.StatePaths(state, mnt)
	for p, want := range map[string]os.FileMode{statePath: 0o600, sock: 0o600, logPath: 0o600, state: 0o700, filepath.Dir(statePath): 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %v", p, fi, err, want)
		}
	}

	// Busy: umount fails while the server serves the open file.
	f, err := os.Open(filepath.Join(mnt, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = umount(mnt)
	if !errors.Is(err, node.ErrServerAlive) && (err == nil || !strings.Contains(err.Error(), "still running")) {
		t.Fatalf("umount of a busy mount: %v, want a report that the server still runs", err)
	}
	if !ms.Process.Alive() {
		t.Fatal("the server died with a file open in its mount")
	}
	got, err := io.ReadAll(f)
	if want := toctest.Random(1, 700<<10); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading the open file after umount: %d bytes, %v", len(got), err)
	}
	f.Close()
	waitGone(t, ms.Process.PID)
	if isMounted(t, mnt) {
		t.Fatal("still mounted")
	}
	// Nothing left: umount says so.
	if _, err := umount(mnt); err == nil {
		t.Fatal("umount of nothing succeeded")
	}
}

// TestMountThroughDaemon: with a daemon answering on --control, lazyfs
// mount, ls, stats and umount go through it (shared cache and fetcher).
func TestMountThroughDaemon(t *testing.T) {
	needFUSE(t)
	host := testRegistry(t)
	src, dst := host+"/dmn:1", host+"/dmn:1-lazy"
	pushSample(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	n, err := node.New(context.Background(), node.Config{Root: filepath.Join(tmp, "root"), CacheDir: node.MemoryCache, CacheSize: 1 << 30, Fetcher: remote.New()})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(tmp, "run", "control.sock")
	ln, err := node.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); node.ServeListener(ctx, ln, n.Handler()) }()
	t.Cleanup(func() { cancel(); <-served; n.Close() })

	mnt, state := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "state")
	os.Mkdir(mnt, 0o755)
	out, err := run(t, "mount", "--control", sock, "--state-dir", state, dst, mnt)
	if err != nil || !strings.Contains(out, "served by the daemon") {
		t.Fatalf("mount: %q %v", out, err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(got) != "lazyfs\n" {
		t.Fatalf("read: %q %v", got, err)
	}
	out, err = run(t, "ls", "--json", "--control", sock, "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	if ls := lsUnder(t, out, tmp); len(ls) != 1 || !ls[0].Daemon || ls[0].Dir != mnt || ls[0].PID != os.Getpid() {
		t.Fatalf("ls: %s %v", out, err)
	} else if p := ls[0].Progress; p == nil || p.ImageChunks == 0 || p.Phase == "" {
		// The daemon fills merged mounts by default: ls shows how far.
		t.Fatalf("ls shows no prefetch progress: %s", out)
	}
	if out, err := run(t, "ls", "--control", sock, "--state-dir", state); err != nil || !strings.Contains(out, "CHUNKS LOCAL") || !regexp.MustCompile(`\s\d+/\d+ (fill|done|profile)\s`).MatchString(out) {
		t.Fatalf("ls: no progress column: %q %v", out, err)
	}
	if out, err := run(t, "stats", "--control", sock, "--state-dir", state, mnt); err != nil || !strings.Contains(out, dst) ||
		!regexp.MustCompile(`prefetch:\s+(fill|done|profile); profile \(none\) 0/0 chunks local, image \d+/\d+ chunks local`).MatchString(out) ||
		!regexp.MustCompile(`link:\s+(not measured yet|fastest .+/s, round trip [0-9.]+ ms: (fast|slow|far))`).MatchString(out) {
		t.Fatalf("stats: no prefetch progress or link line: %q %v", out, err)
	}
	// --no-fill travels with the request: the daemon's mount fills nothing.
	mnt2 := filepath.Join(tmp, "mnt2")
	os.Mkdir(mnt2, 0o755)
	if out, err := run(t, "mount", "--no-fill", "--control", sock, "--state-dir", state, dst, mnt2); err != nil {
		t.Fatalf("mount --no-fill: %q %v", out, err)
	}
	out, err = run(t, "ls", "--json", "--control", sock, "--state-dir", state)
	// (Its progress is nil, or only the profile's if the daemon has by now
	// autosaved what the first mount learned.)
	if ls := lsUnder(t, out, tmp); err != nil || len(ls) != 2 || ls[1].Dir != mnt2 || ls[1].Progress != nil && ls[1].Progress.ImageLocal > ls[1].Progress.ProfileChunks {
		t.Fatalf("ls after mount --no-fill: %s %v, want the second mount without fill", out, err)
	}
	if _, err := run(t, "mount", "--fill", "--no-fill", "--control", sock, dst, mnt2); err == nil {
		t.Fatal("mount --fill --no-fill: no error")
	}
	if out, err := run(t, "umount", "--control", sock, "--state-dir", state, mnt2); err != nil {
		t.Fatalf("umount: %q %v", out, err)
	}
	if out, err := run(t, "umount", "--control", sock, "--state-dir", state, mnt); err != nil || !strings.Contains(out, "daemon") {
		t.Fatalf("umount: %q %v", out, err)
	}
	if isMounted(t, mnt) {
		t.Fatal("still mounted")
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a daemon mount wrote standalone state: %v", err)
	}
	// The daemon learned the mount's first-read order under its root.
	if ents, err := os.ReadDir(filepath.Join(tmp, "root", "profiles")); err != nil || len(ents) == 0 {
		t.Errorf("no profile learned by the daemon: %v %v", ents, err)
	}
}

// lsUnder decodes lazyfs ls --json and keeps the mounts under dir (other
// tests of the machine may have lazyfs mounts too).
func lsUnder(t *testing.T, out, dir string) []node.ServedMount {
	t.Helper()
	var all struct {
		SchemaVersion int                `json:"schemaVersion"`
		Mounts        []node.ServedMount `json:"mounts"`
	}
	var ls []node.ServedMount
	if err := json.Unmarshal([]byte(out), &all); err != nil || all.SchemaVersion != 1 || all.Mounts == nil {
		t.Fatalf("not an ls --json document of schema 1 (%v): %s", err, out)
	}
	for _, m := range all.Mounts {
		if strings.HasPrefix(m.Dir, dir+"/") {
			ls = append(ls, m)
		}
	}
	return ls
}

// TestServe: lazyfs serve is the node daemon without containerd: lazyfs
// mount goes through it, with the daemon's file-system tuning flags, its
// cache is its own (a standalone server on the same cache is refused), and
// SIGTERM unmounts everything and exits.
func TestServe(t *testing.T) {
	needFUSE(t)
	t.Setenv("LAZYFS_TEST_MAIN", "1")
	host := testRegistry(t)
	src, dst := host+"/srv:1", host+"/srv:1-lazy"
	pushSample(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	sock, cache, state := filepath.Join(tmp, "run", "control.sock"), filepath.Join(tmp, "cache"), filepath.Join(tmp, "state")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(self, "serve", "--control", sock, "--root", filepath.Join(tmp, "root"), "--cache-dir", cache, "--cache-size", "64MiB",
		"--neighbour-window", "off")
	daemon.Env = append(os.Environ(), "LAZYFS_TEST_MAIN=1")
	var logs bytes.Buffer
	daemon.Stdout, daemon.Stderr = &logs, &logs
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	t.Cleanup(func() {
		daemon.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := node.NewClient(sock, time.Second).Health(context.Background()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon not answering")
		}
	}
	mnt, mnt2 := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "mnt2")
	os.Mkdir(mnt, 0o755)
	os.Mkdir(mnt2, 0o755)
	// A failure below kills the daemon: leave no dead mount behind.
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	// --no-fill: the read below misses, as a cold read does.
	if out, err := run(t, "mount", "--no-fill", "--control", sock, "--state-dir", state, dst, mnt); err != nil || !strings.Contains(out, "served by the daemon") {
		t.Fatalf("mount: %q %v", out, err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(got) != "lazyfs\n" {
		t.Fatalf("read: %q %v", got, err)
	}
	// The daemon's --neighbour-window off reached the mount: the miss of a
	// small file queued no fetch of the files after it (by default it does).
	out, err := run(t, "stats", "--json", "--control", sock, "--state-dir", state, mnt)
	var st struct {
		FS fs.Stats `json:"fs"`
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.FS.ChunkMisses == 0 || st.FS.NeighbourJobs != 0 {
		t.Fatalf("stats with the daemon's --neighbour-window off: %+v %v, want a miss and no neighbour job\n%s", st.FS, err, out)
	}
	_, err = run(t, "mount", "--no-daemon", "--cache-dir", cache, "--state-dir", state, dst, mnt2)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("standalone server on the daemon's cache: %v", err)
	}
	daemon.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("daemon exit: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not exit on SIGTERM")
	}
	if isMounted(t, mnt) {
		t.Fatal("mount left after the daemon stopped")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left: %v", err)
	}
}
