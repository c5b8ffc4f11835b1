package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/internal/node"
)

// startServe starts lazyfs serve (this test binary as lazyfs) with its
// state in root and a RAM cache (a cold cache at every start), and waits
// until it answers on sock. kill sends it sig and waits for its exit.
func startServe(t *testing.T, sock, root string) (kill func(syscall.Signal)) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d := exec.Command(self, "serve", "--control", sock, "--root", root, "--cache-dir", ":memory:", "--cache-size", "64MiB")
	d.Env = append(os.Environ(), "LAZYFS_TEST_MAIN=1")
	var logs bytes.Buffer
	d.Stdout, d.Stderr = &logs, &logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { d.Wait(); close(exited) }()
	kill = func(sig syscall.Signal) {
		d.Process.Signal(sig)
		<-exited
	}
	t.Cleanup(func() {
		kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, err := node.NewClient(sock, time.Second).Health(ctx); err == nil {
			return kill
		}
		select {
		case <-ctx.Done():
			t.Fatal("daemon not answering")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestServeKilledKeepsProfile: a daemon SIGKILLed while its mount is up
// (nothing unmounted, nothing stopped) has still stored the profile the
// mount learned, and the restarted daemon's first cold mount of the image
// prefetches it. The daemon's autosave defaults apply (the recording is
// stored once it has been idle 5 s).
func TestServeKilledKeepsProfile(t *testing.T) {
	needFUSE(t)
	t.Setenv("LAZYFS_TEST_MAIN", "1")
	host := testRegistry(t)
	src, dst := host+"/bb:1", host+"/bb:1-lazy"
	pushBusybox(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	sock, root, state := filepath.Join(tmp, "run", "control.sock"), filepath.Join(tmp, "root"), filepath.Join(tmp, "state")
	mnt := filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	// Whatever fails, no mount outlives the test (cleanups run last-first:
	// this one after the daemons are killed).
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })

	kill := startServe(t, sock, root)
	if out, err := run(t, "mount", "--no-fill", "--control", sock, "--state-dir", state, dst, mnt); err != nil {
		t.Fatalf("mount: %q %v", out, err)
	}
	for _, f := range []string{"etc/group", "srv/data.bin"} {
		if _, err := os.ReadFile(filepath.Join(mnt, f)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		if ents, _ := filepath.Glob(filepath.Join(root, "profiles", "sha256-*.json")); len(ents) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the daemon stored no profile while its mount was up")
		case <-time.After(50 * time.Millisecond):
		}
	}
	kill(syscall.SIGKILL)
	if out, err := run(t, "umount", "--control", sock, "--state-dir", state, mnt); err != nil { // the stale mount
		t.Fatalf("umount of the killed daemon's mount: %q %v", out, err)
	}

	startServe(t, sock, root)
	if out, err := run(t, "mount", "--no-fill", "--control", sock, "--state-dir", state, dst, mnt); err != nil {
		t.Fatalf("mount after the restart: %q %v", out, err)
	}
	defer run(t, "umount", "--control", sock, "--state-dir", state, mnt)
	out, err := run(t, "stats", "--json", "--control", sock, "--state-dir", state, mnt)
	if err != nil {
		t.Fatal(err)
	}
	var st image.Stats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	// srv/data.bin alone is 600 KiB: 3 chunks at the default 256 KiB.
	if st.ProfileSource != "node" || st.Prefetch == nil || st.Prefetch.ProfileChunks < 4 {
		t.Fatalf("cold mount after the kill: %s, want the profile the killed daemon learned", out)
	}
}
