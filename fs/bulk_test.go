package fs

import (
	"archive/tar"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// TestKernelReadAhead: a mount whose bytes are mostly big files that are not
// shared libraries (weights) gets 4 MiB kernel read-ahead, with or without a
// profile; one of libraries and small files gets 1 MiB, down to 32 KiB with
// a profile (the kernel reads that much around every mmap page fault of a
// library), through the hook Mount set.
func TestKernelReadAhead(t *testing.T) {
	root := func(files map[string]int64, opts ...Options) *Root {
		t.Helper()
		tc := &toc.TOC{ChunkSize: 1 << 20, LibraryChunkSize: 1 << 20}
		for name, size := range files {
			tc.Entries = append(tc.Entries, toc.Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Size: size,
				FirstChunk: uint32(len(tc.Chunks)), NumChunks: 1})
			tc.Chunks = append(tc.Chunks, toc.Chunk{Size: uint32(min(size, 1<<20))})
		}
		o := Options{}
		if len(opts) > 0 {
			o = opts[0]
		}
		r, err := NewRoot([]Layer{{Name: "l", TOC: tc, Fetcher: noFetcher{}}}, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	for _, tc := range []struct {
		name  string
		files map[string]int64
		want  int
	}{
		{"weights", map[string]int64{"m/model.safetensors": 2 << 30, "usr/lib/libc.so.6": 2 << 20, "usr/bin/python3": 6 << 20}, 4096},
		{"libraries", map[string]int64{"usr/lib/libtorch_cpu.so.1.13": 120 << 20, "usr/lib/libdnnl.so.2": 40 << 20, "usr/bin/python3": 6 << 20}, 32},
		{"half-weights", map[string]int64{"m/a.gguf": 100 << 20, "usr/lib/libtorch_cpu.so": 100 << 20}, 4096},
		{"small files", map[string]int64{"etc/passwd": 1 << 10, "usr/lib/python3/x.pyc": 30 << 10}, 32},
	} {
		r := root(tc.files)
		want := 1024 // without a profile
		if tc.want == 4096 {
			want = 4096
		}
		if got := r.KernelReadAheadKB(); got != want {
			t.Errorf("%s without a profile: KernelReadAheadKB() = %d, want %d", tc.name, got, want)
		}
		set := 0
		r.setKernelRA(func(kb int) { set = kb })
		r.profileStarted([][]uint64{{1}})
		if got := r.KernelReadAheadKB(); got != tc.want || set != tc.want {
			t.Errorf("%s with a profile: KernelReadAheadKB() = %d, set %d, want %d", tc.name, got, set, tc.want)
		}
		// A recording run (Options.Lean) reads as the runs it will serve.
		if got := root(tc.files, Options{Lean: true}).KernelReadAheadKB(); got != tc.want {
			t.Errorf("%s, lean: KernelReadAheadKB() = %d, want %d", tc.name, got, tc.want)
		}
		// Without a profile, a slow link (linkSamples large fetches all
		// slower than slowLinkRate) lowers the read-ahead, except for weights.
		slow := root(tc.files)
		set = 0
		slow.setKernelRA(func(kb int) { set = kb })
		for range linkSamples {
			slow.noteFetch(2<<20, time.Second/10) // 20 MiB/s
		}
		want = slowReadAheadKB
		if tc.want == 4096 {
			want = 4096
		}
		if got := slow.KernelReadAheadKB(); got != want || set != want {
			t.Errorf("%s on a slow link: KernelReadAheadKB() = %d, set %d, want %d", tc.name, got, set, want)
		}
		if st := slow.Stats(); !st.SlowLink || st.LinkBytesPerSecond != 20<<20 {
			t.Errorf("%s on a slow link: Stats() SlowLink %v, LinkBytesPerSecond %d, want true, %d", tc.name, st.SlowLink, st.LinkBytesPerSecond, 20<<20)
		}
		// A later sample at a fast link's rate (the first ones came while
		// the node was busy): the link is not slow after all.
		slow.noteFetch(4<<20, time.Second/50) // 200 MiB/s
		want = 1024
		if tc.want == 4096 {
			want = 4096
		}
		if got := slow.KernelReadAheadKB(); got != want || set != want || slow.Stats().SlowLink {
			t.Errorf("%s, slow then fast: KernelReadAheadKB() = %d, set %d, SlowLink %v; want %d, not slow", tc.name, got, set, slow.Stats().SlowLink, want)
		}
	}
	// One fetch at a fast link's rate among them: the link is not slow; small
	// fetches are not samples.
	r := root(map[string]int64{"usr/bin/python3": 6 << 20})
	r.noteFetch(4<<20, time.Second/100) // 400 MiB/s
	for range 2 * linkSamples {
		r.noteFetch(2<<20, time.Second/10)
		r.noteFetch(64<<10, time.Second)
	}
	if got := r.KernelReadAheadKB(); got != bigReadAheadKB {
		t.Errorf("a link that once delivered 400 MiB/s: KernelReadAheadKB() = %d, want %d", got, bigReadAheadKB)
	}
	if st := r.Stats(); st.SlowLink || st.LinkBytesPerSecond != 400<<20 {
		t.Errorf("a link that once delivered 400 MiB/s: Stats() SlowLink %v, LinkBytesPerSecond %d", st.SlowLink, st.LinkBytesPerSecond)
	}
}

type noFetcher struct{}

func (noFetcher) FetchChunks(context.Context, []toc.Chunk, func(int, []byte) error) error {
	return errors.New("no fetches in this test")
}
