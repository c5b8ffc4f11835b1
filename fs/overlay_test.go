package fs

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestOverlayfsLowers stacks per-layer mounts (OverlayWhiteouts, each with
// the mounts below as its LowerDirs) under a read-only overlayfs, as the
// snapshotter does, and compares the result with the extraction of all
// layers, attributes of directories a layer has no entry for included.
func TestOverlayfsLowers(t *testing.T) {
	requireFUSE(t)
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(b), "overlay") {
		if out, err := exec.Command("modprobe", "overlay").CombinedOutput(); err != nil {
			t.Skipf("no overlayfs: %v %s", err, out)
		}
	}
	corpus := layeredCorpus()
	// A hardlink into a lower layer cannot be shown by a per-layer mount:
	// such a layer is refused (the snapshotter lets containerd unpack it).
	hl := buildLayers(t, corpus)[1]
	if _, err := NewRoot([]Layer{{Name: "hl", TOC: hl.toc, Fetcher: hl.fetcher}}, Options{OverlayWhiteouts: true}); !errors.Is(err, ErrLowerHardlink) || !strings.Contains(err.Error(), "implicit/hl -> keep/a") {
		t.Fatalf("a layer with a hardlink into a lower one, mounted alone: %v, want ErrLowerHardlink naming it", err)
	}
	var l2 []toctest.File
	for _, f := range corpus[1] {
		if f.Hdr.Name != "implicit/hl" {
			l2 = append(l2, f)
		}
	}
	corpus[1] = l2
	layers := buildLayers(t, corpus)
	// Mounted bottom-up, each layer given the ones below it (LowerDirs),
	// as the snapshotter does; overlayfs lists the top layer first.
	var lowers []string
	for i := range layers {
		dir, _ := mountLayers(t, layers[i:i+1], Options{OverlayWhiteouts: true, Cache: fstest.NewMemCache(), LowerDirs: lowers})
		lowers = append([]string{dir}, lowers...)
	}
	merged := t.TempDir()
	if err := syscall.Mount("overlay", merged, "overlay", syscall.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Skipf("cannot mount overlayfs over FUSE lowers: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(merged, syscall.MNT_DETACH) })

	want, got := reference(t, layers), fstest.ReadTree(t, merged)
	// Directories a layer has no entry for take their attributes from the
	// layers below (LowerDirs), as an extraction keeps them. The link
	// count is the lower inode's: names whited out in upper layers still
	// count (overlayfs behaviour).
	for _, ti := range []treeInfo{want, got} {
		for p, fi := range ti.Files {
			fi.Nlink = 0
			ti.Files[p] = fi
		}
		// containerd's unpack ignores a "./" entry, and so do per-layer
		// mounts; the reference applies it.
		delete(ti.Files, "")
	}
	if d := cmp.Diff(want.Files, got.Files); d != "" {
		t.Fatalf("overlayfs over per-layer mounts differs from the extraction (-want +got):\n%s", d)
	}
}
