package fs

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// testLayer is a converted layer with its fetcher.
type testLayer struct {
	tar     []byte
	blob    []byte
	toc     *toc.TOC
	fetcher *fstest.BlobFetcher
}

func convertLayer(t testing.TB, tarball []byte, chunkSize int) *testLayer {
	t.Helper()
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(chunkSize))
	return &testLayer{tar: tarball, blob: blob, toc: res.TOC, fetcher: fstest.NewBlobFetcher(blob)}
}

func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// mountLayers mounts the layers (bottom first) in a temp dir, unmounted at cleanup.
func mountLayers(t testing.TB, layers []*testLayer, opts Options) (string, *Root) {
	t.Helper()
	return mountLayersWith(t, layers, opts, MountOptions{})
}

func mountLayersWith(t testing.TB, layers []*testLayer, opts Options, mo MountOptions) (string, *Root) {
	t.Helper()
	requireFUSE(t)
	ls := make([]Layer, len(layers))
	for i, l := range layers {
		ls[i] = Layer{Name: "test/layer" + string(rune('0'+i)), TOC: l.toc, Fetcher: l.fetcher}
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	root, err := NewRoot(ls, opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := Mount(dir, root, mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			// Still busy (a failed test left a file open): detach it so
			// that nothing blocks on a server that is about to exit.
			t.Errorf("unmount: %v", err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir, root
}

// dropCache drops the page cache of the file at p.
func dropCache(t testing.TB, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// fileInfo and treeInfo are what the equivalence tests compare: a path's
// attributes and contents, and a whole tree (fstest.ReadTree reads a mount).
type (
	fileInfo = fstest.FileInfo
	treeInfo = fstest.Tree
)

// Reference applier: an in-memory extraction of the layers' tar streams
// (read with archive/tar, independent of the TOC) with OCI whiteout rules.

type refFile struct {
	hdr  tar.Header
	data []byte
}

type refNode struct {
	f    *refFile // shared by the names of a hardlink group; nil for implicit dirs
	kids map[string]*refNode
}

func (n *refNode) isDir() bool { return n.kids != nil }

type refTree struct {
	root    *refNode
	lenient bool // skip hardlinks to missing targets (as fs does) instead of failing
}

func newRefTree() *refTree { return &refTree{root: &refNode{kids: map[string]*refNode{}}} }

func refClean(name string) string {
	name = path.Clean("/" + name)
	return strings.TrimPrefix(name, "/")
}

func (r *refTree) lookup(p string) *refNode {
	n := r.root
	for _, c := range strings.Split(p, "/") {
		if c == "" {
			continue
		}
		if !n.isDir() {
			return nil
		}
		if n = n.kids[c]; n == nil {
			return nil
		}
	}
	return n
}

// resolveDir walks the directory p for an entry of the layer being
// applied, following the symlinks that layer made (mine) inside the root
// and replacing anything else that is not a directory (create) as
// extraction into the layer's own directory does; nil if a name is
// missing (create false) or symlinks loop.
func (r *refTree) resolveDir(p string, mine map[*refNode]bool, create bool) *refNode {
	parts := strings.Split(p, "/")
	stack := []*refNode{r.root}
	for hops := 0; len(parts) > 0; {
		c := parts[0]
		parts = parts[1:]
		n := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		k := n.kids[c]
		if k != nil && mine[k] && k.f != nil && k.f.hdr.Typeflag == tar.TypeSymlink {
			if hops++; hops > 255 {
				return nil
			}
			if strings.HasPrefix(k.f.hdr.Linkname, "/") {
				stack = stack[:1]
			}
			parts = append(strings.Split(k.f.hdr.Linkname, "/"), parts...)
			continue
		}
		if k == nil || !k.isDir() {
			if !create {
				return nil
			}
			k = &refNode{kids: map[string]*refNode{}}
			n.kids[c] = k
		}
		stack = append(stack, k)
	}
	return stack[len(stack)-1]
}

// apply extracts one layer.
func (r *refTree) apply(t testing.TB, tarball []byte) {
	t.Helper()
	var files []*refFile
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, &refFile{hdr: *h, data: data})
	}
	// Whiteouts apply to the layers below only: first, all of them.
	for _, f := range files {
		name := refClean(f.hdr.Name)
		dir, base := path.Split(name)
		if !strings.HasPrefix(base, ".wh.") {
			continue
		}
		d := r.lookup(dir)
		if d == nil || !d.isDir() {
			continue
		}
		if base == ".wh..wh..opq" {
			d.kids = map[string]*refNode{}
		} else if !strings.HasPrefix(base, ".wh..wh.") {
			delete(d.kids, strings.TrimPrefix(base, ".wh."))
		}
	}
	mine := map[*refNode]bool{} // the names this layer made
	for _, f := range files {
		name := refClean(f.hdr.Name)
		dir, base := path.Split(name)
		if strings.HasPrefix(base, ".wh.") || f.hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if name == "" {
			continue // the root: containerd's and Docker's unpacks ignore it
		}
		parent := r.resolveDir(dir, mine, true)
		if parent == nil {
			continue // symlinks loop: the entry is skipped
		}
		old := parent.kids[base]
		var n *refNode
		switch {
		case f.hdr.Typeflag == tar.TypeDir && old != nil && old.isDir():
			old.f = f
			continue
		case f.hdr.Typeflag == tar.TypeDir:
			n = &refNode{f: f, kids: map[string]*refNode{}}
		case f.hdr.Typeflag == tar.TypeLink:
			ldir, lbase := path.Split(refClean(f.hdr.Linkname))
			var target *refNode
			if d := r.resolveDir(ldir, mine, false); d != nil {
				target = d.kids[lbase]
			}
			if target == nil || target.isDir() {
				if r.lenient {
					continue
				}
				t.Fatalf("reference: hardlink %s to missing %s", name, f.hdr.Linkname)
			}
			// containerd and Docker apply the link entry's owner,
			// mtime, mode (not a symlink's) and xattrs (added to the
			// target's) to the shared inode.
			tf, lh := target.f, &f.hdr
			tf.hdr.Uid, tf.hdr.Gid, tf.hdr.ModTime = lh.Uid, lh.Gid, lh.ModTime
			if tf.hdr.Typeflag != tar.TypeSymlink {
				tf.hdr.Mode = tf.hdr.Mode&^0o7777 | lh.Mode&0o7777
			}
			for k, v := range lh.PAXRecords {
				if strings.HasPrefix(k, "SCHILY.xattr.") {
					if tf.hdr.PAXRecords == nil {
						tf.hdr.PAXRecords = map[string]string{}
					}
					tf.hdr.PAXRecords[k] = v
				}
			}
			n = &refNode{f: tf}
		default:
			n = &refNode{f: f}
		}
		parent.kids[base] = n
		mine[n] = true
	}
}

// info returns the tree as the mount should show it.
func (r *refTree) info() treeInfo {
	ti := treeInfo{Files: map[string]fileInfo{}}
	ids := map[*refFile]uint64{}
	groups := map[uint64][]string{}
	var walk func(p string, n *refNode)
	walk = func(p string, n *refNode) {
		fi := fileInfo{Type: "dir", Perm: 0o755, Xattrs: map[string]string{}}
		if f := n.f; f != nil {
			h := &f.hdr
			fi.Perm = uint32(h.Mode) & 0o7777
			fi.UID, fi.GID = uint32(h.Uid), uint32(h.Gid)
			fi.Mtime = h.ModTime.UnixNano()
			for k, v := range h.PAXRecords {
				if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
					// Linux keeps user.* xattrs on files and directories only.
					if strings.HasPrefix(x, "user.") && h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir {
						continue
					}
					fi.Xattrs[x] = v
				}
			}
			if !n.isDir() {
				if _, ok := ids[f]; !ok {
					ids[f] = uint64(len(ids) + 1)
				}
				groups[ids[f]] = append(groups[ids[f]], p)
			}
			switch h.Typeflag {
			case tar.TypeDir:
			case tar.TypeSymlink:
				fi.Type, fi.Link, fi.Size = "symlink", h.Linkname, int64(len(h.Linkname))
				fi.Perm = 0o777 // Linux shows no other mode for a symlink
			case tar.TypeChar:
				fi.Type, fi.Rdev = "char", unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
			case tar.TypeBlock:
				fi.Type, fi.Rdev = "block", unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
			case tar.TypeFifo:
				fi.Type = "fifo"
			default:
				sum := sha256.Sum256(f.data)
				fi.Type, fi.Size, fi.SHA256 = "reg", int64(len(f.data)), hex.EncodeToString(sum[:])
			}
		}
		ti.Files[p] = fi
		for name, k := range n.kids {
			walk(path.Join(p, name), k)
		}
	}
	walk("", r.root)
	for p, fi := range ti.Files {
		if fi.Type != "dir" {
			fi.Nlink = uint32(len(groups[ids[r.lookup(p).f]]))
			ti.Files[p] = fi
		}
	}
	ti.Groups = fstest.SortGroups(groups)
	return ti
}
