package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/node"
)

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	m, err := node.IsLazyfsMount(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMain lets the test binary act as the lazyfs binary when the mount
// command re-executes itself to start a background server.
func TestMain(m *testing.M) {
	// Profiles learned by the tests' mounts (and by the lazyfs processes
	// they start) go to a directory of the run's own, not to the node's.
	if d := os.Getenv("LAZYFS_TEST_PROFILE_DIR"); d != "" {
		defaultProfileDir = d
	}
	// A test binary started with a subcommand (not -test.* flags) is a
	// re-executed lazyfs, even if a test forgot LAZYFS_TEST_MAIN: never
	// let it run the tests again (each would spawn more).
	if os.Getenv("LAZYFS_TEST_MAIN") == "1" || len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		main()
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "lazyfs-test-profiles-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Setenv("LAZYFS_TEST_PROFILE_DIR", dir)
	defaultProfileDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mount tests need root (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("mount tests need /dev/fuse")
	}
}

func TestMountUmount(t *testing.T) {
	needFUSE(t)
	t.Setenv("LAZYFS_TEST_MAIN", "1")
	host := testRegistry(t)
	src, dst := host+"/mnt:1", host+"/mnt:1-lazy"
	pushSample(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	mnt, state := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "state")
	os.Mkdir(mnt, 0o755)
	nodaemon := filepath.Join(tmp, "no-daemon.sock") // no daemon answers here
	common := []string{"--state-dir", state, "--cache-dir", filepath.Join(tmp, "cache"), "--control", nodaemon, "--profile-dir", filepath.Join(tmp, "profiles")}
	t.Cleanup(func() { run(t, "umount", "--state-dir", state, "--control", nodaemon, mnt) })

	// A plain image is refused with advice, and served with --pull.
	_, err := run(t, append(append([]string{"mount"}, common...), src, mnt)...)
	if err == nil || !strings.Contains(err.Error(), "lazyfs convert") || !strings.Contains(err.Error(), "--pull") {
		t.Fatalf("plain image: %v", err)
	}
	if isMounted(t, mnt) {
		t.Fatal("a refused image left a mount")
	}

	out, err := run(t, append(append([]string{"mount"}, common...), dst, mnt)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "mounted") || !isMounted(t, mnt) {
		t.Fatalf("not mounted: %s", out)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "etc/hostname"))
	if err != nil || string(got) != "lazyfs\n" {
		t.Fatalf("read from mount: %q %v", got, err)
	}
	if _, err := run(t, append(append([]string{"mount"}, common...), dst, mnt)...); err == nil || !strings.Contains(err.Error(), "already a lazyfs mount") {
		t.Fatalf("mounting twice on one directory: %v", err)
	}
	out, err = run(t, "stats", "--json", "--state-dir", state, "--control", nodaemon, mnt)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
	var st image.Stats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.FS.Reads == 0 || st.Fetched.Bytes == 0 || st.Fetched.Bytes >= st.ImageSize {
		t.Errorf("after one small read: %d reads, %d of %d bytes fetched", st.FS.Reads, st.Fetched.Bytes, st.ImageSize)
	}
	stateFile, _, _ := node.StatePaths(state, mnt)
	ms, err := node.ReadMountState(state, mnt)
	if err != nil {
		t.Fatalf("no state file %s: %v", stateFile, err)
	}

	if _, err := run(t, "umount", "--state-dir", state, "--control", nodaemon, mnt); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, mnt) || ms.Process.Alive() {
		t.Fatal("still mounted or server still running after umount")
	}
	// The standalone server learned the mount's first-read order in --profile-dir.
	if ents, err := os.ReadDir(filepath.Join(tmp, "profiles")); err != nil || len(ents) != 1 {
		t.Fatalf("profiles learned: %v %v, want one", ents, err)
	}

	// The next mount of the image prefetches it. Then: a server killed
	// outright leaves a stale mount that umount cleans up.
	if _, err := run(t, append(append([]string{"mount"}, common...), dst, mnt)...); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "stats", "--json", "--state-dir", state, "--control", nodaemon, mnt)
	if err != nil {
		t.Fatal(err)
	}
	st = image.Stats{}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.ProfileSource != "node" || st.Prefetch == nil || st.Prefetch.ProfileChunks == 0 {
		t.Fatalf("second mount prefetches no learned profile: %v %s", err, out)
	}
	ms, _ = node.ReadMountState(state, mnt)
	unix.Kill(ms.Process.PID, unix.SIGKILL)
	waitGone(t, ms.Process.PID)
	if _, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err == nil {
		t.Fatal("read succeeded from a mount whose server is dead")
	}
	out, err = run(t, "ls", "--json", "--state-dir", state, "--control", nodaemon)
	if ls := lsUnder(t, out, tmp); err != nil || len(ls) != 1 || ls[0].Kind != node.KindUnserved {
		t.Fatalf("ls of a stale mount: %v %+v", err, ls)
	}
	if _, err := run(t, "umount", "--state-dir", state, "--control", nodaemon, mnt); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, mnt) {
		t.Fatal("stale mount not cleaned up")
	}

	// --pull serves the plain image the same way.
	if _, err := run(t, append(append([]string{"mount", "--pull"}, common...), src, mnt)...); err != nil {
		t.Fatal(err)
	}
	want := toctest.Random(1, 700<<10)
	got, err = os.ReadFile(filepath.Join(mnt, "bin/tool"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("--pull read: %d bytes, %v", len(got), err)
	}
	fi, err := os.Lstat(filepath.Join(mnt, "dev/null"))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("dev/null: %v %v", fi, err)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	return err == nil && strings.Contains(string(b), ") Z ")
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 500 {
		if unix.Kill(pid, 0) != nil || isZombie(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still alive", pid)
}

// TestUmountRefusesForeignMounts: umount only touches lazyfs mounts.
func TestUmountRefusesForeignMounts(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	if _, err := run(t, "umount", "--no-daemon", "--state-dir", t.TempDir(), dir); err == nil || !strings.Contains(err.Error(), "not a lazyfs mount") {
		t.Fatalf("umount of a tmpfs: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Fatal("the tmpfs was unmounted")
	}
}

// TestLinkLine: lazyfs stats says what the mount measured of the link and
// which way it judged it.
func TestLinkLine(t *testing.T) {
	for _, tc := range []struct {
		st   fs.Stats
		want string
	}{
		{fs.Stats{}, "not measured yet (no response of 1 MiB or more)"},
		{fs.Stats{LinkBytesPerSecond: 30 << 20, LinkRTTSeconds: 0.0013, SlowLink: true}, "fastest 30MiB/s, round trip 1.3 ms: slow: fewer bytes per request"},
		{fs.Stats{LinkBytesPerSecond: 150 << 20, LinkRTTSeconds: 0.033, FarLink: true}, "fastest 150MiB/s, round trip 33.0 ms: far: more bytes per round trip"},
		{fs.Stats{LinkBytesPerSecond: 150 << 20, LinkRTTSeconds: 0.0015}, "fastest 150MiB/s, round trip 1.5 ms: fast"},
	} {
		if got := linkLine(tc.st); got != tc.want {
			t.Errorf("linkLine(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}
