package fs

import (
	"archive/tar"
	"log/slog"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// OCI whiteout names.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// overlayOpaqueXattr marks an opaque directory for overlayfs.
const overlayOpaqueXattr = "trusted.overlay.opaque"

const noEntry = ^uint32(0)

// Node kinds.
const (
	kindEntry       uint8 = iota // backed by a TOC entry
	kindImplicitDir              // a directory no layer has an entry for
	kindWhiteout                 // an overlayfs whiteout (char 0:0) made from a ".wh.NAME" entry
)

// Node flags.
const (
	flagOpaque uint8 = 1 << iota // overlay mode: the directory carries trusted.overlay.opaque=y
)

// node is one name in the tree. Nodes are numbered in breadth-first order
// with every directory's children consecutive and sorted by name, so a
// directory needs only the index of its first child and their count. Its
// attributes and contents are those of node data (itself, or the first name
// of a hardlink group); the inode number is data+1.
type node struct {
	kids  uint32 // first child (directories)
	nkids uint32 // number of children
	data  uint32 // node holding attributes and contents
	entry uint32 // TOC entry that names this node (noEntry for implicit directories)
	layer uint16 // layer of entry
	kind  uint8
	flags uint8
}

// tree is the immutable, compact directory tree of a Root.
type tree struct {
	layers []*layer
	nodes  []node
	names  map[uint32]string // names of nodes that have no entry
	// dirs holds the attributes implicit directories take from the
	// layers below a per-layer mount (Options.LowerDirs); others show
	// 0755, root, mtime 0.
	dirs  map[uint32]dirAttr
	nlink map[uint32]uint32 // link counts of hardlinked nodes (others have 1)
	// meta maps the data node of a hardlink group to the entry whose
	// mode, owner, mtime and xattrs the group shows: its last hardlink
	// entry, which containerd and Docker apply to the shared inode when
	// they unpack it (the data entry keeps type, size and contents).
	meta map[uint32]metaRef
	size int64 // sum of regular file sizes, for statfs
	// danglingLinks counts hardlinks left out for want of their target;
	// danglingLink names the first.
	danglingLinks int
	danglingLink  string
}

// metaRef names a TOC entry: layer and index.
type metaRef struct {
	layer uint16
	entry uint32
}

// xattrEntries returns the entries whose xattrs node d (a data node) has,
// the one that wins a key first: a hardlink group's last link entry, then
// its data entry (an unpacker sets the link's xattrs on the target's inode,
// keeping the target's others).
func (t *tree) xattrEntries(d uint32) []*toc.Entry {
	e := t.entry(d)
	if e == nil {
		return nil
	}
	if m, ok := t.meta[d]; ok {
		return []*toc.Entry{&t.layers[m.layer].toc.Entries[m.entry], e}
	}
	return []*toc.Entry{e}
}

// metaEntry returns the entry that gives node d (a data node) its mode
// bits, owner, mtime and xattrs.
func (t *tree) metaEntry(d uint32) *toc.Entry {
	if m, ok := t.meta[d]; ok {
		return &t.layers[m.layer].toc.Entries[m.entry]
	}
	return t.entry(d)
}

func (t *tree) entry(i uint32) *toc.Entry {
	n := &t.nodes[i]
	if n.entry == noEntry {
		return nil
	}
	return &t.layers[n.layer].toc.Entries[n.entry]
}

// name returns node i's name in its directory.
func (t *tree) name(i uint32) string {
	n := &t.nodes[i]
	if n.entry == noEntry {
		return t.names[i]
	}
	s := t.layers[n.layer].toc.Entries[n.entry].Name
	s = s[strings.LastIndexByte(s, '/')+1:]
	if n.kind == kindWhiteout {
		s = s[len(whiteoutPrefix):]
	}
	return s
}

// child finds the child of directory dir called name.
func (t *tree) child(dir uint32, name string) (uint32, bool) {
	n := &t.nodes[dir]
	lo, hi := n.kids, n.kids+n.nkids
	for lo < hi {
		m := lo + (hi-lo)/2
		if t.name(m) < name {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < n.kids+n.nkids && t.name(lo) == name {
		return lo, true
	}
	return 0, false
}

// mode returns the type and permission bits of node i.
func (t *tree) mode(i uint32) uint32 {
	n := &t.nodes[i]
	switch n.kind {
	case kindImplicitDir:
		if a, ok := t.dirs[i]; ok {
			return syscall.S_IFDIR | a.mode
		}
		return syscall.S_IFDIR | 0o755
	case kindWhiteout:
		return syscall.S_IFCHR
	}
	e := t.entry(i)
	if e.Type == tar.TypeSymlink {
		// Linux ignores a symlink's mode and always shows 0777, whatever
		// the tar header says (an extraction's lchmod does nothing).
		return syscall.S_IFLNK | 0o777
	}
	return typeBits(e.Type) | uint32(t.metaEntry(i).Mode&0o7777)
}

func (t *tree) isDir(i uint32) bool { return t.mode(t.nodes[i].data)&syscall.S_IFMT == syscall.S_IFDIR }

func typeBits(typ byte) uint32 {
	switch typ {
	case tar.TypeDir:
		return syscall.S_IFDIR
	case tar.TypeSymlink:
		return syscall.S_IFLNK
	case tar.TypeChar:
		return syscall.S_IFCHR
	case tar.TypeBlock:
		return syscall.S_IFBLK
	case tar.TypeFifo:
		return syscall.S_IFIFO
	default:
		return syscall.S_IFREG
	}
}

// bnode is a node while the tree is being built.
type bnode struct {
	node
	name string           // only for implicit directories
	kids map[string]int32 // directories only
}

type builder struct {
	layers  []*layer
	nodes   []bnode
	log     *slog.Logger
	overlay bool
	meta    map[int32]metaRef // tree.meta, by builder node
	// danglingLinks counts hardlinks skipped for want of their target;
	// danglingLink is the first, "path -> target".
	danglingLinks int
	danglingLink  string
}

func (b *builder) newNode(li int, ei uint32, kind uint8, name string) int32 {
	i := int32(len(b.nodes))
	b.nodes = append(b.nodes, bnode{node: node{data: uint32(i), entry: ei, layer: uint16(li), kind: kind}, name: name})
	if kind == kindImplicitDir || (kind == kindEntry && b.layers[li].toc.Entries[ei].Type == tar.TypeDir) {
		b.nodes[i].kids = map[string]int32{}
	}
	return i
}

func (b *builder) isDir(i int32) bool { return b.nodes[i].kids != nil }

// lookup walks p ("" is the root) and returns its node, or -1.
func (b *builder) lookup(p string) int32 {
	cur := int32(0)
	for p != "" {
		var c string
		c, p, _ = strings.Cut(p, "/")
		if !b.isDir(cur) {
			return -1
		}
		next, ok := b.nodes[cur].kids[c]
		if !ok {
			return -1
		}
		cur = next
	}
	return cur
}

// maxSymlinks bounds the symlinks followed resolving one entry's parent
// directories (containerd's bound, continuity's fs.RootPath).
const maxSymlinks = 255

// ownSymlink returns the target of node i if it is a symlink that layer li
// put there (itself, or a hardlink to one).
func (b *builder) ownSymlink(li int, i int32) (string, bool) {
	n := &b.nodes[i]
	if n.kind != kindEntry || int(n.layer) != li {
		return "", false
	}
	d := &b.nodes[n.data]
	if d.kind != kindEntry {
		return "", false
	}
	if e := &b.layers[d.layer].toc.Entries[d.entry]; e.Type == tar.TypeSymlink {
		return e.Linkname, true
	}
	return "", false
}

// resolveDir walks the directory path p ("" is the root) for an entry of
// layer li and returns its node, or -1 when a name on the way is missing
// or not a directory (create false) or when symlinks loop. A symlink that
// layer li itself put on the way is followed, inside the root (an
// absolute target starts at the root, ".." stops there), as containerd and
// Docker do when they unpack a layer into its own directory; a lower
// layer's symlink is not: there, create makes a directory that hides it,
// as the layer's own directory does in an overlay. With create, missing
// names become implicit directories and non-directories are replaced, as
// extraction would.
func (b *builder) resolveDir(li int, p string, create bool) int32 {
	var buf [32]int32
	stack := append(buf[:0], 0) // the directories walked, the root first
	hops := 0
	for p != "" {
		var c string
		c, p, _ = strings.Cut(p, "/")
		cur := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		next, ok := b.nodes[cur].kids[c]
		if ok {
			if target, link := b.ownSymlink(li, next); link {
				if hops++; hops > maxSymlinks {
					return -1
				}
				if strings.HasPrefix(target, "/") {
					stack = stack[:1]
				}
				if p != "" {
					target += "/" + p
				}
				p = target
				continue
			}
		}
		if !ok || !b.isDir(next) {
			if !create {
				return -1
			}
			wh := ok && b.nodes[next].kind == kindWhiteout
			next = b.newNode(0, noEntry, kindImplicitDir, c)
			b.nodes[cur].kids[c] = next
			if wh { // as for a directory entry over its own layer's whiteout
				b.nodes[next].flags |= flagOpaque
			}
		}
		stack = append(stack, next)
	}
	return stack[len(stack)-1]
}

// lookupFrom returns the node at p for an entry of layer li: its parent
// directories resolved as resolveDir does, its last name not followed
// (a hardlink to a symlink links the symlink). -1 if there is none.
func (b *builder) lookupFrom(li int, p string) int32 {
	dir, base := path.Split(p)
	d := b.resolveDir(li, strings.TrimSuffix(dir, "/"), false)
	if d < 0 {
		return -1
	}
	if base == "" {
		return d
	}
	if i, ok := b.nodes[d].kids[base]; ok {
		return i
	}
	return -1
}

// add places entry ei of layer li at its path.
func (b *builder) add(li int, ei uint32) {
	e := &b.layers[li].toc.Entries[ei]
	if e.Name == "" {
		// containerd's and Docker's unpacks ignore an entry that resolves
		// to the root ("./"): a layer's own directory keeps what the
		// snapshotter gave it, and so do a per-layer mount's root
		// (borrowLowerAttrs) and the merged view's.
		return
	}
	dir, base := path.Split(e.Name)
	parent := b.resolveDir(li, strings.TrimSuffix(dir, "/"), true)
	if parent < 0 {
		b.log.Warn("too many symlinks in the entry's directories; entry skipped",
			"layer", b.layers[li].name, "path", e.Name)
		return
	}
	old, exists := b.nodes[parent].kids[base]
	kind := kindEntry
	if b.overlay && strings.HasPrefix(base, whiteoutPrefix) {
		kind = kindWhiteout
		base = base[len(whiteoutPrefix):]
		if k, exists := b.nodes[parent].kids[base]; exists {
			// A whiteout hides lower layers only, never an entry (or a
			// parent of one) of its own layer; a directory of its own
			// layer that it names hides the lower layers' whole (opaque),
			// as in the merged tree.
			if b.isDir(k) {
				b.nodes[k].flags |= flagOpaque
			}
			return
		}
	}
	if kind == kindEntry && e.Type == tar.TypeDir && exists && b.isDir(old) {
		// A directory over a directory: new attributes, children kept.
		n := &b.nodes[old]
		n.entry, n.layer, n.kind = ei, uint16(li), kindEntry
		return
	}
	if e.Type == tar.TypeLink && kind == kindEntry {
		target := b.lookupFrom(li, e.Linkname)
		if target < 0 || b.isDir(target) {
			b.log.Warn("hardlink target missing; entry skipped",
				"layer", b.layers[li].name, "path", e.Name, "target", e.Linkname)
			if b.danglingLinks == 0 {
				b.danglingLink = e.Name + " -> " + e.Linkname
			}
			b.danglingLinks++
			return
		}
		i := b.newNode(li, ei, kind, "")
		d := b.nodes[target].data
		b.nodes[i].data = d
		b.nodes[parent].kids[base] = i
		if b.meta == nil {
			b.meta = map[int32]metaRef{}
		}
		b.meta[int32(d)] = metaRef{layer: uint16(li), entry: ei}
		return
	}
	i := b.newNode(li, ei, kind, "")
	b.nodes[parent].kids[base] = i
	if exists && b.nodes[old].kind == kindWhiteout && b.isDir(i) {
		// Removed and made again in one layer: the lower layers' directory
		// stays hidden.
		b.nodes[i].flags |= flagOpaque
	}
}

// applyWhiteouts applies the OCI whiteouts of layer li to the tree built
// from the layers below it.
func (b *builder) applyWhiteouts(li int) {
	for ei := range b.layers[li].toc.Entries {
		e := &b.layers[li].toc.Entries[ei]
		dir, base := path.Split(e.Name)
		if !strings.HasPrefix(base, whiteoutPrefix) {
			continue
		}
		d := b.lookup(strings.TrimSuffix(dir, "/"))
		if d < 0 || !b.isDir(d) {
			continue
		}
		switch {
		case base == whiteoutOpaque:
			clear(b.nodes[d].kids)
		case strings.HasPrefix(base, whiteoutMeta):
			// Other AUFS metadata (.wh..wh.plnk, ...): ignored.
		default:
			delete(b.nodes[d].kids, base[len(whiteoutPrefix):])
		}
	}
}

// addLayer adds layer li's entries: merged (whiteouts applied and hidden)
// or, in overlay mode, with whiteouts turned into overlayfs ones.
func (b *builder) addLayer(li int) {
	entries := b.layers[li].toc.Entries
	if !b.overlay {
		b.applyWhiteouts(li)
	}
	for ei := range entries {
		e := &entries[ei]
		base := e.Name[strings.LastIndexByte(e.Name, '/')+1:]
		if strings.HasPrefix(base, whiteoutPrefix) {
			if !b.overlay {
				continue
			}
			if base == whiteoutOpaque {
				dir, _ := path.Split(e.Name)
				if d := b.resolveDir(li, strings.TrimSuffix(dir, "/"), true); d >= 0 {
					b.nodes[d].flags |= flagOpaque
				}
				continue
			}
			if strings.HasPrefix(base, whiteoutMeta) || len(base) == len(whiteoutPrefix) {
				continue
			}
		}
		if !shownType(e.Type) {
			// Converters refuse these (toc.ErrUnsupportedEntry); an older
			// or foreign one may have let one through: no contents to serve.
			b.log.Warn("entry of an unsupported tar type skipped",
				"layer", b.layers[li].name, "path", e.Name, "type", string(e.Type))
			continue
		}
		b.add(li, uint32(ei))
	}
}

// shownType reports whether the tree shows entries of tar type typ.
func shownType(typ byte) bool {
	switch typ {
	case tar.TypeReg, 0, tar.TypeCont, tar.TypeGNUSparse, tar.TypeLink, tar.TypeSymlink,
		tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return true
	}
	return false
}

// buildTree builds the tree of layers, bottom layer first.
func buildTree(layers []*layer, overlay bool, log *slog.Logger) *tree {
	n := 0
	for _, l := range layers {
		n += len(l.toc.Entries)
	}
	b := &builder{layers: layers, nodes: make([]bnode, 0, n+1), log: log, overlay: overlay}
	b.newNode(0, noEntry, kindImplicitDir, "")
	for li := range layers {
		b.addLayer(li)
	}
	t := b.freeze()
	t.danglingLinks, t.danglingLink = b.danglingLinks, b.danglingLink
	return t
}

// freeze numbers the reachable nodes breadth-first (children consecutive and
// sorted) and returns the compact tree. Nodes reachable only as the data of
// a hardlink (their first name was replaced) are kept after the others.
func (b *builder) freeze() *tree {
	t := &tree{layers: b.layers, names: map[uint32]string{}, nlink: map[uint32]uint32{}}
	newID := make([]int32, len(b.nodes))
	for i := range newID {
		newID[i] = -1
	}
	order := make([]int32, 0, len(b.nodes))
	order = append(order, 0)
	newID[0] = 0
	var names []string
	for q := 0; q < len(order); q++ {
		bn := &b.nodes[order[q]]
		if bn.kids == nil {
			continue
		}
		names = names[:0]
		for name := range bn.kids {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			c := bn.kids[name]
			newID[c] = int32(len(order))
			order = append(order, c)
			if b.nodes[c].entry == noEntry {
				t.names[uint32(newID[c])] = name
			}
		}
	}
	reachable := len(order)
	refs := map[int32]uint32{}
	for _, o := range order[:reachable] {
		if !b.isDir(o) {
			refs[int32(b.nodes[o].data)]++
		}
	}
	for _, o := range order[:reachable] {
		if d := int32(b.nodes[o].data); newID[d] < 0 {
			newID[d] = int32(len(order))
			order = append(order, d)
		}
	}
	t.nodes = make([]node, len(order))
	for ni, o := range order {
		bn := &b.nodes[o]
		n := bn.node
		n.data = uint32(newID[bn.data])
		if bn.kids != nil && ni < reachable {
			n.nkids = uint32(len(bn.kids))
			if n.nkids > 0 {
				// Children are consecutive: the first one is the smallest id.
				first := int32(len(order))
				for _, c := range bn.kids {
					first = min(first, newID[c])
				}
				n.kids = uint32(first)
			}
		}
		t.nodes[ni] = n
		if e := t.entry(uint32(ni)); e != nil && e.IsRegular() && ni < reachable && n.data == uint32(ni) {
			t.size += e.Size
		}
	}
	for d, c := range refs {
		if c > 1 {
			t.nlink[uint32(newID[d])] = c
		}
	}
	for d, m := range b.meta {
		if newID[d] >= 0 {
			if t.meta == nil {
				t.meta = map[uint32]metaRef{}
			}
			t.meta[uint32(newID[d])] = m
		}
	}
	if len(t.names) == 0 {
		t.names = nil
	}
	if len(t.nlink) == 0 {
		t.nlink = nil
	}
	return t
}
