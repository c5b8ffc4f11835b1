package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// elfLib builds a minimal ELF64 shared object whose dynamic section names
// needed (DT_NEEDED) and runpath (DT_RUNPATH, "" for none), padded with pad
// bytes of code: what debug/elf and the dynamic loader read to find a
// library's dependencies.
func elfLib(needed []string, runpath string, pad int) []byte {
	le := binary.LittleEndian
	dynstr := []byte{0}
	str := func(s string) uint64 {
		off := len(dynstr)
		dynstr = append(append(dynstr, s...), 0)
		return uint64(off)
	}
	var dyn []byte
	ent := func(tag elf.DynTag, v uint64) {
		dyn = le.AppendUint64(dyn, uint64(tag))
		dyn = le.AppendUint64(dyn, v)
	}
	for _, n := range needed {
		ent(elf.DT_NEEDED, str(n))
	}
	if runpath != "" {
		ent(elf.DT_RUNPATH, str(runpath))
	}
	ent(elf.DT_NULL, 0)
	shstr := []byte("\x00.dynstr\x00.dynamic\x00.shstrtab\x00.text\x00")
	const ehsize, shentsize = 64, 64
	// Code bytes unique to the arguments: libraries of the test share no chunk.
	h := fnv.New64a()
	fmt.Fprint(h, needed, runpath, pad)
	text := toctest.Random(h.Sum64(), pad)
	offText := uint64(ehsize)
	offStr := offText + uint64(len(text))
	offDyn := offStr + uint64(len(dynstr))
	offSh := offDyn + uint64(len(dyn))
	offShdrs := offSh + uint64(len(shstr))
	var b []byte
	b = append(b, 0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), 0)
	b = append(b, make([]byte, 8)...)
	b = le.AppendUint16(b, uint16(elf.ET_DYN))
	b = le.AppendUint16(b, uint16(elf.EM_X86_64))
	b = le.AppendUint32(b, uint32(elf.EV_CURRENT))
	b = le.AppendUint64(b, 0)        // entry
	b = le.AppendUint64(b, 0)        // phoff
	b = le.AppendUint64(b, offShdrs) // shoff
	b = le.AppendUint32(b, 0)        // flags
	b = le.AppendUint16(b, ehsize)
	b = le.AppendUint16(b, 56) // phentsize
	b = le.AppendUint16(b, 0)  // phnum
	b = le.AppendUint16(b, shentsize)
	b = le.AppendUint16(b, 5) // shnum
	b = le.AppendUint16(b, 3) // shstrndx
	b = append(append(append(append(b, text...), dynstr...), dyn...), shstr...)
	sh := func(name uint32, typ elf.SectionType, off, size uint64, link uint32, entsize uint64) {
		b = le.AppendUint32(b, name)
		b = le.AppendUint32(b, uint32(typ))
		b = le.AppendUint64(b, uint64(elf.SHF_ALLOC))
		b = le.AppendUint64(b, off) // addr
		b = le.AppendUint64(b, off)
		b = le.AppendUint64(b, size)
		b = le.AppendUint32(b, link)
		b = le.AppendUint32(b, 0)
		b = le.AppendUint64(b, 8)
		b = le.AppendUint64(b, entsize)
	}
	sh(0, elf.SHT_NULL, 0, 0, 0, 0)
	sh(1, elf.SHT_STRTAB, offStr, uint64(len(dynstr)), 0, 0)
	sh(9, elf.SHT_DYNAMIC, offDyn, uint64(len(dyn)), 1, 16)
	sh(18, elf.SHT_STRTAB, offSh, uint64(len(shstr)), 0, 0)
	sh(28, elf.SHT_PROGBITS, offText, uint64(len(text)), 0, 0)
	return b
}

func TestLibraryDepsParse(t *testing.T) {
	needed, runpath := libraryDeps(elfLib([]string{"libb.so.1", "libc.so.6", "../evil.so"}, "$ORIGIN/sub:/opt/x", 100))
	if !slices.Equal(needed, []string{"libb.so.1", "libc.so.6"}) {
		t.Errorf("needed %q, want libb.so.1 and libc.so.6 (a name with a slash is not searched)", needed)
	}
	if !slices.Equal(runpath, []string{"$ORIGIN/sub", "/opt/x"}) {
		t.Errorf("runpath %q", runpath)
	}
	for _, bad := range [][]byte{nil, []byte("\x7fELF"), []byte("#!/bin/sh\n"), elfLib([]string{"x.so"}, "", 10)[:100]} {
		if n, r := libraryDeps(bad); n != nil || r != nil {
			t.Errorf("%q: got %q %q from a file that is not a whole ELF object", bad, n, r)
		}
	}
	many := make([]string, 2*maxDeps)
	for i := range many {
		many[i] = "lib" + strings.Repeat("x", i%300) + ".so"
	}
	needed, _ = libraryDeps(elfLib(many, "", 0))
	if len(needed) > maxDeps || slices.ContainsFunc(needed, func(s string) bool { return len(s) > maxDepName }) {
		t.Errorf("%d names kept (bound %d), or one longer than %d", len(needed), maxDeps, maxDepName)
	}
}

// FuzzLibraryDeps: libraryDeps on arbitrary bytes never panics and stays
// within its bounds.
func FuzzLibraryDeps(f *testing.F) {
	lib := elfLib([]string{"libb.so.1", "libc.so.6"}, "$ORIGIN/../lib", 64)
	f.Add(lib)
	f.Add(lib[:len(lib)/2])
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		needed, runpath := libraryDeps(b)
		if len(needed) > maxDeps || len(runpath) > maxRunpath {
			t.Fatalf("%d names, %d run path entries", len(needed), len(runpath))
		}
		for _, n := range needed {
			if n == "" || len(n) > maxDepName || strings.ContainsAny(n, "/\x00") {
				t.Fatalf("bad name %q", n)
			}
		}
	})
}

// TestDependencyPrefetch: opening a library fetches, besides itself, the
// libraries it needs, found as the loader finds them (its run path with
// $ORIGIN, through a symlink, the default directories) and their needs in
// turn; a library nobody needs is not fetched, and a mount with a profile
// (lean) fetches none of it.
func TestDependencyPrefetch(t *testing.T) {
	a := elfLib([]string{"libb.so.1", "libmissing.so"}, "$ORIGIN/sub", 4*testChunk)
	b := elfLib([]string{"libc.so.9"}, "", 4*testChunk)
	c := elfLib(nil, "", 4*testChunk)
	other := elfLib([]string{"libz.so"}, "", 5*testChunk) // not the same bytes as c: chunks are content-addressed
	files := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "app/liba.so", Mode: 0o755}, Data: a},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "app/sub/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "app/sub/libb.so.1", Linkname: "libb.so.1.2"}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "app/sub/libb.so.1.2", Mode: 0o755}, Data: b},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/lib/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/lib/x86_64-linux-gnu/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/x86_64-linux-gnu/libc.so.9", Mode: 0o755}, Data: c},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/x86_64-linux-gnu/libother.so", Mode: 0o755}, Data: other},
	}
	l := convertLayer(t, toctest.Tar(t, files), testChunk)
	for _, lean := range []bool{false, true} {
		f := fstest.NewBlobFetcher(l.blob)
		dir, r := mountFetcher(t, l, f, Options{ReadAhead: -1, NeighbourWindow: -1, Lean: lean, Cache: fstest.NewMemCache()})
		fh, err := os.Open(filepath.Join(dir, "app/liba.so"))
		if err != nil {
			t.Fatal(err)
		}
		fh.Close()
		if lean {
			time.Sleep(200 * time.Millisecond)
			if req, _, _ := f.Stats(); req != 0 {
				t.Fatalf("lean: %d requests after opening a library, want none", req)
			}
			continue
		}
		for _, p := range []string{"app/liba.so", "app/sub/libb.so.1.2", "usr/lib/x86_64-linux-gnu/libc.so.9"} {
			waitCached(t, r, l, p)
		}
		time.Sleep(100 * time.Millisecond)
		if n, _ := cachedChunks(t, r, l, "usr/lib/x86_64-linux-gnu/libother.so"); n != 0 {
			t.Fatal("libother.so, which nothing needs, was fetched")
		}
		if s := r.Stats(); s.LibraryJobs != 3 {
			t.Fatalf("%d library jobs, want 3 (liba.so opened, libb.so.1.2 and libc.so.9 needed)", s.LibraryJobs)
		}
		got, err := os.ReadFile(filepath.Join(dir, "app/sub/libb.so.1"))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("libb.so.1 through its symlink: %v (or wrong bytes)", err)
		}
		if s := r.Stats(); s.ChunkMisses != 0 {
			t.Fatalf("%d misses reading a prefetched dependency", s.ChunkMisses)
		}
	}
}

// TestDependencyPrefetchHeadInFlight: the job fetching a library whole at
// open skips the chunk its loader is reading already; the dependencies are
// still looked up, once that chunk has arrived (they were given up on when
// it had not).
func TestDependencyPrefetchHeadInFlight(t *testing.T) {
	a := elfLib([]string{"libb.so.1"}, "", 4*testChunk)
	b := elfLib(nil, "", 4*testChunk)
	l := convertLayer(t, toctest.Tar(t, []toctest.File{
		reg("usr/lib/liba.so", 0o755, a),
		reg("usr/lib/libb.so.1", 0o755, b),
	}), testChunk)
	pa := fileSpan(t, l, "usr/lib/liba.so")
	f := &gateFetcher{BlobFetcher: fstest.NewBlobFetcher(l.blob), gate: make(chan struct{}),
		hold: map[[32]byte]bool{l.toc.Chunks[pa.First].Sum: true}}
	r := newTestRoot(t, l, f, Options{ReadAhead: -1, NeighbourWindow: -1, Cache: fstest.NewMemCache()})
	d := dataNode(t, r, "usr/lib/liba.so")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	read := loaderRead(ctx, r, d, a[:64]) // the ELF header
	for f.blocked.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the reader's fetch did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if _, _, errno := r.open(ctx, d); errno != 0 {
		t.Fatal(errno)
	}
	// The job fetches the rest of liba.so and ends while the first chunk
	// is still in flight.
	for n, total := cachedChunks(t, r, l, "usr/lib/liba.so"); n < total-1; n, total = cachedChunks(t, r, l, "usr/lib/liba.so") {
		if ctx.Err() != nil {
			t.Fatalf("%d of liba.so's %d chunks fetched", n, total)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(f.gate)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	waitCached(t, r, l, "usr/lib/libb.so.1")
}

// partialELF returns a 64-bit ELF file of random bytes whose program
// headers make [64 KiB, 64 KiB+codeSize) its executable segment, with a
// read-only segment before and a writable one after it.
func partialELF(codeSize int) []byte { return segmentedELF(64<<10, codeSize) }

// segmentedELF returns a 64-bit ELF file of random bytes whose program
// headers make [0, head) its first (read-only) segment, [head,
// head+codeSize) its executable one, and 256 KiB after it writable.
func segmentedELF(head, codeSize int) []byte {
	const data = 256 << 10
	b := toctest.Random(21, head+codeSize+data)
	le := binary.LittleEndian
	clear(b[:64+3*56])
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS], b[elf.EI_DATA], b[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	le.PutUint16(b[16:], uint16(elf.ET_DYN))
	le.PutUint16(b[18:], uint16(elf.EM_X86_64))
	le.PutUint64(b[32:], 64) // e_phoff
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[56:], 3)  // e_phnum
	for i, s := range []struct {
		flags     elf.ProgFlag
		off, size uint64
	}{{elf.PF_R, 0, uint64(head)}, {elf.PF_R | elf.PF_X, uint64(head), uint64(codeSize)}, {elf.PF_R | elf.PF_W, uint64(head + codeSize), data}} {
		p := b[64+i*56:]
		le.PutUint32(p, uint32(elf.PT_LOAD))
		le.PutUint32(p[4:], uint32(s.flags))
		le.PutUint64(p[8:], s.off)
		le.PutUint64(p[32:], s.size)
	}
	return b
}

// partialLibrary is the layer of the partial-library tests: usr/lib/libbig.so
// (lib, 64 KiB chunks, a code segment of partialCode bytes at 64 KiB), the
// chunks [skipFirst, skipLast) wholly inside its code past partialLibCode,
// and its number of chunks.
func partialLibrary(t *testing.T) (lib []byte, l *testLayer, skipFirst, skipLast, all int) {
	const chunk = 64 << 10
	lib = partialELF(partialCode)
	l = convertLayer(t, toctest.Tar(t, []toctest.File{reg("usr/lib/libbig.so", 0o644, lib)}), chunk)
	// Chunks wholly inside [64 KiB + 192 KiB, 64 KiB + code).
	skipFirst, skipLast = (64<<10+partialLibCode)/chunk, (64<<10+partialCode)/chunk
	return lib, l, skipFirst, skipLast, (len(lib) + chunk - 1) / chunk
}

const partialCode = 1536 << 10

// TestPartialLibrary: on a slow link a big library is fetched at open
// without the chunks of its executable segment past the first 192 KiB; on
// a fast one whole. Either way it reads byte for byte.
func TestPartialLibrary(t *testing.T) {
	lib, l, skipFirst, skipLast, all := partialLibrary(t)
	if off, size, ok := execSegment(lib); !ok || off != 64<<10 || size != partialCode {
		t.Fatalf("execSegment = %d, %d, %v", off, size, ok)
	}
	for _, slow := range []bool{true, false} {
		t.Run(map[bool]string{true: "slow", false: "fast"}[slow], func(t *testing.T) {
			f := fstest.NewBlobFetcher(l.blob)
			cache := fstest.NewMemCache()
			dir, root := mountFetcher(t, l, f, Options{WholeLibrary: 4 << 20, ReadAhead: -1, NeighbourWindow: -1, Cache: cache})
			root.link.slow.Store(slow)
			fd, err := os.Open(filepath.Join(dir, "usr/lib/libbig.so"))
			if err != nil {
				t.Fatal(err)
			}
			defer fd.Close()
			want := all
			if slow {
				want = all - (skipLast - skipFirst)
			}
			deadline := time.Now().Add(10 * time.Second)
			for root.Stats().Prefetched < int64(want) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // nothing more arrives
			if err := root.FlushCache(context.Background()); err != nil {
				t.Fatal(err)
			}
			s := root.Stats()
			if s.Prefetched != int64(want) {
				t.Errorf("fetched %d chunks at open, want %d of %d", s.Prefetched, want, all)
			}
			for i := range all {
				c := &l.toc.Chunks[i]
				_, err := cache.Get(context.Background(), c.Digest())
				if skipped := slow && i >= skipFirst && i < skipLast; skipped == (err == nil) {
					t.Errorf("chunk %d: cached %v, want %v", i, err == nil, !skipped)
				}
			}
			if got := s.PartialLibraries; got != map[bool]int64{true: 1, false: 0}[slow] {
				t.Errorf("PartialLibraries = %d", got)
			}
			mustRead(t, filepath.Join(dir, "usr/lib/libbig.so"), lib)
		})
	}
}

// TestPartialLibraryHeadInFlight: the loader reads a library's first chunk
// as soon as it opens it, and on a slow link the job queued at open often
// waits for a token meanwhile; it then finds that chunk claimed by the
// reader, ends before it has arrived, and the rest must still be fetched
// without the code (it was fetched whole: 20 of the 27 big libraries of a
// cold import torch at 200 Mbit/s, 31.5 MB where their code was not needed).
func TestPartialLibraryHeadInFlight(t *testing.T) {
	lib, l, skipFirst, skipLast, all := partialLibrary(t)
	f := fstest.NewBlobFetcher(l.blob)
	cache := fstest.NewMemCache()
	r := newTestRoot(t, l, f, Options{WholeLibrary: 4 << 20, ReadAhead: -1, NeighbourWindow: -1, Cache: cache})
	r.link.slow.Store(true)
	d := dataNode(t, r, "usr/lib/libbig.so")
	// Every background token is taken: the job queued at open waits.
	for range slowLinkJobs {
		r.slowJobs <- struct{}{}
	}
	started := f.Block()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, errno := r.open(ctx, d); errno != 0 {
		t.Fatal(errno)
	}
	read := loaderRead(ctx, r, d, lib[:4096])
	select {
	case <-started: // the reader's fetch of the first chunk
	case <-ctx.Done():
		t.Fatal("the reader's fetch did not start")
	}
	for range slowLinkJobs {
		<-r.slowJobs
	}
	time.Sleep(50 * time.Millisecond) // the job has found the chunk in flight and ended
	f.Unblock()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	want := all - 1 - (skipLast - skipFirst)
	for deadline := time.Now().Add(10 * time.Second); r.Stats().Prefetched < int64(want) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // nothing more arrives
	if err := r.FlushCache(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range all {
		_, err := cache.Get(ctx, l.toc.Chunks[i].Digest())
		if skipped := i >= skipFirst && i < skipLast; skipped == (err == nil) {
			t.Errorf("chunk %d: cached %v, want %v", i, err == nil, !skipped)
		}
	}
	if s := r.Stats(); s.PartialLibraries != 1 || s.Prefetched != int64(want) {
		t.Errorf("PartialLibraries = %d, Prefetched = %d; want 1 and %d", s.PartialLibraries, s.Prefetched, want)
	}
}

// TestSlowLinkLibraryReadAheadSkipsCode: on a slow link, the chunk
// read-ahead after a long run through a library's tables (the loader
// applying relocations) stops where its code starts, and a run inside the
// code gets none; on a fast link it goes on.
func TestSlowLinkLibraryReadAheadSkipsCode(t *testing.T) {
	const chunk = 64 << 10
	const tables, code = 3 << 20, 8 << 20
	lib := segmentedELF(tables, code)
	l := convertLayer(t, toctest.Tar(t, []toctest.File{reg("usr/lib/libbig.so", 0o644, lib)}), chunk)
	sp := fileSpan(t, l, "usr/lib/libbig.so")
	codeFirst, codeLast := sp.First+tables/chunk, sp.First+(tables+code)/chunk
	for _, slow := range []bool{true, false} {
		t.Run(map[bool]string{true: "slow", false: "fast"}[slow], func(t *testing.T) {
			cache := fstest.NewMemCache()
			r := newTestRoot(t, l, fstest.NewBlobFetcher(l.blob), Options{WholeLibrary: -1, NeighbourWindow: -1, ReadAhead: 16, Cache: cache})
			r.link.slow.Store(slow)
			d := dataNode(t, r, "usr/lib/libbig.so")
			ctx := context.Background()
			fh, _, errno := r.open(ctx, d)
			if errno != 0 {
				t.Fatal(errno)
			}
			h := fh.(*handle)
			read := func(from, to int) {
				buf := make([]byte, 128<<10)
				for off := from; off < to; off += len(buf) {
					res, errno := h.Read(ctx, buf, int64(off))
					if errno != 0 {
						t.Fatalf("read at %d: %v", off, errno)
					}
					if b, _ := res.Bytes(nil); !bytes.Equal(b, lib[off:off+len(buf)]) {
						t.Fatalf("read at %d: wrong bytes", off)
					}
				}
			}
			cached := func(from, to int) (n int) {
				time.Sleep(100 * time.Millisecond) // the read-ahead queued has run
				if err := r.FlushCache(ctx); err != nil {
					t.Fatal(err)
				}
				for i := from; i < to; i++ {
					if _, err := cache.Get(ctx, l.toc.Chunks[i].Digest()); err == nil {
						n++
					}
				}
				return n
			}
			read(0, tables)
			if n := cached(codeFirst, codeLast); (n == 0) != slow {
				t.Fatalf("after a run through the tables, %d of %d code chunks fetched", n, codeLast-codeFirst)
			}
			// A long run inside the code, past where that read-ahead went.
			from, to := tables+(2<<20), tables+(5<<20)
			read(from, to)
			if n := cached(sp.First+to/chunk, codeLast); (n == 0) != slow {
				t.Fatalf("after a run of %d code chunks, %d chunks after it fetched", (to-from)/chunk, n)
			}
		})
	}
}

// loaderRead reads the start of data node d in the background, as a
// loader reads a library it has just opened, and reports on the channel
// whether it read want.
func loaderRead(ctx context.Context, r *Root, d uint32, want []byte) <-chan error {
	read := make(chan error, 1)
	go func() {
		buf := make([]byte, len(want))
		n, _, _, errno := r.readFile(ctx, d, buf, 0, nil)
		if errno != 0 || !bytes.Equal(buf[:n], want) {
			read <- fmt.Errorf("loader's read: %d bytes, errno %v", n, errno)
			return
		}
		read <- nil
	}()
	return read
}

// dataNode returns the data node of the file at path p in r.
func dataNode(t *testing.T, r *Root, p string) uint32 {
	t.Helper()
	i, ok := r.resolve(p)
	if !ok {
		t.Fatalf("no %s", p)
	}
	return r.t.nodes[i].data
}

func FuzzExecSegment(f *testing.F) {
	f.Add(partialELF(256 << 10)[:4096])
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if off, size, ok := execSegment(b); ok && (off < 0 || size < 0) {
			t.Fatalf("negative range %d+%d", off, size)
		}
	})
}
