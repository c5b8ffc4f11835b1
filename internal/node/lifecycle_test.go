package node_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/image/imagetest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

// TestStandaloneBusyTermination: a standalone mount server told to stop
// (SIGTERM cancels its context) while a file in the mount is open detaches
// the mount (the directory is free at once), keeps serving the open file,
// and returns only once it is closed: no reader ever sees a dead mount.
// Its state file, socket and their directory are private.
func TestStandaloneBusyTermination(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	data := toctest.Random(31, 300<<10)
	ref := reg.PushConverted(t, "busy", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: data}})
	dir, stateDir := mountDir(t, "mnt"), filepath.Join(t.TempDir(), "state")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan image.Stats, 1)
	done := make(chan error, 1)
	go func() {
		done <- node.ServeStandalone(ctx, node.StandaloneConfig{
			Node: node.Config{Root: t.TempDir(), CacheDir: node.MemoryCache, CacheSize: 1 << 30},
			Ref:  ref, Dir: dir, StateDir: stateDir,
			Ready: func(st image.Stats) { ready <- st },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(time.Minute):
		t.Fatal("not ready")
	}
	statePath, sock, _ := node.StatePaths(stateDir, dir)
	for p, want := range map[string]os.FileMode{statePath: 0o600, sock: 0o600, filepath.Dir(statePath): 0o700, stateDir: 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %v", p, fi, err, want)
		}
	}
	st, err := node.ReadMountState(stateDir, dir)
	if err != nil || st.Process.PID != os.Getpid() || st.Process.StartTime == 0 || st.Process.Cmdline == "" {
		t.Fatalf("state: %+v %v", st, err)
	}

	f, err := os.Open(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 10)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	cancel() // SIGTERM
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, _ := node.IsLazyfsMount(dir); !m {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("busy mount neither unmounted nor detached")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("server returned (%v) while a file in its mount is open", err)
	default:
	}
	rest, err := io.ReadAll(f)
	if err != nil || len(rest) != len(data)-10 || string(rest[:100]) != string(data[10:110]) {
		t.Fatalf("reading the open file after detach: %d bytes, %v", len(rest), err)
	}
	f.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server still running after the last open file was closed")
	}
	if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}

// TestUnmountNeverSignalsADecoy: a state file left by a SIGKILLed server
// names a PID that now belongs to an unrelated process (the decoy).
// lazyfs umount cleans the stale mount and state and leaves the decoy alone.
func TestUnmountNeverSignalsADecoy(t *testing.T) {
	needFUSE(t)
	decoy := exec.Command("sleep", "60")
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { decoy.Process.Kill(); decoy.Wait() })
	// Until the child has exec'd, /proc shows the test binary's command line.
	var real node.ProcessID
	for deadline := time.Now().Add(10 * time.Second); !strings.HasPrefix(real.Cmdline, "sleep"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("decoy not started: %+v", real)
		}
		real, _ = node.ReadProcess(decoy.Process.Pid)
	}
	stateDir := filepath.Join(t.TempDir(), "state")
	dir := mountDir(t, "mnt")
	statePath, sock, logPath := node.StatePaths(stateDir, dir)
	// What the dead server recorded: same PID, its own start time and command line.
	stale := node.MountState{Process: node.ProcessID{PID: real.PID, StartTime: real.StartTime - 1, Cmdline: "lazyfs mount --foreground r " + dir},
		Dir: dir, Ref: "r", Socket: sock, Log: logPath}
	if err := node.WriteJSONPrivate(statePath, stale); err != nil {
		t.Fatal(err)
	}
	if stale.Process.Alive() {
		t.Fatal("a process with another start time counts as alive")
	}
	if !real.Alive() {
		t.Fatal("the decoy does not count as alive")
	}
	deadMount(t, dir)
	uc := node.UnmountConfig{StateDir: stateDir, NoDaemon: true, Timeout: 2 * time.Second}
	rep, err := node.UnmountDir(context.Background(), dir, uc)
	if err != nil || !strings.Contains(rep, "not signalled") {
		t.Fatalf("umount: %q %v", rep, err)
	}
	if m, _ := node.IsLazyfsMount(dir); m {
		t.Fatal("stale mount left")
	}
	if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale state left: %v", err)
	}
	// Same decoy, same PID, the command line differs only.
	stale.Process.StartTime = real.StartTime
	if err := node.WriteJSONPrivate(statePath, stale); err != nil {
		t.Fatal(err)
	}
	if _, err := node.UnmountDir(context.Background(), dir, uc); err != nil {
		t.Fatalf("umount of a state without a mount: %v", err)
	}
	if !real.Alive() {
		t.Fatal("umount signalled the decoy")
	}
	if _, err := node.UnmountDir(context.Background(), dir, uc); err == nil || !strings.Contains(err.Error(), "not a lazyfs mount") {
		t.Fatalf("umount of nothing: %v", err)
	}
}

// TestUnmountPinnedByAnotherNamespace: a process that unshared its mount
// namespace while a mount existed holds a private copy of it, so after the
// unmount here the kernel keeps the FUSE connection (and its server
// goroutines) alive. Unmount detects it, aborts the connection, frees the
// mount, and says so.
func TestUnmountPinnedByAnotherNamespace(t *testing.T) {
	needFUSE(t)
	reg := imagetest.New(t)
	ref := reg.PushConverted(t, "pinned", []toctest.File{{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644}, Data: []byte("pinned")}})
	n := newNode(t, nil)
	dir := mountDir(t, "mnt")
	m, err := n.MountImage(context.Background(), ref, dir, node.ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("unshare", "-m", "--propagation", "private", "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Skipf("unshare: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	procDir := filepath.Join("/proc", strconv.Itoa(holder.Process.Pid))
	copyPath := filepath.Join(procDir, "root", dir, "f")
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Skipf("mount namespaces: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// Until unshare has run, the holder's root is ours, and reading
		// the file through it proves nothing: wait for its own namespace.
		ns, _ := os.Readlink(filepath.Join(procDir, "ns", "mnt"))
		if b, err := os.ReadFile(copyPath); err == nil && string(b) == "pinned" && ns != "" && ns != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other namespace has no copy of the mount")
		}
	}
	srv := node.NewClient(serveControl(t, n), 30*time.Second)
	note, err := srv.UnmountNote(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(note, "another mount namespace") {
		t.Errorf("note %q does not report the pinning namespace", note)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server still runs for the other namespace")
	}
	if m, _ := node.IsLazyfsMount(dir); m {
		t.Fatal("still mounted here")
	}
	if _, err := os.ReadFile(copyPath); err == nil {
		t.Fatal("the other namespace's copy still reads")
	}
}

// serveControl serves n's control API on a socket in a temp dir until the test ends.
func serveControl(t *testing.T, n *node.Node) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl", "control.sock")
	ln, err := node.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); node.ServeListener(ctx, ln, n.Handler()) }()
	t.Cleanup(func() { cancel(); <-served })
	return sock
}
