package fstest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// FileInfo is what a tree comparison checks of one path.
type FileInfo struct {
	Type   string // dir, reg, symlink, char, block, fifo
	Perm   uint32 // permission bits with setuid, setgid and sticky
	UID    uint32
	GID    uint32
	Size   int64 // regular files and symlinks
	Link   string
	Rdev   uint64
	Mtime  int64 // nanoseconds since the epoch
	Nlink  uint32
	Xattrs map[string]string
	SHA256 string // of a regular file's contents
}

// Tree is a directory tree read by ReadTree: its paths (relative, "" for
// the root) and its hardlink groups.
type Tree struct {
	Files  map[string]FileInfo
	Groups [][]string // sorted groups of paths sharing an inode (size > 1)
}

// ReadTree reads the tree at dir (a mount or an extraction) with lstat,
// readlink, llistxattr and the whole contents of every regular file.
func ReadTree(t testing.TB, dir string) Tree {
	t.Helper()
	tr := Tree{Files: map[string]FileInfo{}}
	groups := map[uint64][]string{}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			rel = ""
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi := FileInfo{Type: TypeName(st.Mode), Perm: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
			Mtime: st.Mtim.Nano(), Xattrs: map[string]string{}}
		switch fi.Type {
		case "reg":
			fi.Size = st.Size
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			fi.SHA256 = hex.EncodeToString(sum[:])
		case "symlink":
			fi.Size = st.Size
			if fi.Link, err = os.Readlink(p); err != nil {
				return err
			}
		case "char", "block":
			fi.Rdev = st.Rdev
		}
		if fi.Type != "dir" {
			fi.Nlink = uint32(st.Nlink)
			groups[st.Ino] = append(groups[st.Ino], rel)
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return err
		}
		for _, k := range strings.Split(string(buf[:n]), "\x00") {
			if k == "" {
				continue
			}
			v := make([]byte, 64<<10)
			m, err := unix.Lgetxattr(p, k, v)
			if err != nil {
				return err
			}
			fi.Xattrs[k] = string(v[:m])
		}
		tr.Files[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.Groups = SortGroups(groups)
	return tr
}

// SortGroups returns the groups of more than one path among g (paths by
// inode), each sorted, in the order of their first paths: Tree.Groups.
func SortGroups(g map[uint64][]string) [][]string {
	var out [][]string
	for _, ps := range g {
		if len(ps) > 1 {
			slices.Sort(ps)
			out = append(out, ps)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// TypeName is FileInfo.Type for a stat mode.
func TypeName(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return "dir"
	case syscall.S_IFREG:
		return "reg"
	case syscall.S_IFLNK:
		return "symlink"
	case syscall.S_IFCHR:
		return "char"
	case syscall.S_IFBLK:
		return "block"
	case syscall.S_IFIFO:
		return "fifo"
	}
	return "?"
}

// ExtractContainerd unpacks the layers' uncompressed tars (bottom first)
// into a new directory with containerd's own applier
// (containerd/v2/pkg/archive.Apply, whiteouts removing what they name) and
// returns it: what a runtime that pulls the image whole would run. It
// needs root (owners, devices, xattrs).
func ExtractContainerd(t testing.TB, tars ...[]byte) string {
	t.Helper()
	dir := t.TempDir()
	for i, b := range tars {
		if _, err := archive.Apply(context.Background(), dir, bytes.NewReader(b)); err != nil {
			t.Fatalf("containerd: apply layer %d: %v", i, err)
		}
	}
	return dir
}

// DiffExtracted compares the tree of a mount (got) with that of
// ExtractContainerd (want) and returns "" when they match. Left out:
// the root's own attributes (containerd ignores a layer's "./" entry) and
// directories' mtimes (extracting touches a directory's mtime whenever it
// creates or removes a name in it; a mount shows the entry's own).
func DiffExtracted(want, got Tree) string {
	norm := func(tr Tree) Tree {
		out := Tree{Files: map[string]FileInfo{}, Groups: tr.Groups}
		for p, fi := range tr.Files {
			if p == "" {
				continue
			}
			if fi.Type == "dir" {
				fi.Mtime = 0
			}
			out.Files[p] = fi
		}
		return out
	}
	return cmp.Diff(norm(want), norm(got))
}
