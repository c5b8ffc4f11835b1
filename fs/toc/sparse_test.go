package toc_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// ustarBlock returns a 512-byte ustar header block.
func ustarBlock(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "14000000000\x00")
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	setChecksum(b)
	return b
}

func setChecksum(b []byte) {
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

func pad512(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// paxHeader returns a PAX extended header ('x') and its records.
func paxHeader(records [][2]string) []byte {
	var body []byte
	for _, kv := range records {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec)
		for len(fmt.Sprint(n))+len(rec) != n {
			n = len(fmt.Sprint(n)) + len(rec)
		}
		body = append(body, fmt.Sprintf("%d%s", n, rec)...)
	}
	return append(ustarBlock("PaxHeaders/x", 'x', int64(len(body))), pad512(body)...)
}

// sparseTar returns a tar holding a PAX sparse file (format 1.0 or 0.1) of
// the given logical size with data stored bytes at offset 0 (the rest a
// hole), between two small regular files.
func sparseTar(t testing.TB, version string, logical int64, data []byte) []byte {
	var b []byte
	small := func(name string) {
		b = append(b, ustarBlock(name, '0', 5)...)
		b = append(b, pad512([]byte("hello"))...)
	}
	small("before.txt")
	switch version {
	case "1.0":
		mp := pad512([]byte(fmt.Sprintf("1\n0\n%d\n", len(data))))
		b = append(b, paxHeader([][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
			{"GNU.sparse.name", "big.img"}, {"GNU.sparse.realsize", fmt.Sprint(logical)}})...)
		b = append(b, ustarBlock("GNUSparseFile.0/big.img", '0', int64(len(mp)+len(data)))...)
		b = append(b, mp...)
	case "0.1":
		b = append(b, paxHeader([][2]string{{"GNU.sparse.map", fmt.Sprintf("0,%d", len(data))},
			{"GNU.sparse.numblocks", "1"}, {"GNU.sparse.size", fmt.Sprint(logical)}, {"path", "big.img"}})...)
		b = append(b, ustarBlock("GNUSparseFile.0/big.img", '0', int64(len(data)))...)
	case "gnu":
		h := ustarBlock("big.img", 'S', int64(len(data)))
		copy(h[257:265], "ustar  \x00")
		copy(h[386:398], fmt.Sprintf("%011o\x00", 0))
		copy(h[398:410], fmt.Sprintf("%011o\x00", len(data)))
		copy(h[483:495], fmt.Sprintf("%011o\x00", logical))
		if logical >= 1<<33 { // beyond 11 octal digits: base-256
			f := h[483:495]
			clear(f)
			f[0] = 0x80
			for i, v := 11, logical; i > 0; i, v = i-1, v>>8 {
				f[i] = byte(v)
			}
		}
		setChecksum(h)
		b = append(b, h...)
	}
	b = append(b, pad512(bytes.Clone(data))...)
	small("after.txt")
	return append(b, make([]byte, 1024)...)
}

// TestSparseHugeLogicalSize: a sparse file claiming terabytes converts by
// its stored bytes (never expanding the holes) and the converted layer
// decompresses to the same tar; a claimed 1 PiB is refused clearly.
func TestSparseHugeLogicalSize(t *testing.T) {
	data := toctest.Random(7, 10000)
	for _, v := range []string{"1.0", "0.1", "gnu"} {
		for _, tc := range []struct {
			logical int64
			ok      bool
		}{{8 << 40, true}, {1 << 50, false}} {
			tarball := sparseTar(t, v, tc.logical, data)
			done := make(chan struct{})
			var res *toc.Result
			var err error
			var out bytes.Buffer
			go func() {
				defer close(done)
				res, err = toc.Convert(context.Background(), bytes.NewReader(tarball), &out, toc.WithChunkSize(toc.MinChunkSize))
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("sparse %s of %d bytes: still converting after 60 s (expanding the holes?)", v, tc.logical)
			}
			if !tc.ok {
				if !errors.Is(err, toc.ErrTooLarge) {
					t.Errorf("sparse %s of %d bytes: err %v, want ErrTooLarge", v, tc.logical, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("sparse %s of %d bytes: %v", v, tc.logical, err)
			}
			d, _ := zstd.NewReader(nil)
			got, derr := d.DecodeAll(out.Bytes(), nil)
			d.Close()
			if derr != nil || !bytes.Equal(got, tarball) {
				t.Fatalf("sparse %s: converted layer does not decompress to the tar (%v)", v, derr)
			}
			var names []string
			for _, e := range res.TOC.Entries {
				names = append(names, e.Name)
				if e.Name == "big.img" && (e.Size != tc.logical || e.Flags&toc.FlagSparse == 0) {
					t.Errorf("sparse %s: entry size %d flags %d", v, e.Size, e.Flags)
				}
			}
			if strings.Join(names, ",") != "before.txt,big.img,after.txt" {
				t.Errorf("sparse %s: entries %q", v, names)
			}
			// The entry after the sparse file is found where it is.
			if _, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(out.Bytes()), res.Size, nil); err != nil {
				t.Fatal(err)
			}
			last := res.TOC.Entries[2]
			if got := toctest.ReadFile(t, out.Bytes(), res.TOC, &last); string(got) != "hello" {
				t.Errorf("sparse %s: after.txt reads %q", v, got)
			}
		}
	}
}

// endless serves prefix, then zeros for ever; it cancels after limit bytes.
type endless struct {
	prefix []byte
	n      atomic.Int64
	limit  int64
	cancel func()
}

func (r *endless) Read(p []byte) (int, error) {
	var k int
	if len(r.prefix) > 0 {
		k = copy(p, r.prefix)
		r.prefix = r.prefix[k:]
	} else {
		clear(p)
		k = len(p)
	}
	if r.n.Add(int64(k)) > r.limit && r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
	return k, nil
}

// TestConvertCancelInsideEntry: cancelling the context stops a conversion
// in the middle of one huge entry (a sparse file storing 4 GiB of zeros,
// which used to be drained byte by byte with no check).
func TestConvertCancelInsideEntry(t *testing.T) {
	const stored = 1<<32 - 512 // the most an 11-digit octal size field holds, in blocks
	prefix := append(ustarBlock("before.txt", '0', 5), pad512([]byte("hello"))...)
	prefix = append(prefix, paxHeader([][2]string{{"GNU.sparse.map", fmt.Sprintf("0,%d", int64(stored))},
		{"GNU.sparse.numblocks", "1"}, {"GNU.sparse.size", fmt.Sprint(int64(4 << 40))}, {"path", "big.img"}})...)
	prefix = append(prefix, ustarBlock("GNUSparseFile.0/big.img", '0', stored)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &endless{prefix: prefix, limit: 64 << 20, cancel: cancel}
	done := make(chan error, 1)
	go func() {
		_, err := toc.Convert(ctx, src, io.Discard, toc.WithChunkSize(toc.MinChunkSize))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("conversion still running 60 s after the cancel (%d bytes read)", src.n.Load())
	}
	if n := src.n.Load(); n > 256<<20 {
		t.Errorf("read %d MiB after cancelling at 64 MiB", n>>20)
	}
}

// TestSparseGNUTar: sparse files as GNU tar writes them (old GNU 'S' with
// extension blocks, PAX 0.0, 0.1 and 1.0) convert to a TOC whose sparse map
// and chunks give back the file archive/tar expands (what containerd
// unpacks), byte for byte, and the converted layer still decompresses to
// the same tar.
func TestSparseGNUTar(t *testing.T) {
	for _, format := range [][]string{
		{"-H", "gnu"},
		{"-H", "posix", "--sparse-version=0.0"},
		{"-H", "posix", "--sparse-version=0.1"},
		{"-H", "posix", "--sparse-version=1.0"},
	} {
		name := strings.Join(format, " ")
		tarball := toctest.GNUSparseTar(t, "d", format...)
		blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(toc.MinChunkSize))
		d, _ := zstd.NewReader(nil)
		got, derr := d.DecodeAll(blob, nil)
		d.Close()
		if derr != nil || !bytes.Equal(got, tarball) {
			t.Fatalf("%s: converted layer does not decompress to the tar (%v)", name, derr)
		}
		tc, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(blob), res.Size, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := map[string][]byte{}
		tr := tar.NewReader(bytes.NewReader(tarball))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: archive/tar: %v", name, err)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("%s: archive/tar: %s: %v", name, h.Name, err)
			}
			want[strings.TrimSuffix(h.Name, "/")] = b
		}
		seen := 0
		for i := range tc.Entries {
			e := &tc.Entries[i]
			w, ok := want[e.Name]
			if !ok {
				t.Errorf("%s: entry %q not in the tar", name, e.Name)
				continue
			}
			seen++
			if e.Name != "d" && e.Name != "d/plain" && e.Flags&(toc.FlagSparse|toc.FlagSparseMap) != toc.FlagSparse|toc.FlagSparseMap {
				t.Errorf("%s: %s: flags %#x, want a sparse file with its map (does the file system keep holes?)", name, e.Name, e.Flags)
			}
			if g := toctest.ReadFile(t, blob, tc, e); !bytes.Equal(g, w) {
				t.Errorf("%s: %s: %d bytes from the TOC differ from archive/tar's %d", name, e.Name, len(g), len(w))
			}
		}
		if seen != len(want) {
			t.Errorf("%s: %d of %d entries", name, seen, len(want))
		}
		for i := range tc.Entries {
			if e := &tc.Entries[i]; e.Name == "d/many" && len(e.SparseMap()) != toctest.SparseManyRegions {
				t.Errorf("%s: many: %d regions, want %d", name, len(e.SparseMap()), toctest.SparseManyRegions)
			}
		}
		// Verify re-derives the same TOC from the tar.
		if _, _, err := toc.Verify(context.Background(), bytes.NewReader(blob), res.Size, nil); err != nil {
			t.Errorf("%s: verify: %v", name, err)
		}
	}
}

// TestSparseMapChecks: a TOC whose sparse map is inconsistent (regions
// overlapping, out of order, empty or beyond the file, or not adding up to
// the stored bytes; a map on an entry that is not sparse; the map's bit
// without the TOC's) is refused whole, and a tar whose map does not match
// its stored bytes fails conversion, naming the entry.
func TestSparseMapChecks(t *testing.T) {
	_, res := toctest.Convert(t, sparseTar(t, "1.0", 1<<20, toctest.Random(5, 3000)), toc.WithChunkSize(toc.MinChunkSize))
	good := res.TOC.Marshal()
	if _, err := toc.Unmarshal(good); err != nil {
		t.Fatal(err)
	}
	var si int
	for i, e := range res.TOC.Entries {
		if e.Flags&toc.FlagSparseMap != 0 {
			si = i
		}
	}
	if rs := res.TOC.Entries[si].SparseMap(); len(rs) != 1 || rs[0] != (toc.Region{Offset: 0, Length: 3000}) {
		t.Fatalf("map %v, want one region of 3000 bytes at 0", rs)
	}
	for _, tc := range []struct {
		name   string
		mutate func(e *toc.Entry)
	}{
		{"overlapping", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{0, 2000}, {1000, 1000}} }},
		{"out of order", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{5000, 1000}, {0, 2000}} }},
		{"empty region", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{0, 3000}, {9000, 0}} }},
		{"beyond the size", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{1<<20 - 1000, 3000}} }},
		{"fewer bytes than the chunks", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{0, 2999}} }},
		{"more bytes than the chunks", func(e *toc.Entry) { e.Ext.Sparse = []toc.Region{{0, 3000}, {8000, 1}} }},
		{"not sparse", func(e *toc.Entry) { e.Flags &^= toc.FlagSparse }},
	} {
		c := *res.TOC
		c.Entries = append([]toc.Entry(nil), res.TOC.Entries...)
		ext := *c.Entries[si].Ext
		c.Entries[si].Ext = &ext
		tc.mutate(&c.Entries[si])
		if _, err := toc.Unmarshal(c.Marshal()); !errors.Is(err, toc.ErrBadTOC) {
			t.Errorf("%s: %v, want ErrBadTOC", tc.name, err)
		}
	}
	// magic (8) + version (1) + flags (1): the sparse-maps bit is bit 1.
	if good[9] != 0x02 {
		t.Fatalf("TOC flags %#x, want the sparse-maps bit", good[9])
	}
	noFlag := bytes.Clone(good)
	noFlag[9] = 0
	if _, err := toc.Unmarshal(noFlag); !errors.Is(err, toc.ErrBadTOC) {
		t.Errorf("sparse map without the TOC flag: %v, want ErrBadTOC", err)
	}

	// A tar whose PAX 0.1 map claims more than it stores.
	var b []byte
	b = append(b, paxHeader([][2]string{{"GNU.sparse.map", "0,4000"}, {"GNU.sparse.numblocks", "1"},
		{"GNU.sparse.size", "8192"}, {"path", "big.img"}})...)
	b = append(b, ustarBlock("GNUSparseFile.0/big.img", '0', 3000)...)
	b = append(b, pad512(toctest.Random(8, 3000))...)
	b = append(b, make([]byte, 1024)...)
	_, err := toc.Convert(context.Background(), bytes.NewReader(b), io.Discard)
	if !errors.Is(err, toc.ErrBadTar) || !strings.Contains(err.Error(), "big.img") {
		t.Errorf("map of 4000 bytes over 3000 stored: %v, want ErrBadTar naming big.img", err)
	}
}
