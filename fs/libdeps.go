package fs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
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
func (r *Root) prefetchDeps(l *layer, e *toc.Entry, skip [2]int) {
	if e.Size > maxDepsInput || e.NumChunks == 0 || e.Flags&toc.FlagSparse != 0 || r.lean() {
		return
	}
	buf := make([]byte, e.Size)
	t := l.toc
	base := t.Chunks[e.FirstChunk].Offset
	for i := int(e.FirstChunk); i < int(e.FirstChunk+e.NumChunks); i++ {
		if i >= skip[0] && i < skip[1] {
			continue // code not fetched (partial library): zeros do for the loader's tables
		}
		c := &t.Chunks[i]
		if !r.localRead(r.bgctx, c, buf, 0, c.Offset-base) {
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

// noSkip is prefetchDeps' skip range when every chunk was fetched.
var noSkip = [2]int{-1, -1}

// Partial libraries: on a slow link a library of more than partialLibMin
// compressed bytes is fetched without the part of its executable segment
// past the first partialLibCode bytes. A start runs little of a big
// library's code (import torch: 1-5 of each big library's 25-49 code
// chunks, docs/bench.md) but needs its headers, symbol and relocation
// tables, writable data and the start of its code (.init, .plt); the code
// it does run faults in, one round trip a piece.
const (
	partialLibMin  = 512 << 10
	partialLibCode = 192 << 10
	maxPhnum       = 128 // program headers looked at
)

// prefetchLibraryRest queues the rest of library e after its first chunk
// arrived: all of it but the chunks wholly inside its executable segment
// past partialLibCode, or all of it when the first chunk is not a 64-bit
// little-endian ELF file whose program headers it holds. deps: look its
// dependencies up once the rest has arrived.
func (r *Root) prefetchLibraryRest(l *layer, e *toc.Entry, deps bool) {
	first, last := int(e.FirstChunk), int(e.FirstChunk+e.NumChunks)
	c := &l.toc.Chunks[first]
	head := make([]byte, c.Size)
	skip := noSkip
	if e.Flags&toc.FlagSparse == 0 && r.localRead(r.bgctx, c, head, 0, 0) {
		// (A sparse file's chunks hold its regions, not its offsets.)
		if off, size, ok := execSegment(head); ok && size > partialLibCode && off+partialLibCode < e.Size {
			if a, b := chunksInside(l.toc, e, off+partialLibCode, min(off+size, e.Size)); b > a {
				skip = [2]int{a, b}
			}
		}
	}
	var done func()
	if deps {
		done = func() { r.prefetchDeps(l, e, skip) }
	}
	var jobs []prefetchJob
	if skip == noSkip {
		jobs = append(jobs, prefetchJob{l: l, first: first + 1, last: last, path: e.Name})
	} else {
		if skip[0] > first+1 {
			jobs = append(jobs, prefetchJob{l: l, first: first + 1, last: skip[0], path: e.Name})
		}
		if skip[1] < last {
			jobs = append(jobs, prefetchJob{l: l, first: skip[1], last: last, path: e.Name})
		}
		r.stats.partialLibraries.Add(1)
	}
	if len(jobs) == 0 {
		if done != nil {
			done()
		}
		return
	}
	jobs[len(jobs)-1].done = done
	for _, j := range jobs {
		r.queuePrefetch(j)
	}
}

// chunksInside returns the range [a, b) of e's chunks that lie wholly
// inside the bytes [lo, hi) of the file (a >= b: none), for 0 <= lo < hi
// <= e.Size.
func chunksInside(t *toc.TOC, e *toc.Entry, lo, hi int64) (a, b int) {
	base := t.Chunks[e.FirstChunk].Offset
	a, _ = t.ChunkRange(e, lo, 1)
	if t.Chunks[a].Offset-base < lo {
		a++
	}
	_, b = t.ChunkRange(e, hi-1, 1)
	if b > a && t.Chunks[b-1].Offset-base+int64(t.Chunks[b-1].Size) > hi {
		b--
	}
	return a, b
}

// libraryCode returns the chunks [a, b) wholly inside the executable
// segment of library e (data node d), ok false while its first chunk is not
// local (or it is sparse); a, b are equal when it has none. Kept per
// library: the chunk read-ahead of a slow link asks on every READ that
// would queue some.
func (r *Root) libraryCode(l *layer, e *toc.Entry, d uint32) (a, b int, ok bool) {
	if v, ok := r.libCode.Load(d); ok {
		ab := v.([2]int)
		return ab[0], ab[1], true
	}
	if e.NumChunks == 0 || e.Flags&toc.FlagSparse != 0 {
		return 0, 0, false
	}
	c := &l.toc.Chunks[e.FirstChunk]
	head := make([]byte, c.Size)
	if !r.cacheRead(r.bgctx, c, head, 0, 0) {
		return 0, 0, false
	}
	var ab [2]int
	if off, size, ok := execSegment(head); ok && off < e.Size && size > 0 {
		ab[0], ab[1] = chunksInside(l.toc, e, off, min(off+size, e.Size))
		ab[1] = max(ab[0], ab[1])
	}
	r.libCode.Store(d, ab)
	return ab[0], ab[1], true
}

// execSegment returns the file range of the first executable PT_LOAD
// segment of the 64-bit little-endian ELF file whose first bytes are b,
// when b holds its program headers. b comes from an image: every offset
// and count is checked against b.
func execSegment(b []byte) (off, size int64, ok bool) {
	if len(b) < 64 || string(b[:4]) != elf.ELFMAG || elf.Class(b[elf.EI_CLASS]) != elf.ELFCLASS64 || elf.Data(b[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return 0, 0, false
	}
	le := binary.LittleEndian
	phoff, phentsize, phnum := le.Uint64(b[32:]), uint64(le.Uint16(b[54:])), uint64(le.Uint16(b[56:]))
	if phentsize < 56 || phnum > maxPhnum || phoff > uint64(len(b)) || phnum*phentsize > uint64(len(b))-phoff {
		return 0, 0, false
	}
	for i := range phnum {
		p := b[phoff+i*phentsize:]
		if elf.ProgType(le.Uint32(p)) != elf.PT_LOAD || elf.ProgFlag(le.Uint32(p[4:]))&elf.PF_X == 0 {
			continue
		}
		o, n := le.Uint64(p[8:]), le.Uint64(p[32:])
		if o > 1<<40 || n > 1<<40 {
			return 0, 0, false
		}
		return int64(o), int64(n), true
	}
	return 0, 0, false
}
