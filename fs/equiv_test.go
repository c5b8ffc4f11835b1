package fs

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

const testChunk = 16 << 10

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 600000000, time.UTC)

func th(typ byte, name string, mode int64) tar.Header {
	return tar.Header{Typeflag: typ, Name: name, Mode: mode, Uid: 0, Gid: 0, ModTime: t0, Format: tar.FormatPAX}
}

func reg(name string, mode int64, data []byte) toctest.File {
	return toctest.File{Hdr: th(tar.TypeReg, name, mode), Data: data}
}

func link(typ byte, name, target string) toctest.File {
	h := th(typ, name, 0o777)
	h.Linkname = target
	return toctest.File{Hdr: h}
}

// layeredCorpus returns three layers covering every entry type, whiteouts
// of files, directories and hardlink names, opaque directories, type
// changes, directory attribute changes, implicit parents and hardlinks.
func layeredCorpus() [][]toctest.File {
	l1 := toctest.AllTypes(3*testChunk + 123)
	l1 = append(l1,
		toctest.File{Hdr: th(tar.TypeDir, "usr/lib/", 0o755)},
		reg("usr/lib/old.so", 0o644, toctest.Random(10, 5000)),
		toctest.File{Hdr: th(tar.TypeDir, "usr/share/doc/", 0o755)},
		reg("usr/share/doc/README", 0o644, []byte("read me\n")),
		reg("var/becomes-dir", 0o644, []byte("file first\n")),
		toctest.File{Hdr: th(tar.TypeDir, "var/becomes-file/", 0o755)},
		reg("var/becomes-file/inner", 0o644, []byte("inner\n")),
		reg("keep/a", 0o600, []byte("a\n")),
		link(tar.TypeLink, "keep/a-link", "keep/a"),
		link(tar.TypeLink, "keep/a-link2", "keep/a"),
		reg("same/x", 0o644, []byte("lower x\n")),
	)
	l2 := []toctest.File{
		{Hdr: th(tar.TypeDir, "etc/", 0o750)}, // dir over dir: attributes change, children kept
		reg("etc/.wh.hostname", 0o644, nil),
		reg(".wh.dev", 0o644, nil), // a whole directory removed
		{Hdr: th(tar.TypeDir, "usr/", 0o755)},
		reg("usr/.wh..wh..opq", 0o644, nil), // usr/lib, usr/share, usr/bin gone
		reg("usr/lib/new.so", 0o755, toctest.Random(11, 2*testChunk+7)),
		reg("bin/sh", 0o755, []byte("#!not a symlink any more\n")), // symlink → file
		{Hdr: th(tar.TypeDir, "var/becomes-dir/", 0o700)},
		reg("var/becomes-dir/f", 0o644, []byte("now a dir\n")),
		reg("var/becomes-file", 0o644, []byte("now a file\n")),
		reg("implicit/a/b.txt", 0o644, []byte("parents have no entries\n")),
		link(tar.TypeLink, "implicit/hl", "keep/a"), // hardlink to a lower layer's file
		reg("keep/.wh.a-link2", 0o644, nil),         // one name of a hardlink group removed
		{Hdr: th(tar.TypeDir, "tmp/", 0o700)},
	}
	l3 := []toctest.File{
		reg("etc/hostname", 0o600, []byte("back again\n")),
		reg("same/x", 0o644, []byte("upper x\n")),
		reg("same/.wh.x", 0o644, nil), // a whiteout hides lower layers only, not this one's x
		link(tar.TypeSymlink, "dev", "/proc/self/fd"),
		reg("opaque/new", 0o644, []byte("into an opaque dir\n")),
	}
	return [][]toctest.File{l1, l2, l3}
}

func buildLayers(t testing.TB, corpus [][]toctest.File) []*testLayer {
	var ls []*testLayer
	for _, files := range corpus {
		ls = append(ls, convertLayer(t, toctest.Tar(t, files), testChunk))
	}
	return ls
}

func reference(t testing.TB, layers []*testLayer) treeInfo {
	ref := newRefTree()
	for _, l := range layers {
		ref.apply(t, l.tar)
	}
	return ref.info()
}

func TestEquivalence(t *testing.T) {
	requireFUSE(t)
	corpus := layeredCorpus()
	for _, tc := range []struct {
		name   string
		layers int
	}{{"one-layer", 1}, {"two-layers", 2}, {"three-layers", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			layers := buildLayers(t, corpus[:tc.layers])
			dir, root := mountLayers(t, layers, Options{Cache: fstest.NewMemCache()})
			want := reference(t, layers)
			got := fstest.ReadTree(t, dir)
			if d := cmp.Diff(want, got); d != "" {
				t.Fatalf("mounted tree differs from the extraction (-want +got):\n%s", d)
			}
			if len(got.Groups) == 0 {
				t.Fatal("corpus has no hardlink group")
			}
			if s := root.Stats(); s.EIO != 0 || s.BytesRead == 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// TestCorpusCovers checks that the corpus exercises what the equivalence test claims.
func TestCorpusCovers(t *testing.T) {
	ti := reference(t, buildLayers(t, layeredCorpus()))
	for p, typ := range map[string]string{
		"dev": "symlink", "etc/hostname": "reg", "var/becomes-dir": "dir", "var/becomes-file": "reg",
		"bin/sh": "reg", "implicit/a": "dir", "usr/lib/new.so": "reg",
	} {
		if ti.Files[p].Type != typ {
			t.Errorf("%s: type %q, want %q", p, ti.Files[p].Type, typ)
		}
	}
	for _, p := range []string{"usr/bin/ping", "usr/share", "keep/a-link2", ".wh.removed", "opaque/.wh..wh..opq"} {
		if _, ok := ti.Files[p]; ok {
			t.Errorf("%s present; a whiteout should have removed it", p)
		}
	}
	if ti.Files["same/x"].Size != int64(len("upper x\n")) {
		t.Errorf("same/x: %+v", ti.Files["same/x"])
	}
	one := reference(t, buildLayers(t, layeredCorpus()[:1]))
	for typ := range map[string]bool{"dir": true, "reg": true, "symlink": true, "char": true, "block": true, "fifo": true} {
		found := false
		for _, fi := range one.Files {
			found = found || fi.Type == typ
		}
		if !found {
			t.Errorf("no %s in the corpus", typ)
		}
	}
}

func TestOverlayWhiteouts(t *testing.T) {
	var l2 []toctest.File // without its hardlink into layer 1 (ErrLowerHardlink)
	for _, f := range layeredCorpus()[1] {
		if f.Hdr.Name != "implicit/hl" {
			l2 = append(l2, f)
		}
	}
	layers := buildLayers(t, [][]toctest.File{l2})
	dir, _ := mountLayers(t, layers, Options{OverlayWhiteouts: true, Cache: fstest.NewMemCache()})
	for _, name := range []string{"dev", "etc/hostname", "keep/a-link2"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
			t.Errorf("%s: mode %o rdev %d, want an overlay whiteout (char 0:0)", name, st.Mode, st.Rdev)
		}
	}
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(dir, "usr"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("usr: trusted.overlay.opaque = %q, %v; want y", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dir, "etc"), "trusted.overlay.opaque", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("etc: opaque xattr err %v, want ENODATA", err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "usr"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == ".wh..wh..opq" {
			t.Error("opaque marker listed")
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "usr/lib/new.so"))
	if err != nil || len(b) != 2*testChunk+7 {
		t.Fatalf("read new.so: %d bytes, %v", len(b), err)
	}
}

func TestMetadata(t *testing.T) {
	layers := buildLayers(t, layeredCorpus()[:1])
	dir, root := mountLayers(t, layers, Options{})
	// Missing names: ENOENT, and asked of the daemon once (negative entry).
	for range 3 {
		if _, err := os.Lstat(filepath.Join(dir, "etc/missing")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("missing: %v", err)
		}
	}
	if n := root.Stats().NegLookups; n != 1 {
		t.Errorf("%d lookups of a missing name reached the daemon, want 1 (negative entry cached)", n)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Files != uint64(root.Len()) || sfs.Blocks == 0 || sfs.Bsize != 4096 || sfs.Flags&unix.ST_RDONLY == 0 {
		t.Errorf("statfs %+v", sfs)
	}
	var st0 unix.Stat_t
	if err := unix.Stat(dir, &st0); err != nil {
		t.Fatal(err)
	}
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st0.Dev), unix.Minor(st0.Dev)))
	if want := fmt.Sprint(root.KernelReadAheadKB()); err != nil || strings.TrimSpace(string(ra)) != want {
		t.Errorf("bdi read_ahead_kb = %q, %v; want %s (Root.KernelReadAheadKB)", ra, err, want)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "dev"))
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]os.FileMode{}
	for _, e := range ents {
		types[e.Name()] = e.Type() // d_type, without a stat
	}
	want := map[string]os.FileMode{"null": os.ModeDevice | os.ModeCharDevice, "sda": os.ModeDevice, "fifo": os.ModeNamedPipe}
	if d := cmp.Diff(want, types); d != "" {
		t.Errorf("d_type (-want +got):\n%s", d)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/hostname"), nil, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write: %v, want EROFS", err)
	}
	var st, st2 unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "bin/tool"), &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(dir, "bin/tool-hardlink"), &st2); err != nil {
		t.Fatal(err)
	}
	if st.Ino != st2.Ino || st.Nlink != 2 || st.Mode&syscall.S_ISUID == 0 {
		t.Errorf("hardlinks: ino %d/%d nlink %d mode %o", st.Ino, st2.Ino, st.Nlink, st.Mode)
	}
}

// TestExternalUnmount: umount(2) from outside ends Server.Wait and the Root's work.
func TestExternalUnmount(t *testing.T) {
	requireFUSE(t)
	layers := buildLayers(t, layeredCorpus()[:1])
	root, err := NewRoot([]Layer{{Name: "l", TOC: layers[0].toc, Fetcher: layers[0].fetcher}}, Options{Cache: fstest.NewMemCache()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(dir, root, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Wait did not return after umount")
	}
	if root.ctx.Err() == nil {
		t.Fatal("Root not closed after umount")
	}
}
