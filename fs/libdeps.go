package fs

import (
	"bytes"
	"debug/elf"
	"path"
	"strings"
	"syscall"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Bounds on what libraryDeps takes from an image's (untrusted) ELF file.
const (
	maxDepsInput = 16 << 20 // bytes of a library parsed for its dependencies
	maxDeps      = 256      // DT_NEEDED entries used
	maxDepName   = 255      // bytes of one name
	maxRunpath   = 16       // DT_RUNPATH/DT_RPATH directories used
	maxLinkHops  = 16       // symlinks followed resolving one path
)

// libraryDeps returns the DT_NEEDED names and the DT_RUNPATH (or, without
// one, DT_RPATH) directories of the ELF shared object b. Anything that is
// not a well-formed ELF file gives nothing: b comes from an image, and a
// hostile one gets no more than maxDeps names of maxDepName bytes.
func libraryDeps(b []byte) (needed, runpath []string) {
	if len(b) > maxDepsInput {
		return nil, nil
	}
	defer func() {
		if recover() != nil { // debug/elf on hostile input: give up, never crash the mount
			needed, runpath = nil, nil
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, nil
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, nil
	}
	for _, n := range libs {
		if len(needed) == maxDeps {
			break
		}
		if n != "" && len(n) <= maxDepName && !strings.ContainsAny(n, "/\x00") {
			needed = append(needed, n)
		}
	}
	rp, err := f.DynString(elf.DT_RUNPATH)
	if err != nil || len(rp) == 0 {
		rp, _ = f.DynString(elf.DT_RPATH)
	}
	for _, s := range rp {
		for _, d := range strings.Split(s, ":") {
			if len(runpath) < maxRunpath && d != "" && len(d) <= 4096 {
				runpath = append(runpath, d)
			}
		}
	}
	return needed, runpath
}

// libraryDirs are the directories the dynamic loader searches after a
// library's own run path (glibc's defaults and Debian's multiarch ones).
var libraryDirs = []string{
	"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
	"lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu",
	"usr/local/lib", "lib64", "usr/lib64", "lib", "usr/lib",
}

// prefetchDeps queues whole-library fetches for the libraries that library
// e (at name, all of its chunks local) names as DT_NEEDED, found as the
// loader would find them: the library's run path ($ORIGIN expanded), its
// own directory, then the default directories. The loader opens them next,
// one after another; each found now is one blocking round trip less. Each
// library is parsed once per Root.
func (r *Root) prefetchDeps(l *layer, e *toc.Entry) {
	if e.Size > maxDepsInput || e.NumChunks == 0 || e.Flags&toc.FlagSparse != 0 || r.lean() {
		return
	}
	buf := make([]byte, e.Size)
	t := l.toc
	base := t.Chunks[e.FirstChunk].Offset
	for i := int(e.FirstChunk); i < int(e.FirstChunk+e.NumChunks); i++ {
		c := &t.Chunks[i]
		if !r.cacheRead(r.bgctx, c, buf, 0, c.Offset-base) {
			return // not local after all (a failed fetch): the loader will say
		}
	}
	needed, runpath := libraryDeps(buf)
	origin := path.Dir(e.Name)
	var dirs []string
	for _, d := range runpath {
		d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", "/"+origin), "$ORIGIN", "/"+origin)
		if strings.Contains(d, "$") {
			continue // $LIB, $PLATFORM: not expanded
		}
		dirs = append(dirs, strings.TrimPrefix(path.Clean("/"+d), "/"))
	}
	dirs = append(append(dirs, origin), libraryDirs...)
	for _, n := range needed {
		for _, d := range dirs {
			i, ok := r.resolve(path.Join(d, n))
			if !ok || r.t.mode(i)&syscall.S_IFMT != syscall.S_IFREG {
				continue
			}
			if _, seen := r.depsSeen.Load(i); !seen {
				dl, de := r.t.dataEntry(i)
				r.prefetchLibrary(dl, de, i)
			}
			break
		}
	}
}

// resolve finds the node (its data node) at path p, relative to the root,
// following symlinks (at most maxLinkHops) as the kernel would inside the
// mount.
func (r *Root) resolve(p string) (uint32, bool) {
	parts := strings.Split(p, "/")
	var dir []string // the path walked so far
	i := uint32(0)
	hops := 0
	for len(parts) > 0 {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(dir) > 0 {
				dir = dir[:len(dir)-1]
			}
			var ok bool
			if i, ok = r.resolve(strings.Join(dir, "/")); !ok {
				return 0, false
			}
			continue
		}
		if !r.t.isDir(i) {
			return 0, false
		}
		k, ok := r.t.child(i, c)
		if !ok {
			return 0, false
		}
		k = r.t.nodes[k].data
		if r.t.mode(k)&syscall.S_IFMT == syscall.S_IFLNK {
			if hops++; hops > maxLinkHops {
				return 0, false
			}
			target := r.t.entry(k).Linkname
			if strings.HasPrefix(target, "/") {
				dir, i = nil, 0
			}
			parts = append(strings.Split(target, "/"), parts...)
			continue
		}
		dir = append(dir, c)
		i = k
	}
	return i, true
}
