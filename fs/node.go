package fs

import (
	"context"
	"slices"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/lazyfs/lazyfs/fs/toc"
	"golang.org/x/sys/unix"
)

// inode is the go-fuse node of one inode of the tree: the data node idx
// (shared by every name of a hardlink group).
type inode struct {
	gofs.Inode
	r   *Root
	idx uint32
}

var (
	_ gofs.NodeLookuper    = (*inode)(nil)
	_ gofs.NodeReaddirer   = (*inode)(nil)
	_ gofs.NodeGetattrer   = (*inode)(nil)
	_ gofs.NodeReadlinker  = (*inode)(nil)
	_ gofs.NodeGetxattrer  = (*inode)(nil)
	_ gofs.NodeListxattrer = (*inode)(nil)
	_ gofs.NodeStatfser    = (*inode)(nil)
	_ gofs.NodeOpener      = (*inode)(nil)
)

// Node returns the root node, for mounting with go-fuse directly.
func (r *Root) Node() gofs.InodeEmbedder { return &inode{r: r, idx: 0} }

func (r *Root) fillAttr(d uint32, a *fuse.Attr) {
	t := r.t
	n := &t.nodes[d]
	a.Ino = uint64(d) + 1
	a.Mode = t.mode(d)
	a.Nlink = 1
	a.Blksize = 4096
	if c, ok := t.nlink[d]; ok {
		a.Nlink = c
	}
	if a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		a.Nlink = 2
		for k := n.kids; k < n.kids+n.nkids; k++ {
			if t.isDir(k) {
				a.Nlink++
			}
		}
		a.Size = 4096
	}
	e := t.entry(d)
	if e == nil {
		if da, ok := t.dirs[d]; ok {
			a.Uid, a.Gid = da.uid, da.gid
			a.Mtime, a.Mtimensec = uint64(da.mtime), da.mtimeNsec
			a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
			a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
		}
		return
	}
	m := t.metaEntry(d)
	a.Uid, a.Gid = uint32(m.UID), uint32(m.GID)
	a.Mtime, a.Mtimensec = uint64(m.ModTimeSec), uint32(m.ModTimeNsec)
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	if n.kind == kindWhiteout {
		return
	}
	switch a.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		a.Size = uint64(e.Size)
	case syscall.S_IFLNK:
		a.Size = uint64(len(e.Linkname))
	case syscall.S_IFCHR, syscall.S_IFBLK:
		a.Rdev = uint32(unix.Mkdev(e.Devmajor, e.Devminor))
	}
	a.Blocks = (a.Size + 511) / 512
	if e.Flags&toc.FlagSparseMap != 0 {
		// What it occupies: its regions, as an unpacked sparse file would.
		l := t.layers[t.nodes[d].layer]
		a.Blocks = (uint64(l.sparseStart(e, len(e.SparseMap()))) + 511) / 512
	}
}

// Lookup finds a child; missing names are cached by the kernel for NegativeTimeout.
func (n *inode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	r := n.r
	r.stats.lookups.Add(1)
	c, ok := r.t.child(n.idx, name)
	if !ok {
		r.stats.neglookups.Add(1)
		return nil, syscall.ENOENT
	}
	d := r.t.nodes[c].data
	r.fillAttr(d, &out.Attr)
	out.SetEntryTimeout(r.opts.EntryTimeout)
	out.SetAttrTimeout(r.opts.AttrTimeout)
	ch := n.NewInode(ctx, &inode{r: r, idx: d}, gofs.StableAttr{Mode: out.Attr.Mode & syscall.S_IFMT, Ino: out.Attr.Ino})
	return ch, 0
}

func (n *inode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.r.fillAttr(n.idx, &out.Attr)
	out.SetTimeout(n.r.opts.AttrTimeout)
	return 0
}

func (n *inode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	e := n.r.t.entry(n.idx)
	if e == nil || n.r.t.mode(n.idx)&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(e.Linkname), 0
}

// overlayXattr reports whether an xattr belongs to overlayfs (opaque,
// redirect, metacopy, origin, ...). A layer's own ones are never served: an
// image must not steer the overlayfs stacked on a per-layer mount, and the
// opaque marker is generated from ".wh..wh..opq" whiteouts only.
func overlayXattr(key string) bool {
	return strings.HasPrefix(key, "trusted.overlay.") || strings.HasPrefix(key, "user.overlay.")
}

// servesXattr reports whether the xattr key of the entry is shown: not an
// overlayfs one (overlayXattr) nor any trusted.* (which containerd does
// not set when it unpacks: an image must not), and user.* only on regular files and
// directories, the only inodes Linux lets have them (containerd ignores
// them elsewhere when it unpacks; listed, they would fail to read).
func (n *inode) servesXattr(key string) bool {
	if overlayXattr(key) || strings.HasPrefix(key, "trusted.") {
		// containerd never sets trusted.* from a layer either.
		return false
	}
	if strings.HasPrefix(key, "user.") {
		switch n.r.t.mode(n.idx) & syscall.S_IFMT {
		case syscall.S_IFREG, syscall.S_IFDIR:
		default:
			return false
		}
	}
	return true
}

// Getxattr returns an xattr of the entry (overlayfs ones filtered, see
// overlayXattr), and trusted.overlay.opaque on opaque directories in overlay mode.
func (n *inode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	var val string
	var ok bool
	if attr == overlayOpaqueXattr && n.r.t.nodes[n.idx].flags&flagOpaque != 0 {
		val, ok = "y", true
	} else if n.r.t.nodes[n.idx].kind == kindEntry && n.servesXattr(attr) {
		for _, e := range n.r.t.xattrEntries(n.idx) {
			if val, ok = e.Xattr(attr); ok {
				break
			}
		}
	}
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (n *inode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var need int
	var list []byte
	add := func(k string) {
		need += len(k) + 1
		if need <= len(dest) {
			list = append(append(list, k...), 0)
		}
	}
	if n.r.t.nodes[n.idx].kind == kindEntry {
		es := n.r.t.xattrEntries(n.idx)
		for j, e := range es {
			for _, kv := range e.Xattrs() {
				if n.servesXattr(kv.Key) && (j == 0 || !slices.ContainsFunc(es[:j], func(o *toc.Entry) bool { _, dup := o.Xattr(kv.Key); return dup })) {
					add(kv.Key)
				}
			}
		}
	}
	if n.r.t.nodes[n.idx].flags&flagOpaque != 0 {
		add(overlayOpaqueXattr)
	}
	if need > len(dest) {
		return uint32(need), syscall.ERANGE
	}
	return uint32(copy(dest, list)), 0
}

func (n *inode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	t := n.r.t
	out.Bsize, out.Frsize, out.NameLen = 4096, 4096, 255
	out.Blocks = uint64(t.size+4095) / 4096
	out.Files = uint64(len(t.nodes))
	return 0
}

func (n *inode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	nd := &n.r.t.nodes[n.idx]
	return &dirStream{t: n.r.t, next: nd.kids, end: nd.kids + nd.nkids}, 0
}

// dirStream lists a directory's children straight from the tree.
type dirStream struct {
	t         *tree
	next, end uint32
}

func (s *dirStream) HasNext() bool { return s.next < s.end }

func (s *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	c := s.next
	s.next++
	d := s.t.nodes[c].data
	return fuse.DirEntry{Name: s.t.name(c), Mode: s.t.mode(d) & syscall.S_IFMT, Ino: uint64(d) + 1}, 0
}

func (s *dirStream) Close() {}

// Open opens a regular file read-only; the kernel may keep its page cache.
func (n *inode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.r.t.mode(n.idx)&syscall.S_IFMT != syscall.S_IFREG {
		return nil, 0, syscall.EINVAL
	}
	return n.r.open(ctx, n.idx)
}
