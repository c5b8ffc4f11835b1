package fs

import (
	"archive/tar"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestImplicitDirsFromLowers: the directories a layer's tar leaves out (as
// Bazel's and crane's layers do) take mode, owner and mtime from the
// nearest lower layer that shows them, as containerd's unpack into an
// overlay leaves them; where a lower hides the layers below (a whiteout, a
// symlink on the way, an opaque directory) or none has them, 0755 root.
func TestImplicitDirsFromLowers(t *testing.T) {
	requireFUSE(t)
	upper, lower := t.TempDir(), t.TempDir()
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	mkdir := func(root, p string, mode os.FileMode, uid int) {
		t.Helper()
		d := filepath.Join(root, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(d, uid, uid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(d, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	// The nearest lower ("upper" here): /tmp, a whiteout, a symlink and an
	// opaque directory over what the farther one has.
	mkdir(upper, "tmp", 0o777|os.ModeSticky, 0)
	mkdir(upper, "home/user", 0o750, 1000)
	if err := unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/elsewhere", filepath.Join(upper, "link")); err != nil {
		t.Fatal(err)
	}
	mkdir(upper, "opaque", 0o755, 0)
	if err := unix.Setxattr(filepath.Join(upper, "opaque"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("no trusted xattrs here: %v", err)
	}
	if err := os.Lchown(upper, 42, 43); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"gone/sub", "link/sub", "opaque/sub", "only-lower/sub", "own/sub"} {
		mkdir(lower, p, 0o700, 7)
	}
	mkdir(lower, "tmp", 0o700, 7) // hidden by the nearer one's
	mkdir(upper, "made-opaque/sub", 0o711, 9)
	mkdir(upper, "made-opaque", 0o700, 5)

	dot := toctest.File{Hdr: th(tar.TypeDir, "./", 0o700)} // ignored, as containerd's unpack ignores it
	dot.Hdr.Uid = 1000
	layer := buildLayers(t, [][]toctest.File{{
		dot,
		reg("tmp/x", 0o644, []byte("x")),
		reg("home/user/.profile", 0o644, []byte("p")),
		reg("gone/sub/x", 0o644, []byte("x")),
		reg("link/sub/x", 0o644, []byte("x")),
		reg("opaque/sub/x", 0o644, []byte("x")),
		reg("only-lower/sub/x", 0o644, []byte("x")),
		reg("nowhere/x", 0o644, []byte("x")),
		reg("made-opaque/.wh..wh..opq", 0o644, nil), // its directory left out
		reg("made-opaque/sub/y", 0o644, []byte("y")),
		{Hdr: th(tar.TypeDir, "own/", 0o711)},
		reg("own/sub/x", 0o644, []byte("x")),
	}})
	dir, _ := mountLayers(t, layer, Options{OverlayWhiteouts: true, Cache: fstest.NewMemCache(),
		LowerDirs: []string{upper, filepath.Join(t.TempDir(), "missing"), lower}})

	type attr struct {
		mode     uint32
		uid, gid uint32
		mtime    int64
	}
	want := map[string]attr{
		"":                {0o755, 42, 43, -1}, // the root: the owner, never the mode
		"tmp":             {0o1777, 0, 0, mtime.Unix()},
		"home":            {0o755, 0, 0, -1},
		"home/user":       {0o750, 1000, 1000, mtime.Unix()},
		"gone/sub":        {0o755, 0, 0, 0}, // whited out in the nearer lower
		"link/sub":        {0o755, 0, 0, 0}, // a symlink there: never followed
		"opaque/sub":      {0o755, 0, 0, 0}, // below an opaque directory
		"only-lower/sub":  {0o700, 7, 7, mtime.Unix()},
		"nowhere":         {0o755, 0, 0, 0},
		"own/sub":         {0o700, 7, 7, mtime.Unix()}, // under the layer's own directory: still merged
		"made-opaque":     {0o700, 5, 5, mtime.Unix()}, // opaque: the lower's attributes, not its contents
		"made-opaque/sub": {0o755, 0, 0, 0},
	}
	for p, w := range want {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		got := attr{st.Mode & 0o7777, st.Uid, st.Gid, st.Mtim.Sec}
		if w.mtime < 0 {
			got.mtime = -1
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || got != w {
			t.Errorf("%q: mode %o uid %d gid %d mtime %d, want directory %o %d %d %d", p, st.Mode, got.uid, got.gid, got.mtime, w.mode, w.uid, w.gid, w.mtime)
		}
	}
}
