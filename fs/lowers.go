package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MaxLowerDirs bounds Options.LowerDirs: directories past it are not looked at.
const MaxLowerDirs = 1024

// lowerDirsBudget bounds the time a Root spends reading the attributes of
// its implicit directories from its lower directories (a lower that is a
// hung FUSE mount must not hold the mount up).
const lowerDirsBudget = 10 * time.Second

// dirAttr is what an implicit directory shows when a layer below has it
// (Options.LowerDirs).
type dirAttr struct {
	mode      uint32 // permission bits, setuid, setgid and sticky included
	uid, gid  uint32
	mtime     int64
	mtimeNsec uint32
}

// implicitDirs returns the implicit directories of t other than the root,
// with their paths ("a/b"), in breadth-first order, leaving out those below
// an opaque directory of the layer itself (which keeps the lower
// directory's attributes, as containerd's unpack creates it, but hides
// what is below it).
func (t *tree) implicitDirs() (ids []uint32, paths []string) {
	type item struct {
		id   uint32
		path string
	}
	queue := []item{{0, ""}}
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		n := &t.nodes[it.id]
		for k := n.kids; k < n.kids+n.nkids; k++ {
			if !t.isDir(k) {
				continue
			}
			p := path.Join(it.path, t.name(k))
			if t.nodes[k].kind == kindImplicitDir {
				ids, paths = append(ids, k), append(paths, p)
			}
			if t.nodes[k].flags&flagOpaque == 0 {
				// An opaque directory keeps the lower one's attributes
				// but hides what is below it.
				queue = append(queue, item{k, p}) // an entry's subtree may hold implicit directories too
			}
		}
	}
	return ids, paths
}

// borrowLowerAttrs gives the implicit directories of a per-layer tree (the
// parents a layer's tar has no entry for) the attributes containerd's
// unpack leaves them: unpacking into an overlay of the layers below,
// writing a/b/x into a directory a/b that a lower layer has copies that
// directory up with its mode, owner and mtime (a /tmp of 1777 stays 1777),
// and overlayfs shows the upper-most layer's attributes for a merged
// directory. So each implicit directory takes them from the first of lowers
// (the directories of the layers below, the nearest first) where the path
// is a directory, reached without following symlinks; a whiteout, a
// non-directory, a symlink on the way or an opaque directory above it in a
// lower hides the layers below it, and the directory keeps 0755, root,
// mtime 0, as containerd creates a missing parent. The root, whose entry
// ("./") containerd's unpack ignores, takes the owner (and mtime) of the
// nearest lower's root and keeps 0755, as the snapshotter's upper
// directory does. Lowers that cannot be read within lowerDirsBudget are given up
// with a warning.
func (t *tree) borrowLowerAttrs(lowers []string, log *slog.Logger) {
	if len(lowers) == 0 {
		return
	}
	if len(lowers) > MaxLowerDirs {
		log.Warn("too many lower directories; only the nearest are looked at", "lowers", len(lowers), "max", MaxLowerDirs)
		lowers = lowers[:MaxLowerDirs]
	}
	ids, paths := t.implicitDirs()
	done := make(chan map[uint32]dirAttr, 1)
	go func() { done <- lowerAttrs(lowers, ids, paths, log) }()
	select {
	case t.dirs = <-done:
	case <-time.After(lowerDirsBudget):
		// The goroutine stays in its syscall until the lower answers; its
		// result is dropped.
		log.Warn("lower directories did not answer; implicit directories keep default attributes",
			"lowers", len(lowers), "after", lowerDirsBudget)
	}
}

func lowerAttrs(lowers []string, ids []uint32, paths []string, log *slog.Logger) map[uint32]dirAttr {
	fds := make([]int, 0, len(lowers))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, d := range lowers {
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			// A lower that is not there hides nothing below it: skipping
			// it is what overlayfs would show if it were empty.
			log.Warn("lower directory unreadable; skipped", "dir", d, "err", err)
			continue
		}
		fds = append(fds, fd)
	}
	attrs := map[uint32]dirAttr{}
	if len(fds) == 0 {
		return attrs
	}
	var st unix.Stat_t
	if unix.Fstat(fds[0], &st) == nil {
		attrs[0] = dirAttr{mode: 0o755, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec, mtimeNsec: uint32(st.Mtim.Nsec)}
	}
	for i, p := range paths {
		if a, ok := lowerDir(fds, p); ok {
			attrs[ids[i]] = a
		}
	}
	return attrs
}

// lowerDir returns the attributes of directory p in the first of lowers
// that shows it, as overlayfs would.
func lowerDir(lowers []int, p string) (dirAttr, bool) {
	for _, fd := range lowers {
		a, err := statBeneath(fd, p)
		switch {
		case err == nil:
			return a, true
		case errors.Is(err, unix.ENOENT):
			if opaqueAbove(fd, p) {
				return dirAttr{}, false
			}
			continue // not in this layer: look below
		default:
			// A whiteout or another non-directory (ENOTDIR), a symlink on
			// the way (ELOOP): this layer hides p in the layers below.
			return dirAttr{}, false
		}
	}
	return dirAttr{}, false
}

func statBeneath(dirfd int, p string) (dirAttr, error) {
	fd, err := unix.Openat2(dirfd, p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return dirAttr{}, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return dirAttr{}, err
	}
	return dirAttr{mode: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Sec, mtimeNsec: uint32(st.Mtim.Nsec)}, nil
}

// opaqueAbove reports whether a directory above p in the layer at dirfd is
// opaque (trusted.overlay.opaque=y): it hides the layers below from there.
func opaqueAbove(dirfd int, p string) bool {
	for q := path.Dir(p); q != "." && q != "/"; q = path.Dir(q) {
		fd, err := unix.Openat2(dirfd, q, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		if err != nil {
			continue
		}
		var buf [8]byte
		n, err := unix.Getxattr(fmt.Sprintf("/proc/self/fd/%d", fd), "trusted.overlay.opaque", buf[:])
		unix.Close(fd)
		if err == nil && strings.TrimRight(string(buf[:n]), "\x00") == "y" {
			return true
		}
	}
	return false
}
