package fs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// Tar streams as real registries hold them, each converted, mounted
// through FUSE and compared, file by file (type, bytes, mode, owner,
// mtime, xattrs, link targets, device numbers, hardlink groups, directory
// listings), with what containerd's own applier extracts from the same
// tars. The overlay-specific rules that containerd's plain applier does not
// follow are checked against explicit expectations instead
// (TestLowerSymlinkBecomesDirectory). Cases already covered by
// TestEquivalence (every entry type, whiteouts of files and directories,
// opaque directories, type changes across layers, mtimes before 1970) are
// not repeated.

var rwTime = time.Unix(1700000000, 0)

func rwHdr(typ byte, name string, mode int64) tar.Header {
	return tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: rwTime}
}

func rwFile(name string, mode int64, data string) toctest.File {
	return toctest.File{Hdr: rwHdr(tar.TypeReg, name, mode), Data: []byte(data)}
}

func rwLink(typ byte, name, target string) toctest.File {
	h := rwHdr(typ, name, 0o777)
	h.Linkname = target
	return toctest.File{Hdr: h}
}

// rwHard is a hardlink entry with its target's mode, as tar writers write
// them (both names stat the same inode): containerd applies a hardlink
// header's mode to the inode, lazyfs shows the target entry's.
func rwHard(name, target string, mode int64) toctest.File {
	h := rwHdr(tar.TypeLink, name, mode)
	h.Linkname = target
	return toctest.File{Hdr: h}
}

// formatTar writes files as a tar stream in the given format (headers that
// set their own Format keep it): GNU writes long names as 'L'/'K' entries
// and large numbers in base-256, PAX as extended headers.
func formatTar(t testing.TB, format tar.Format, files []toctest.File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := f.Hdr
		if h.Format == tar.FormatUnknown {
			h.Format = format
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(f.Data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			t.Fatalf("tar data %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mountTars converts each tar (64 KiB chunks, 16 KiB for libraries),
// mounts the layers and returns the mount point.
func mountTars(t *testing.T, tars ...[]byte) string {
	t.Helper()
	var layers []*testLayer
	for _, b := range tars {
		blob, res := toctest.Convert(t, b, toc.WithChunkSize(64<<10), toc.WithLibraryChunkSize(16<<10))
		layers = append(layers, &testLayer{tar: b, blob: blob, toc: res.TOC, fetcher: fstest.NewBlobFetcher(blob)})
	}
	dir, _ := mountLayers(t, layers, Options{Cache: fstest.NewMemCache()})
	return dir
}

// checkLikeContainerd mounts the tars as one merged tree, and as
// per-layer mounts under a read-only overlayfs (as the snapshotter serves
// them), and compares both with containerd's extraction of the tars.
func checkLikeContainerd(t *testing.T, tars ...[]byte) fstest.Tree {
	t.Helper()
	requireFUSE(t)
	want := fstest.ReadTree(t, fstest.ExtractContainerd(t, tars...))
	got := fstest.ReadTree(t, mountTars(t, tars...))
	if d := fstest.DiffExtracted(want, got); d != "" {
		t.Errorf("merged mount differs from containerd's extraction (-containerd +lazyfs):\n%s", d)
	}
	if dir := overlayTars(t, tars...); dir != "" {
		// overlayfs shows a directory's attributes from the topmost layer
		// that has it (a per-layer mount shows 0755 root for one its layer
		// has no entry for), and the lower inode's link count.
		norm := func(tr fstest.Tree) fstest.Tree {
			for p, fi := range tr.Files {
				if fi.Type == "dir" {
					fi = fstest.FileInfo{Type: "dir"}
				}
				fi.Nlink = 0
				tr.Files[p] = fi
			}
			tr.Groups = nil
			return tr
		}
		if d := fstest.DiffExtracted(norm(want), norm(fstest.ReadTree(t, dir))); d != "" {
			t.Errorf("overlayfs over per-layer mounts differs from containerd's extraction (-containerd +lazyfs):\n%s", d)
		}
	}
	return got
}

// overlayTars mounts each tar alone in overlay mode and stacks the mounts
// under a read-only overlayfs; "" if overlayfs is not available.
func overlayTars(t *testing.T, tars ...[]byte) string {
	t.Helper()
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(b), "overlay") {
		if out, err := exec.Command("modprobe", "overlay").CombinedOutput(); err != nil {
			t.Logf("no overlayfs (%v %s): per-layer mounts not checked", err, out)
			return ""
		}
	}
	var lowers []string
	for i := len(tars) - 1; i >= 0; i-- { // overlayfs lists the top layer first
		blob, res := toctest.Convert(t, tars[i], toc.WithChunkSize(64<<10), toc.WithLibraryChunkSize(16<<10))
		l := &testLayer{tar: tars[i], blob: blob, toc: res.TOC, fetcher: fstest.NewBlobFetcher(blob)}
		dir, _ := mountLayers(t, []*testLayer{l}, Options{OverlayWhiteouts: true, Cache: fstest.NewMemCache()})
		lowers = append(lowers, dir)
	}
	if len(lowers) == 1 {
		lowers = append(lowers, t.TempDir()) // overlayfs wants two lowers without an upper
	}
	merged := t.TempDir()
	if err := syscall.Mount("overlay", merged, "overlay", syscall.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Logf("cannot mount overlayfs over FUSE lowers (%v): per-layer mounts not checked", err)
		return ""
	}
	t.Cleanup(func() { syscall.Unmount(merged, syscall.MNT_DETACH) })
	return merged
}

func TestRealWorldTars(t *testing.T) {
	requireFUSE(t)
	longDir := "usr/share/" + strings.Repeat("d", 120)
	names := func() []toctest.File {
		files := []toctest.File{
			{Hdr: rwHdr(tar.TypeDir, longDir+"/", 0o755)},
			rwFile(longDir+"/file.txt", 0o644, "a name of more than 100 bytes\n"),
			rwLink(tar.TypeSymlink, "long-symlink", "../../"+strings.Repeat("t", 150)),
			rwHard("hl-"+strings.Repeat("h", 120), longDir+"/file.txt", 0o644),
			rwFile("latin1-\xe9t\xe9", 0o644, "not UTF-8\n"),
			rwFile("new\nline and \ttab", 0o644, "odd bytes\n"),
			rwFile("big-ids", 0o640, "uid and gid beyond 2^21 and 65535\n"),
			rwFile("y2100", 0o644, "mtime after 2038\n"),
		}
		files[6].Hdr.Uid, files[6].Hdr.Gid = 1<<31-2, 70000
		files[7].Hdr.ModTime = time.Date(2100, 1, 2, 3, 4, 5, 0, time.UTC)
		return files
	}
	chunkEdges := func() []toctest.File {
		var files []toctest.File
		for i, n := range []int{0, 1, 16<<10 - 1, 16 << 10, 16<<10 + 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 3 * 64 << 10} {
			files = append(files,
				rwFile(fmt.Sprintf("data/f%d", n), 0o644, string(toctest.Random(uint64(i), n))),
				rwFile(fmt.Sprintf("lib/lib%d.so.1", n), 0o755, string(toctest.Random(uint64(i+100), n))))
		}
		return files
	}
	one := formatTar(t, tar.FormatPAX, []toctest.File{rwFile("a", 0o644, "a\n")})
	cases := []struct {
		name string
		tars func() [][]byte
		// check, if set, checks what the tree comparison does not show.
		check func(t *testing.T, got fstest.Tree)
	}{
		{name: "gnu-long-names-and-base256", tars: func() [][]byte { return [][]byte{formatTar(t, tar.FormatGNU, names())} }},
		{name: "pax-long-names", tars: func() [][]byte { return [][]byte{formatTar(t, tar.FormatPAX, names())} }},
		{name: "ustar-and-v7", tars: func() [][]byte {
			files := []toctest.File{{Hdr: rwHdr(tar.TypeDir, "etc/", 0o755)}, rwFile("etc/passwd", 0o644, "root:x:0:0\n"),
				rwLink(tar.TypeSymlink, "etc/mtab", "/proc/mounts")}
			v7 := formatTar(t, tar.FormatUSTAR, files)
			for off := 0; off < 3*512; off += 512 { // no magic, version, owner names: a V7 tar
				clear(v7[off+257 : off+345])
				setTarChecksum(v7[off : off+512])
			}
			return [][]byte{formatTar(t, tar.FormatUSTAR, []toctest.File{rwFile("ustar", 0o644, "u\n")}), v7}
		}},
		{name: "chunk-edges", tars: func() [][]byte { return [][]byte{formatTar(t, tar.FormatPAX, chunkEdges())} }},
		{name: "duplicates-last-wins", tars: func() [][]byte {
			return [][]byte{formatTar(t, tar.FormatPAX, []toctest.File{
				rwFile("dup", 0o644, "first\n"),
				rwHard("dup-old", "dup", 0o644), // keeps the first file when dup is replaced
				rwFile("dup", 0o600, "second\n"),
				rwHard("dup-new", "dup", 0o600),
				rwHard("dup-chain", "dup-new", 0o600),
				rwFile("d/child", 0o644, "the directory's entry comes after its children\n"),
				{Hdr: rwHdr(tar.TypeDir, "d/", 0o700)},
				{Hdr: rwHdr(tar.TypeDir, "d/", 0o750)},
				{Hdr: rwHdr(tar.TypeDir, "was-dir/", 0o755)},
				rwFile("was-dir/gone", 0o644, "gone with its directory\n"),
				rwFile("was-dir", 0o644, "a file replaces the directory\n"),
				rwFile("was-file", 0o644, "replaced\n"),
				{Hdr: rwHdr(tar.TypeDir, "was-file/", 0o755)},
				rwLink(tar.TypeSymlink, "sym", "dup"),
				rwHard("hl-to-symlink", "sym", 0o777),
			})}
		}},
		{name: "tar-endings", tars: func() [][]byte {
			b := formatTar(t, tar.FormatPAX, []toctest.File{rwFile("end/a", 0o644, "a\n")})
			return [][]byte{
				b[:len(b)-1024], // no end-of-archive blocks
				formatTar(t, tar.FormatPAX, []toctest.File{rwFile("end/b", 0o644, "b\n")})[:len(b)-512], // one
				append(formatTar(t, tar.FormatPAX, []toctest.File{rwFile("end/c", 0o644, "c\n")}), make([]byte, 10240-len(b)%10240)...),
				append(formatTar(t, tar.FormatPAX, []toctest.File{rwFile("end/d", 0o644, "d\n")}), "garbage after the end of the archive"...),
			}
		}},
		{name: "xattrs", tars: func() [][]byte {
			files := []toctest.File{
				{Hdr: rwHdr(tar.TypeDir, "x/", 0o755)},
				rwFile("x/ping", 0o4755, "capabilities\n"),
				rwFile("x/empty-value", 0o644, "e\n"),
				rwFile("x/big-value", 0o644, "b\n"),
			}
			files[0].Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.dir": "on a directory"}
			files[1].Hdr.PAXRecords = map[string]string{
				"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
				"SCHILY.xattr.user.mime_type":      "application/x-executable",
			}
			files[2].Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.empty": ""}
			files[3].Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.big": strings.Repeat("v", 3000)}
			return [][]byte{formatTar(t, tar.FormatPAX, files)}
		}},
		{name: "whiteouts-three-layers", tars: func() [][]byte {
			return [][]byte{
				formatTar(t, tar.FormatPAX, []toctest.File{
					{Hdr: rwHdr(tar.TypeDir, "k/", 0o755)},
					rwFile("k/a", 0o644, "a\n"),
					rwHard("k/b", "k/a", 0o644),
					rwHard("k/c", "k/a", 0o644),
					{Hdr: rwHdr(tar.TypeDir, "o/", 0o755)},
					rwFile("o/old", 0o644, "old\n"),
					{Hdr: rwHdr(tar.TypeDir, "o/sub/", 0o755)},
					rwFile("o/sub/deep", 0o644, "deep\n"),
					{Hdr: rwHdr(tar.TypeDir, "re/", 0o755)},
					rwFile("re/lower", 0o644, "lower\n"),
					rwFile("re2/lower", 0o644, "lower\n"),
				}),
				formatTar(t, tar.FormatPAX, []toctest.File{
					rwFile("k/.wh.a", 0o644, ""), // the first name of a hardlink group
					rwFile("o/.wh..wh..opq", 0o644, ""),
					rwFile("o/mid", 0o644, "mid\n"),
					{Hdr: rwHdr(tar.TypeDir, "o/sub/", 0o700)},
					rwFile(".wh.re", 0o644, ""), // removed and made again in one layer
					{Hdr: rwHdr(tar.TypeDir, "re/", 0o711)},
					rwFile("re/upper", 0o644, "upper\n"),
					rwFile(".wh.re2", 0o644, ""),
					rwFile("re2/upper", 0o644, "made again without an entry of its own\n"),
				}),
				formatTar(t, tar.FormatPAX, []toctest.File{
					rwFile("k/a", 0o600, "new a\n"),
					rwFile("o/.wh.mid", 0o644, ""),
					rwFile("o/sub/.wh..wh..opq", 0o644, ""),
					rwFile("o/sub/top", 0o644, "top\n"),
				}),
			}
		}},
		{name: "hardlink-metadata-last-wins", tars: func() [][]byte {
			// containerd and Docker apply each hardlink entry's mode,
			// owner, mtime and xattrs to the shared inode: the last one
			// is what every name shows.
			hl := func(name, target string, mode int64, uid int, year int, x string) toctest.File {
				f := rwHard(name, target, mode)
				f.Hdr.Uid, f.Hdr.Gid = uid, uid+1
				f.Hdr.ModTime = time.Date(year, 1, 2, 3, 4, 5, 0, time.UTC)
				f.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.x": x}
				return f
			}
			sl := rwLink(tar.TypeSymlink, "sym", "file")
			file := rwFile("file", 0o644, "data\n")
			file.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.t": "on the target", "SCHILY.xattr.user.x": "replaced"}
			return [][]byte{formatTar(t, tar.FormatPAX, []toctest.File{
				file,
				hl("link1", "file", 0o600, 1234, 2001, "first link"),
				hl("link2", "link1", 0o4711, 4321, 2002, "second link"),
				sl,
				hl("sym-link", "sym", 0o600, 777, 2003, "on a symlink"),
			})}
		}, check: func(t *testing.T, got fstest.Tree) {
			for _, p := range []string{"file", "link1", "link2"} {
				if f := got.Files[p]; f.UID != 4321 || f.Perm != 0o4711 || f.Xattrs["user.t"] != "on the target" || f.Xattrs["user.x"] != "second link" {
					t.Errorf("%s: uid %d perm %o xattrs %v, want the last link's 4321 %o, user.x of the last link and user.t of the target",
						p, f.UID, f.Perm, f.Xattrs, 0o4711)
				}
			}
		}},
		{name: "symlinks", tars: func() [][]byte {
			files := []toctest.File{
				rwLink(tar.TypeSymlink, "abs", "/etc/passwd"),
				rwLink(tar.TypeSymlink, "escape", "../../../../../etc/shadow"),
				rwLink(tar.TypeSymlink, "dangling", "no/such/file"),
				rwLink(tar.TypeSymlink, "mode-0", "abs"),
				rwLink(tar.TypeSymlink, "mode-0644", "abs"),
			}
			files[3].Hdr.Mode, files[4].Hdr.Mode = 0, 0o644 // a symlink's mode is always 0777 on Linux
			return [][]byte{formatTar(t, tar.FormatPAX, files)}
		}},
		{name: "paths-through-own-symlinks", tars: func() [][]byte {
			return [][]byte{formatTar(t, tar.FormatPAX, []toctest.File{
				{Hdr: rwHdr(tar.TypeDir, "usr/", 0o755)},
				{Hdr: rwHdr(tar.TypeDir, "usr/lib/", 0o755)},
				rwFile("usr/lib/libc.so.6", 0o755, "libc\n"),
				rwLink(tar.TypeSymlink, "lib", "usr/lib"),     // usrmerge, relative
				rwLink(tar.TypeSymlink, "lib64", "/usr/lib"),  // absolute: inside the root
				rwLink(tar.TypeSymlink, "up", "../../.."),     // clamped at the root
				rwLink(tar.TypeSymlink, "chain", "lib64/sub"), // through another symlink
				rwFile("lib/libx.so", 0o644, "through a relative symlink\n"),
				rwFile("lib64/ld-linux.so.2", 0o755, "through an absolute one\n"),
				rwFile("up/usr/lib/liby.so", 0o644, "through .. at the root\n"),
				rwFile("chain/z", 0o644, "through two symlinks to a new directory\n"),
				rwHard("usr/bin-libc", "lib/libc.so.6", 0o755), // hardlink target through a symlink
			})}
		}},
		{name: "devices", tars: func() [][]byte {
			files := []toctest.File{
				{Hdr: rwHdr(tar.TypeChar, "dev/null", 0o666)},
				{Hdr: rwHdr(tar.TypeBlock, "dev/nvme0n1p1", 0o660)},
				{Hdr: rwHdr(tar.TypeChar, "dev/big", 0o600)},
				{Hdr: rwHdr(tar.TypeFifo, "run/initctl", 0o600)},
			}
			files[0].Hdr.Devmajor, files[0].Hdr.Devminor = 1, 3
			files[1].Hdr.Devmajor, files[1].Hdr.Devminor = 259, 1
			files[2].Hdr.Devmajor, files[2].Hdr.Devminor = 4000, 70000
			return [][]byte{formatTar(t, tar.FormatPAX, files)}
		}},
		{name: "empty-layers", tars: func() [][]byte {
			return [][]byte{nil, make([]byte, 1024), one, nil, make([]byte, 1024)}
		}},
		{name: "pax-global-header", tars: func() [][]byte {
			g := toctest.File{Hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
				PAXRecords: map[string]string{"comment": "0123456789abcdef (git archive)"}}}
			return [][]byte{formatTar(t, tar.FormatPAX, []toctest.File{g, rwFile("src/main.go", 0o644, "package main\n")})}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := checkLikeContainerd(t, tc.tars()...)
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// setTarChecksum recomputes a tar header block's checksum.
func setTarChecksum(b []byte) {
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// TestLowerSymlinkBecomesDirectory: an upper layer whose paths go through
// a lower layer's symlink (lib -> usr/lib, then lib/x.so) makes a
// directory that hides the symlink, as containerd's overlayfs snapshotter
// and Docker's overlay2 unpack it (each layer into its own directory); the
// lower layer's files stay where they were.
func TestLowerSymlinkBecomesDirectory(t *testing.T) {
	requireFUSE(t)
	dir := mountTars(t,
		formatTar(t, tar.FormatPAX, []toctest.File{
			{Hdr: rwHdr(tar.TypeDir, "usr/lib/", 0o755)},
			rwFile("usr/lib/libc.so.6", 0o755, "libc\n"),
			rwLink(tar.TypeSymlink, "lib", "usr/lib"),
		}),
		formatTar(t, tar.FormatPAX, []toctest.File{rwFile("lib/libx.so", 0o644, "upper\n")}))
	got := fstest.ReadTree(t, dir)
	if fi := got.Files["lib"]; fi.Type != "dir" {
		t.Errorf("lib: %+v, want a directory", fi)
	}
	for p, want := range map[string]bool{"lib/libx.so": true, "usr/lib/libc.so.6": true, "usr/lib/libx.so": false, "lib/libc.so.6": false} {
		if _, ok := got.Files[p]; ok != want {
			t.Errorf("%s present = %v, want %v", p, ok, want)
		}
	}
}

// TestWhiteoutAfterOwnDirectory: a layer that makes a directory and then
// whites out its name (".wh.d" after "d/" and "d/new") hides the lower
// layers' d and keeps its own (OCI: a whiteout applies to lower layers
// only), merged and as a per-layer mount under overlayfs. (containerd's
// plain applier would delete the layer's own d too.)
func TestWhiteoutAfterOwnDirectory(t *testing.T) {
	requireFUSE(t)
	tars := [][]byte{
		formatTar(t, tar.FormatPAX, []toctest.File{rwFile("d/old", 0o644, "lower\n"), rwFile("e/old", 0o644, "lower\n")}),
		formatTar(t, tar.FormatPAX, []toctest.File{
			{Hdr: rwHdr(tar.TypeDir, "d/", 0o755)},
			rwFile("d/new", 0o644, "upper\n"),
			rwFile("e/new", 0o644, "upper\n"), // e has no entry of its own
			rwFile(".wh.d", 0o644, ""),
			rwFile(".wh.e", 0o644, ""),
		}),
	}
	for name, dir := range map[string]string{"merged": mountTars(t, tars...), "overlayfs": overlayTars(t, tars...)} {
		if dir == "" {
			continue
		}
		got := fstest.ReadTree(t, dir)
		for p, want := range map[string]bool{"d/new": true, "e/new": true, "d/old": false, "e/old": false} {
			if _, ok := got.Files[p]; ok != want {
				t.Errorf("%s: %s present = %v, want %v", name, p, ok, want)
			}
		}
	}
}

// TestSymlinkLoopSkipped: an entry under a loop of its own layer's
// symlinks (containerd fails such a layer: too many links) is left out
// with a warning; the links and the rest of the layer are served.
func TestSymlinkLoopSkipped(t *testing.T) {
	requireFUSE(t)
	dir := mountTars(t, formatTar(t, tar.FormatPAX, []toctest.File{
		rwLink(tar.TypeSymlink, "a", "b"),
		rwLink(tar.TypeSymlink, "b", "/a"),
		rwFile("a/x", 0o644, "under a loop\n"),
		rwFile("kept", 0o644, "kept\n"),
	}))
	got := fstest.ReadTree(t, dir)
	if got.Files["a"].Type != "symlink" || got.Files["b"].Type != "symlink" || got.Files["kept"].Type != "reg" || len(got.Files) != 4 {
		t.Errorf("tree %+v", got.Files)
	}
}

// TestUnsupportedTypeSkipped: an entry of a type no runtime unpacks (a
// GNU volume label here), in a TOC written before converters refused them
// (toc.ErrUnsupportedEntry), is left out with a warning, not shown as a
// file whose reads fail.
func TestUnsupportedTypeSkipped(t *testing.T) {
	requireFUSE(t)
	b := formatTar(t, tar.FormatPAX, []toctest.File{rwFile("label", 0o644, ""), rwFile("kept", 0o644, "kept\n")})
	blob, res := toctest.Convert(t, b, toc.WithChunkSize(64<<10))
	tc := *res.TOC
	tc.Entries = append([]toc.Entry(nil), res.TOC.Entries...)
	tc.Entries[0].Type = 'V'
	dir, _ := mountLayers(t, []*testLayer{{tar: b, blob: blob, toc: &tc, fetcher: fstest.NewBlobFetcher(blob)}}, Options{Cache: fstest.NewMemCache()})
	if _, err := os.Lstat(filepath.Join(dir, "label")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("label: %v, want ENOENT", err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(got) != "kept\n" {
		t.Errorf("kept: %q, %v", got, err)
	}
}

// TestHardlinkBeforeTarget: a hardlink whose target comes later in its
// layer is left out with a warning (containerd and Docker fail to unpack
// such a layer), never shown as a wrong or empty file; the rest of the
// layer is served.
func TestHardlinkBeforeTarget(t *testing.T) {
	requireFUSE(t)
	dir := mountTars(t, formatTar(t, tar.FormatPAX, []toctest.File{
		rwHard("early", "late", 0o644),
		rwFile("late", 0o644, "late\n"),
	}))
	if _, err := os.Lstat(filepath.Join(dir, "early")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("early: %v, want ENOENT", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "late")); err != nil || string(b) != "late\n" {
		t.Errorf("late: %q, %v", b, err)
	}
}

// TestSparseFiles: sparse files as GNU tar writes them (PAX 0.0, 0.1 and
// 1.0, and old GNU 'S' with extension blocks) read through the mount
// exactly as containerd unpacks the PAX ones and archive/tar expands all
// of them: zeros in the holes, the stored bytes in the regions, at any
// offset, including reads that cross from a hole into a region. A sparse file in a TOC from before sparse maps still reads EIO,
// never holes or stored bytes at the wrong offsets.
func TestSparseFiles(t *testing.T) {
	requireFUSE(t)
	tars := [][]byte{
		toctest.GNUSparseTar(t, "gnu", "-H", "gnu"),
		toctest.GNUSparseTar(t, "pax00", "-H", "posix", "--sparse-version=0.0"),
		toctest.GNUSparseTar(t, "pax01", "-H", "posix", "--sparse-version=0.1"),
		toctest.GNUSparseTar(t, "pax10", "-H", "posix", "--sparse-version=1.0"),
	}
	// containerd (and Docker) refuse old GNU sparse entries ('S'):
	// "unhandled tar header type 83"; the mount serves them as
	// archive/tar expands them.
	checkLikeContainerd(t, tars[1:]...)
	ref := map[string][]byte{}
	for _, b := range tars {
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if ref[h.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir := mountTars(t, tars...)
	for _, sub := range []string{"gnu", "pax00", "pax01", "pax10"} {
		for _, name := range []string{"many", "tail", "chunks", "holes"} {
			want, ok := ref[sub+"/"+name]
			if !ok {
				t.Fatalf("%s/%s not in the tar", sub, name)
			}
			if got, err := os.ReadFile(filepath.Join(dir, sub, name)); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s/%s: %d bytes (%v) differ from archive/tar's %d", sub, name, len(got), err, len(want))
			}
			// du counts what the file stores, not its holes.
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(dir, sub, name), &st); err != nil {
				t.Fatal(err)
			}
			if st.Blocks*512 >= st.Size/2 {
				t.Errorf("%s/%s: %d blocks for %d bytes mostly holes", sub, name, st.Blocks, st.Size)
			}
			f, err := os.Open(filepath.Join(dir, sub, name))
			if err != nil {
				t.Fatal(err)
			}
			// Reads of odd sizes at odd offsets: inside holes, inside
			// regions, and across their edges.
			for _, at := range []int64{0, 4095, 64 << 10, 64<<10 + 4999, 2<<20 - 5001, 3<<20 - 3, 3<<20 + 17} {
				for _, n := range []int{1, 5000, 70 << 10} {
					if at >= int64(len(want)) {
						continue
					}
					got := make([]byte, n)
					k, err := f.ReadAt(got, at)
					if err != nil && err != io.EOF {
						t.Fatalf("%s/%s: read %d at %d: %v", sub, name, n, at, err)
					}
					if w := want[at:min(int64(len(want)), at+int64(n))]; !bytes.Equal(got[:k], w) {
						t.Errorf("%s/%s: %d bytes at %d differ from archive/tar's", sub, name, n, at)
					}
				}
			}
			f.Close()
		}
	}

	// A TOC from before sparse maps: the sparse flag without a map or
	// chunks.
	blob, res := toctest.Convert(t, tars[3], toc.WithChunkSize(64<<10))
	old := *res.TOC
	old.Entries = append([]toc.Entry(nil), res.TOC.Entries...)
	old.Chunks = nil
	for i := range old.Entries {
		e := &old.Entries[i]
		if e.Flags&toc.FlagSparseMap != 0 {
			e.Flags &^= toc.FlagSparseMap
			e.NumChunks, e.Ext = 0, nil
			continue
		}
		cs := res.TOC.EntryChunks(e)
		e.FirstChunk = uint32(len(old.Chunks))
		old.Chunks = append(old.Chunks, cs...)
	}
	dec, err := toc.Unmarshal(old.Marshal())
	if err != nil {
		t.Fatalf("old TOC: %v", err)
	}
	dir, _ = mountLayers(t, []*testLayer{{tar: tars[3], blob: blob, toc: dec, fetcher: fstest.NewBlobFetcher(blob)}}, Options{Cache: fstest.NewMemCache()})
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(dir, "pax10/many"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 3<<20 {
		t.Errorf("old TOC: many: size %d, want %d", st.Size, 3<<20)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "pax10/many")); !errors.Is(err, syscall.EIO) {
		t.Errorf("old TOC: read many: %d bytes, %v; want EIO", len(got), err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "pax10/plain")); err != nil || string(got) != "after the sparse files\n" {
		t.Errorf("old TOC: plain: %q, %v", got, err)
	}
}
