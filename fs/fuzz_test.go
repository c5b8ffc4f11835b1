package fs

import (
	"archive/tar"
	"errors"
	"fmt"
	"path"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// fuzzLayers turns fuzz bytes into up to four layers of entries over a small
// name space, with whiteouts, opaque markers and hardlinks among them.
func fuzzLayers(data []byte) [][]toctest.File {
	comps := []string{"a", "b", "c", ".wh.a", ".wh.b", ".wh..wh..opq"}
	layers := [][]toctest.File{nil}
	var names []string
	for i := 0; i+2 < len(data) && i < 3*64; i += 3 {
		op, p1, p2 := data[i], data[i+1], data[i+2]
		depth := 1 + int(p1)%3
		var parts []string
		for d := range depth {
			c := comps[(int(p1)>>(2+d))%3]
			if d == depth-1 {
				c = comps[(int(p1)>>2+int(p2))%len(comps)]
			}
			parts = append(parts, c)
		}
		name := strings.Join(parts, "/")
		h := th(tar.TypeReg, name, int64(p2)&0o7777)
		var f toctest.File
		switch op % 8 {
		case 0:
			if len(layers) < 4 {
				layers = append(layers, nil)
			}
			continue
		case 1:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
			f.Hdr = h
		case 2:
			f = toctest.File{Hdr: h, Data: []byte(strings.Repeat(string(rune('a'+p2%26)), int(p2)))}
		case 3:
			h.Typeflag, h.Linkname = tar.TypeSymlink, fmt.Sprintf("../t%d", p2)
			f.Hdr = h
		case 4:
			if len(names) == 0 {
				continue
			}
			h.Typeflag, h.Linkname = tar.TypeLink, names[int(p2)%len(names)]
			f.Hdr = h
		case 5:
			dir, base := path.Split(name)
			f = toctest.File{Hdr: th(tar.TypeReg, dir+".wh."+strings.TrimPrefix(base, ".wh."), 0o644)}
		case 6:
			dir, _ := path.Split(name)
			f = toctest.File{Hdr: th(tar.TypeReg, dir+".wh..wh..opq", 0o644)}
		case 7:
			h.Typeflag = tar.TypeFifo
			f.Hdr = h
		}
		names = append(names, strings.TrimSuffix(f.Hdr.Name, "/"))
		layers[len(layers)-1] = append(layers[len(layers)-1], f)
	}
	return layers
}

// treeFiles walks a Root's tree in memory as the mount would show it.
func treeFiles(t testing.TB, r *Root) map[string]fileInfo {
	out := map[string]fileInfo{}
	var walk func(p string, i uint32)
	walk = func(p string, i uint32) {
		d := r.t.nodes[i].data
		var a fuse.Attr
		r.fillAttr(d, &a)
		fi := fileInfo{Type: fstest.TypeName(a.Mode), Perm: a.Mode & 0o7777}
		if fi.Type != "dir" {
			fi.Nlink = a.Nlink
		}
		if fi.Type == "reg" || fi.Type == "symlink" {
			fi.Size = int64(a.Size)
		}
		if fi.Type == "symlink" {
			fi.Link = r.t.entry(d).Linkname
		}
		out[p] = fi
		if a.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return
		}
		n := &r.t.nodes[i]
		prev := ""
		for k := n.kids; k < n.kids+n.nkids; k++ {
			name := r.t.name(k)
			if k > n.kids && name <= prev {
				t.Fatalf("%s: children not sorted: %q after %q", p, name, prev)
			}
			prev = name
			if c, ok := r.t.child(i, name); !ok || c != k {
				t.Fatalf("%s: child %q not found by lookup", p, name)
			}
			walk(path.Join(p, name), k)
		}
	}
	walk("", 0)
	return out
}

// FuzzTree builds random layer stacks and checks the tree against the
// reference extraction (merged) and for consistency (overlay).
func FuzzTree(f *testing.F) {
	f.Add([]byte{1, 0, 0, 2, 4, 1, 0, 0, 0, 5, 4, 0, 2, 8, 3})
	f.Add([]byte{2, 4, 9, 4, 8, 0, 0, 0, 0, 6, 4, 0, 2, 4, 7, 4, 5, 1})
	f.Add([]byte{1, 1, 0, 2, 5, 2, 3, 9, 1, 0, 0, 0, 2, 1, 3, 5, 9, 4, 7, 2, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		corpus := fuzzLayers(data)
		var ls []Layer
		ref := &refTree{root: &refNode{kids: map[string]*refNode{}}, lenient: true}
		for i, files := range corpus {
			tb := toctest.Tar(t, files)
			blob, res := toctest.Convert(t, tb, toc.WithChunkSize(toc.MinChunkSize), toc.WithConcurrency(1))
			l := &testLayer{tar: tb, blob: blob, toc: res.TOC, fetcher: fstest.NewBlobFetcher(blob)}
			ls = append(ls, Layer{Name: fmt.Sprint(i), TOC: l.toc, Fetcher: l.fetcher})
			ref.apply(t, tb)
		}
		r, err := NewRoot(ls, Options{ReadAhead: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		want := ref.info().Files
		for p, fi := range want {
			want[p] = fileInfo{Type: fi.Type, Perm: fi.Perm, Size: fi.Size, Link: fi.Link, Nlink: fi.Nlink}
		}
		if d := cmp.Diff(want, treeFiles(t, r)); d != "" {
			t.Fatalf("tree differs from the extraction (-want +got):\n%s", d)
		}
		for _, l := range ls {
			o, err := NewRoot([]Layer{l}, Options{ReadAhead: -1, OverlayWhiteouts: true})
			if errors.Is(err, ErrLowerHardlink) {
				continue // a hardlink whose target this layer lacks: not shown alone
			}
			if err != nil {
				t.Fatal(err)
			}
			treeFiles(t, o)
			o.Close()
		}
	})
}
