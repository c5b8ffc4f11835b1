package toc

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Option configures Convert.
type Option func(*options)

type options struct {
	chunkSize   int
	libChunk    int // chunk size of shared libraries (0: DefaultLibraryChunkSize)
	level       zstd.EncoderLevel
	startLevel  zstd.EncoderLevel // 0: level
	concurrency int
	indexOnly   bool // build the TOC (with sums) but compress and write nothing (Verify)
}

// WithChunkSize sets the size files are cut into (default DefaultChunkSize).
func WithChunkSize(n int) Option { return func(o *options) { o.chunkSize = n } }

// WithLibraryChunkSize sets the size shared libraries (IsSharedLibrary) are
// cut into (default DefaultLibraryChunkSize; never more than the chunk size;
// a negative value: the chunk size, like any other file).
func WithLibraryChunkSize(n int) Option { return func(o *options) { o.libChunk = n } }

// WithLevel sets the zstd level of every frame (default zstd.SpeedDefault)
// but those WithStartupLevel sets.
func WithLevel(l zstd.EncoderLevel) Option { return func(o *options) { o.level = l } }

// WithStartupLevel sets the zstd level of the chunks of shared libraries
// (IsSharedLibrary) and of files of at most one chunk: what a program's
// start-up reads, lazily, over the network, where every byte saved is link
// time saved at each cold start. Big data files (model weights) keep the
// level of WithLevel, which converts them faster. Default: the level of
// WithLevel.
func WithStartupLevel(l zstd.EncoderLevel) Option { return func(o *options) { o.startLevel = l } }

// WithConcurrency sets how many frames are compressed at once (default GOMAXPROCS).
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = n } }

// Result describes a converted layer.
type Result struct {
	TOC *TOC
	// DiffID is the sha256 of the uncompressed tar; it equals the original layer's diffID.
	DiffID digest.Digest
	// Digest and Size describe the converted blob.
	Digest digest.Digest
	Size   int64
	// Location is where the TOC bytes are in the blob.
	Location Location
}

// Annotations returns the descriptor annotations that let a reader fetch and
// verify the TOC with one range request.
func (r *Result) Annotations() map[string]string {
	return map[string]string{
		AnnotationTOCOffset:        strconv.FormatInt(r.Location.Offset, 10),
		AnnotationTOCLength:        strconv.FormatInt(r.Location.Length, 10),
		AnnotationTOCDigest:        r.Location.Digest.String(),
		AnnotationFormat:           strconv.Itoa(Version),
		AnnotationChunkSize:        strconv.FormatInt(r.TOC.ChunkSize, 10),
		AnnotationUncompressedSize: strconv.FormatInt(r.TOC.TarSize, 10),
	}
}

// frame is one unit of compression: a run of tar bytes that becomes one zstd frame.
type frame struct {
	data  []byte
	out   []byte
	chunk int     // index in TOC.Chunks, or -1 for a metadata frame
	start bool    // compressed at the start-up level (WithStartupLevel)
	buf   *[]byte // pooled buffer behind data, returned after writing (chunk frames)
	sum   [32]byte
	done  chan struct{}
}

// Convert reads an uncompressed tar stream from src and writes the converted
// layer blob to dst: every regular file's contents cut into chunks of the
// configured size, each its own zstd frame, everything else (headers,
// padding, the end-of-archive blocks) in metadata frames, then the TOC frame
// and the footer. Decompressing the output yields src byte for byte.
//
// A tar entry whose path or hardlink target escapes the root fails with
// ErrUnsafePath; a malformed tar fails with ErrBadTar. Errors name the entry
// and its offset in the tar.
func Convert(ctx context.Context, src io.Reader, dst io.Writer, opts ...Option) (*Result, error) {
	o := options{chunkSize: DefaultChunkSize, level: zstd.SpeedDefault, concurrency: runtime.GOMAXPROCS(0)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.chunkSize < MinChunkSize || o.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %d outside [%d, %d]", o.chunkSize, MinChunkSize, MaxChunkSize)
	}
	switch {
	case o.libChunk == 0:
		o.libChunk = DefaultLibraryChunkSize
	case o.libChunk < 0:
		o.libChunk = o.chunkSize
	case o.libChunk < MinChunkSize || o.libChunk > MaxChunkSize:
		return nil, fmt.Errorf("library chunk size %d outside [%d, %d]", o.libChunk, MinChunkSize, MaxChunkSize)
	}
	o.libChunk = min(o.libChunk, o.chunkSize)
	if o.concurrency < 1 {
		o.concurrency = 1
	}
	newEnc := func(l zstd.EncoderLevel) (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderCRC(false),
			zstd.WithEncoderConcurrency(o.concurrency), zstd.WithWindowSize(windowFor(o.chunkSize)))
	}
	enc, err := newEnc(o.level)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	startEnc := enc
	if o.startLevel != 0 && o.startLevel != o.level && !o.indexOnly {
		if startEnc, err = newEnc(o.startLevel); err != nil {
			return nil, err
		}
		defer startEnc.Close()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &converter{
		ctx:    ctx,
		cancel: cancel,
		o:      o,
		enc:    enc,
		start:  startEnc,
		work:   make(chan *frame, o.concurrency*2),
		order:  make(chan *frame, o.concurrency*4),
		pool:   sync.Pool{New: func() any { b := make([]byte, 0, o.chunkSize); return &b }},
		toc:    &TOC{ChunkSize: int64(o.chunkSize), LibraryChunkSize: int64(o.libChunk)},
	}
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Add(1)
		go func() { defer wg.Done(); c.compress() }()
	}
	bw := &countingWriter{w: dst, h: sha256.New()}
	writeErr := make(chan error, 1)
	go func() { writeErr <- c.write(bw) }()

	perr := c.produce(src)
	close(c.work)
	close(c.order)
	werr := <-writeErr
	wg.Wait()
	if werr != nil {
		return nil, fmt.Errorf("write converted layer: %w", werr)
	}
	if perr != nil {
		return nil, perr
	}
	if len(c.written) != len(c.toc.Chunks) {
		return nil, fmt.Errorf("internal error: %d chunks produced, %d written", len(c.toc.Chunks), len(c.written))
	}
	for i, p := range c.written {
		ch := &c.toc.Chunks[i]
		ch.CompressedOffset, ch.CompressedSize, ch.Sum = p.off, p.size, p.sum
	}
	if o.indexOnly { // sums only: compressed positions mean nothing
		return &Result{TOC: c.toc, DiffID: digest.NewDigest(digest.SHA256, c.tarHash)}, nil
	}

	// TOC frame and footer. A TOC readers would refuse (beyond the limits
	// of docs/format.md) fails the conversion instead of making an
	// unmountable layer.
	raw := c.toc.Marshal()
	if len(raw) > MaxTOCSize {
		return nil, fmt.Errorf("%w: toc of %d bytes (%d entries, %d chunks) is larger than %d", ErrTooLarge, len(raw), len(c.toc.Entries), len(c.toc.Chunks), MaxTOCSize)
	}
	if _, err := Unmarshal(raw); err != nil {
		return nil, fmt.Errorf("%w: readers would refuse the toc: %v", ErrTooLarge, err)
	}
	payload := enc.EncodeAll(raw, nil)
	if int64(len(raw)) > tocLimit(len(payload)) || len(payload) > MaxTOCSize {
		return nil, fmt.Errorf("%w: compressed toc of %d bytes", ErrTooLarge, len(payload))
	}
	tsum := sha256.Sum256(payload)
	loc := Location{Offset: bw.n + 8, Length: int64(len(payload)), Digest: digest.NewDigestFromBytes(digest.SHA256, tsum[:])}
	var hdr []byte
	hdr = binary.LittleEndian.AppendUint32(hdr, TOCFrameMagic)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(payload)))
	if len(payload) > 1<<32-1 {
		return nil, fmt.Errorf("toc of %d bytes is too large", len(payload))
	}
	for _, b := range [][]byte{hdr, payload, AppendFooter(nil, Footer{Location: loc, Version: Version})} {
		if _, err := bw.Write(b); err != nil {
			return nil, err
		}
	}
	return &Result{
		TOC:      c.toc,
		DiffID:   digest.NewDigest(digest.SHA256, c.tarHash),
		Digest:   digest.NewDigest(digest.SHA256, bw.h),
		Size:     bw.n,
		Location: loc,
	}, nil
}

// windowFor returns a zstd window that holds a whole chunk (so each frame is
// one window) without exceeding what decoders must support.
func windowFor(chunk int) int {
	w := zstd.MinWindowSize
	for w < chunk && w < 8<<20 {
		w <<= 1
	}
	return w
}

type converter struct {
	ctx     context.Context
	cancel  context.CancelFunc
	o       options
	enc     *zstd.Encoder
	start   *zstd.Encoder // for start-up frames (WithStartupLevel); enc when the same level
	work    chan *frame
	order   chan *frame
	pool    sync.Pool
	toc     *TOC
	tarHash hash.Hash
	written []chunkPlace // owned by write
}

// chunkPlace is where the writer put a chunk's frame.
type chunkPlace struct {
	off  int64
	size uint32
	sum  [32]byte
}

func (c *converter) compress() {
	for f := range c.work {
		if c.ctx.Err() == nil {
			if f.chunk >= 0 {
				f.sum = sha256.Sum256(f.data)
			}
			if !c.o.indexOnly {
				enc := c.enc
				if f.start {
					enc = c.start
				}
				f.out = enc.EncodeAll(f.data, make([]byte, 0, len(f.data)/2+64))
			}
		}
		close(f.done)
	}
}

// write emits frames in order and records the chunks' compressed positions.
func (c *converter) write(w *countingWriter) error {
	var err error
	for f := range c.order {
		<-f.done
		if err == nil {
			if err = c.ctx.Err(); err == nil {
				if f.chunk >= 0 {
					// Chunk frames arrive in chunk order; the producer owns
					// toc.Chunks, so results are merged after both finish.
					c.written = append(c.written, chunkPlace{off: w.n, size: uint32(len(f.out)), sum: f.sum})
				}
				_, err = w.Write(f.out)
			}
			if err != nil {
				c.cancel()
			}
		}
		if f.buf != nil {
			*f.buf = f.data[:0]
			c.pool.Put(f.buf)
		}
		f.out = nil
	}
	return err
}

func (c *converter) emit(data []byte, chunk int, buf *[]byte, start bool) error {
	f := &frame{data: data, chunk: chunk, buf: buf, start: start, done: make(chan struct{})}
	select {
	case c.order <- f:
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
	select {
	case c.work <- f:
	case <-c.ctx.Done():
		close(f.done)
		return c.ctx.Err()
	}
	return nil
}

// rawReader counts, hashes and optionally records the raw tar bytes that
// archive/tar consumes, so headers and padding can be written verbatim. It
// stops at once when ctx ends, even inside an entry, and hands recorded
// data of an entry (up to dataEnd) to flush as it grows, so that a large
// entry that is not cut into chunks (sparse, or data on a non-file) is not
// held in memory.
type rawReader struct {
	ctx     context.Context
	r       io.Reader
	n       int64
	h       hash.Hash
	record  bool
	buf     []byte
	dataEnd int64 // end of the current entry's data: bytes before it may be flushed mid-read
	flush   func() error
	// sparse, when set, takes the stored bytes of a sparse file (from
	// r.n on, up to sparse.to) as archive/tar skips them, and cuts them
	// into chunks.
	sparse *sparseData
}

// sparseData cuts the stored bytes of a sparse file into chunks as they
// stream past: archive/tar only reads them as the expanded file, holes and
// all, so they are taken from under it when tr.Next skips them.
type sparseData struct {
	to    int64 // end of the stored bytes in the tar
	off   int64 // tar offset of buf's first byte
	bp    *[]byte
	emit  func(off int64, bp *[]byte) error
	size  int // chunk size
	alloc func() *[]byte
}

// add takes the stored bytes b, which start at tar offset pos.
func (s *sparseData) add(b []byte, pos int64) error {
	for len(b) > 0 {
		if s.bp == nil {
			s.bp, s.off = s.alloc(), pos
			*s.bp = (*s.bp)[:0]
		}
		buf := *s.bp
		k := min(len(b), s.size-len(buf))
		*s.bp = append(buf, b[:k]...)
		b, pos = b[k:], pos+int64(k)
		if len(*s.bp) == s.size || pos == s.to {
			bp := s.bp
			s.bp = nil
			if err := s.emit(s.off, bp); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *rawReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	if n > 0 {
		pos := r.n
		r.n += int64(n)
		r.h.Write(p[:n])
		b := p[:n]
		if s := r.sparse; s != nil {
			k := min(int64(len(b)), s.to-pos)
			if serr := s.add(b[:k], pos); serr != nil {
				return n, serr
			}
			b = b[k:]
			if pos+k == s.to {
				r.sparse = nil
			}
		}
		if r.record && len(b) > 0 {
			r.buf = append(r.buf, b...)
			if len(r.buf) >= metaFlush && r.n <= r.dataEnd && r.flush != nil {
				if ferr := r.flush(); ferr != nil {
					return n, ferr
				}
			}
		}
	}
	return n, err
}

const metaFlush = 1 << 20

func (c *converter) flushMeta(raw *rawReader) error {
	if len(raw.buf) == 0 {
		return nil
	}
	data := raw.buf
	raw.buf = make([]byte, 0, 64<<10)
	return c.emit(data, -1, nil, false)
}

func (c *converter) produce(src io.Reader) error {
	raw := &rawReader{ctx: c.ctx, r: bufio.NewReaderSize(src, 1<<20), h: sha256.New(), record: true, buf: make([]byte, 0, 64<<10)}
	raw.flush = func() error { return c.flushMeta(raw) }
	c.tarHash = raw.h
	tr := tar.NewReader(raw)
	var dataEnd int64
	for {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		hdrOff := (dataEnd + 511) &^ 511
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if cerr := c.ctx.Err(); cerr != nil {
				return fmt.Errorf("entry at offset %d: %w", hdrOff, cerr)
			}
			return fmt.Errorf("%w: entry header at offset %d: %v", ErrBadTar, hdrOff, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return fmt.Errorf("%w: pax global header at offset %d: %v", ErrBadTar, hdrOff, err)
			}
			dataEnd = raw.n
			continue
		}
		e, err := entryFromHeader(hdr, hdrOff)
		if err != nil {
			return err
		}
		if e.Flags&FlagSparse != 0 {
			// The expanded view of a sparse file may be petabytes of
			// holes: never read it. Its stored bytes are cut into chunks
			// as the next tr.Next skips them; where they end comes from
			// the entry's own header block, its regions from its map.
			end, err := sparseDataEnd(raw, hdrOff, hdr.Typeflag)
			if err != nil {
				return fmt.Errorf("%w: sparse file %q at offset %d: %v", ErrBadTar, hdr.Name, hdrOff, err)
			}
			rs, err := sparseMap(raw, hdrOff, hdr)
			if err != nil {
				return fmt.Errorf("%w: sparse file %q at offset %d: map: %v", ErrBadTar, hdr.Name, hdrOff, err)
			}
			var stored int64
			for _, r := range rs {
				stored += r.Length
			}
			if stored != end-raw.n {
				return fmt.Errorf("%w: sparse file %q at offset %d: its map has %d data bytes, %d are stored",
					ErrBadTar, hdr.Name, hdrOff, stored, end-raw.n)
			}
			e.Flags |= FlagSparseMap
			if len(rs) > 0 {
				if e.Ext == nil {
					e.Ext = &EntryExt{}
				}
				e.Ext.Sparse = rs
			}
			if stored > 0 {
				if err := c.flushMeta(raw); err != nil {
					return err
				}
				e.FirstChunk = uint32(len(c.toc.Chunks))
				ei := len(c.toc.Entries)
				start := stored <= int64(c.o.chunkSize)
				raw.sparse = &sparseData{to: end, size: c.o.chunkSize,
					alloc: func() *[]byte { return c.pool.Get().(*[]byte) },
					emit: func(off int64, bp *[]byte) error {
						c.toc.Chunks = append(c.toc.Chunks, Chunk{Offset: off, Size: uint32(len(*bp))})
						c.toc.Entries[ei].NumChunks++
						return c.emit(*bp, len(c.toc.Chunks)-1, bp, start)
					}}
			}
			raw.dataEnd, dataEnd = end, end
			c.toc.Entries = append(c.toc.Entries, e)
			continue
		}
		raw.dataEnd = raw.n + hdr.Size
		if e.IsRegular() && e.Flags&FlagSparse == 0 && hdr.Size > 0 {
			if err := c.flushMeta(raw); err != nil {
				return err
			}
			e.FirstChunk = uint32(len(c.toc.Chunks))
			raw.record = false
			size := int64(c.o.chunkSize)
			lib := IsSharedLibrary(e.Name)
			if lib {
				size = int64(c.o.libChunk)
			}
			start := lib || hdr.Size <= int64(c.o.chunkSize)
			for left := hdr.Size; left > 0; {
				n := size
				if left < n {
					n = left
				}
				off := raw.n
				bp := c.pool.Get().(*[]byte)
				buf := (*bp)[:n]
				if _, err := io.ReadFull(tr, buf); err != nil {
					if cerr := c.ctx.Err(); cerr != nil {
						return fmt.Errorf("%q: contents at offset %d: %w", hdr.Name, off, cerr)
					}
					return fmt.Errorf("%w: %q: contents at offset %d: %v", ErrBadTar, hdr.Name, off, unexpected(err))
				}
				c.toc.Chunks = append(c.toc.Chunks, Chunk{Offset: off, Size: uint32(n)})
				if err := c.emit(buf, len(c.toc.Chunks)-1, bp, start); err != nil {
					return err
				}
				e.NumChunks++
				left -= n
			}
			raw.record = true
		} else if _, err := io.Copy(io.Discard, tr); err != nil {
			if cerr := c.ctx.Err(); cerr != nil {
				return fmt.Errorf("%q: contents at offset %d: %w", hdr.Name, raw.n, cerr)
			}
			return fmt.Errorf("%w: %q: contents at offset %d: %v", ErrBadTar, hdr.Name, raw.n, unexpected(err))
		}
		dataEnd = raw.n
		c.toc.Entries = append(c.toc.Entries, e)
		if len(raw.buf) >= metaFlush {
			if err := c.flushMeta(raw); err != nil {
				return err
			}
		}
	}
	// The end-of-archive blocks and any padding after them belong to the tar too.
	raw.dataEnd = math.MaxInt64
	if _, err := io.Copy(io.Discard, raw); err != nil {
		if cerr := c.ctx.Err(); cerr != nil {
			return fmt.Errorf("after the end of the archive at offset %d: %w", raw.n, cerr)
		}
		return fmt.Errorf("%w: after the end of the archive at offset %d: %v", ErrBadTar, raw.n, err)
	}
	if raw.n == 0 {
		// An empty tar: one empty frame, so that the blob still starts
		// with a zstd frame's magic, by which clients that sniff the
		// first bytes (go-containerregistry, containers/image) tell a zstd
		// layer from a plain tar, rather than with the TOC's skippable one.
		if err := c.emit([]byte{}, -1, nil, false); err != nil {
			return err
		}
	}
	if err := c.flushMeta(raw); err != nil {
		return err
	}
	c.toc.TarSize = raw.n
	return nil
}

// sparseDataEnd returns where the stored bytes of the sparse entry whose
// headers start at hdrOff end in the tar, reading the entry's header block
// (after any PAX or GNU long-name headers) from the recorded raw bytes:
// its size field is the stored size, counted from the end of the header
// block (PAX sparse 0.x and 1.0, whose sparse map is part of the data) or
// from the end of the extension blocks, which tr.Next has just read (old
// GNU sparse, typeflag 'S').
func sparseDataEnd(raw *rawReader, hdrOff int64, typ byte) (int64, error) {
	blk, start, err := headerBlock(raw, hdrOff)
	if err != nil {
		return 0, err
	}
	size, err := tarNumber(blk[124:136])
	if err != nil {
		return 0, fmt.Errorf("size field: %v", err)
	}
	if typ == tar.TypeGNUSparse {
		start = raw.n
	}
	if start > raw.n || size > math.MaxInt64-start || start+size < raw.n {
		return 0, fmt.Errorf("stored size %d at offset %d inconsistent with the %d bytes read", size, start, raw.n)
	}
	return start + size, nil
}

// headerBlock returns the header block of the entry whose headers start at
// hdrOff (the one after any PAX or GNU long-name headers) from the recorded
// raw bytes, and the tar offset just after it.
func headerBlock(raw *rawReader, hdrOff int64) ([]byte, int64, error) {
	bufStart := raw.n - int64(len(raw.buf))
	if hdrOff < bufStart {
		return nil, 0, fmt.Errorf("headers not buffered")
	}
	pos := hdrOff - bufStart
	for {
		if pos < 0 || pos+512 > int64(len(raw.buf)) {
			return nil, 0, fmt.Errorf("header block beyond the bytes read")
		}
		blk := raw.buf[pos : pos+512]
		size, err := tarNumber(blk[124:136])
		if err != nil {
			return nil, 0, fmt.Errorf("size field: %v", err)
		}
		switch blk[156] {
		case tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
			if size > int64(len(raw.buf)) {
				return nil, 0, fmt.Errorf("extended header of %d bytes beyond the bytes read", size)
			}
			pos += 512 + (size+511)&^511
			continue
		}
		return blk, bufStart + pos + 512, nil
	}
}

// sparseKind tells how a sparse entry's map is stored, as archive/tar
// decides it: "gnu" (old GNU 'S' header and its extension blocks), "0.x"
// (PAX records), "1.0" (a text block at the start of the data), or "" for
// an entry that is not sparse to archive/tar (and so to containerd), even
// with GNU.sparse.* records (an unknown version, say).
func sparseKind(h *tar.Header) string {
	if h.Typeflag == tar.TypeGNUSparse {
		return "gnu"
	}
	major, minor := h.PAXRecords["GNU.sparse.major"], h.PAXRecords["GNU.sparse.minor"]
	switch {
	case major == "0" && (minor == "0" || minor == "1"):
		return "0.x"
	case major == "1" && minor == "0":
		return "1.0"
	case major != "" || minor != "":
		return ""
	case h.PAXRecords["GNU.sparse.map"] != "":
		return "0.x" // 0.0 and 0.1 wrote no version (archive/tar turns 0.0's records into a 0.1 map)
	}
	return ""
}

// maxSparseRegions bounds a sparse file's map, as archive/tar does.
const maxSparseRegions = 1 << 20

// sparseMap returns the data regions of the sparse entry hdr, whose headers
// start at hdrOff, from the same bytes archive/tar read them from: the old
// GNU header block and its extension blocks, the PAX records, or the PAX
// 1.0 map at the start of the data, which tr.Next has just read (and raw
// recorded). Empty regions are left out; the others must be in order,
// apart and inside the file.
func sparseMap(raw *rawReader, hdrOff int64, hdr *tar.Header) ([]Region, error) {
	var rs []Region
	add := func(off, n int64) error {
		if off < 0 || n < 0 || off > hdr.Size || n > hdr.Size-off {
			return fmt.Errorf("region of %d bytes at %d outside the file's %d", n, off, hdr.Size)
		}
		if len(rs) > 0 && off < rs[len(rs)-1].Offset+rs[len(rs)-1].Length {
			return fmt.Errorf("region at %d overlaps the one before or is out of order", off)
		}
		if n == 0 {
			return nil
		}
		if len(rs) >= maxSparseRegions {
			return fmt.Errorf("more than %d regions", maxSparseRegions)
		}
		rs = append(rs, Region{Offset: off, Length: n})
		return nil
	}
	switch sparseKind(hdr) {
	case "gnu":
		blk, end, err := headerBlock(raw, hdrOff)
		if err != nil {
			return nil, err
		}
		bufStart := raw.n - int64(len(raw.buf))
		// 4 entries in the header (offset 386), then 21 per extension
		// block while the byte after them is set.
		entries, ext := blk[386:482], blk[482]
		for {
			for i := 0; i+24 <= len(entries); i += 24 {
				if entries[i] == 0 {
					break
				}
				off, err1 := tarNumber(entries[i : i+12])
				n, err2 := tarNumber(entries[i+12 : i+24])
				if err1 != nil || err2 != nil {
					return nil, fmt.Errorf("bad number in the map at entry %d", len(rs))
				}
				if err := add(off, n); err != nil {
					return nil, err
				}
			}
			if ext == 0 {
				return rs, nil
			}
			if end+512 > raw.n || end < bufStart {
				return nil, fmt.Errorf("extension block at %d beyond the bytes read", end)
			}
			b := raw.buf[end-bufStart : end-bufStart+512]
			entries, ext, end = b[:504], b[504], end+512
		}
	case "0.x":
		m := hdr.PAXRecords["GNU.sparse.map"]
		var f []string
		if m != "" {
			f = strings.Split(m, ",")
		}
		if len(f)%2 != 0 || len(f)/2 > maxSparseRegions {
			return nil, fmt.Errorf("GNU.sparse.map of %d numbers", len(f))
		}
		for i := 0; i < len(f); i += 2 {
			off, err1 := strconv.ParseInt(f[i], 10, 64)
			n, err2 := strconv.ParseInt(f[i+1], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("bad number in GNU.sparse.map at pair %d", i/2)
			}
			if err := add(off, n); err != nil {
				return nil, err
			}
		}
		return rs, nil
	case "1.0":
		_, start, err := headerBlock(raw, hdrOff)
		if err != nil {
			return nil, err
		}
		bufStart := raw.n - int64(len(raw.buf))
		if start < bufStart || start > raw.n {
			return nil, fmt.Errorf("map beyond the bytes read")
		}
		text := raw.buf[start-bufStart:]
		next := func() (int64, error) {
			i := bytes.IndexByte(text, '\n')
			if i < 0 {
				return 0, fmt.Errorf("map ends early")
			}
			v, err := strconv.ParseInt(string(text[:i]), 10, 64)
			text = text[i+1:]
			return v, err
		}
		cnt, err := next()
		if err != nil || cnt < 0 || cnt > maxSparseRegions {
			return nil, fmt.Errorf("bad region count")
		}
		for i := int64(0); i < cnt; i++ {
			off, err1 := next()
			n, err2 := next()
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("bad number in the map at entry %d", i)
			}
			if err := add(off, n); err != nil {
				return nil, err
			}
		}
		return rs, nil
	}
	return nil, fmt.Errorf("not a sparse file to archive/tar")
}

// tarNumber parses a tar header numeric field: octal, or base-256 when the
// high bit of the first byte is set (positive values only).
func tarNumber(b []byte) (int64, error) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0] != 0x80 {
			return 0, fmt.Errorf("negative or oversized base-256 number")
		}
		var v uint64
		for _, c := range b[1:] {
			if v > math.MaxInt64>>8 {
				return 0, fmt.Errorf("base-256 number out of range")
			}
			v = v<<8 | uint64(c)
		}
		return int64(v), nil
	}
	s := strings.Trim(string(b), " \x00")
	if s == "" {
		return 0, nil
	}
	return strconv.ParseInt(s, 8, 64)
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// entryFromHeader turns a tar header into an Entry, rejecting unsafe paths.
func entryFromHeader(h *tar.Header, off int64) (Entry, error) {
	name, err := CleanName(h.Name)
	if err != nil {
		return Entry{}, fmt.Errorf("entry at offset %d: %w", off, err)
	}
	e := Entry{
		Name:         name,
		Type:         h.Typeflag,
		Mode:         h.Mode,
		UID:          int64(h.Uid),
		GID:          int64(h.Gid),
		Uname:        h.Uname,
		Gname:        h.Gname,
		Size:         h.Size,
		ModTimeSec:   h.ModTime.Unix(),
		ModTimeNsec:  int32(h.ModTime.Nanosecond()),
		HeaderOffset: off,
		Linkname:     h.Linkname,
	}
	if h.Size > MaxFileSize {
		return Entry{}, fmt.Errorf("%w: %.300q at offset %d: size %d larger than %d", ErrTooLarge, h.Name, off, h.Size, int64(MaxFileSize))
	}
	if e.Mode < 0 || e.UID < 0 || e.GID < 0 || e.Size < 0 || h.Devmajor < 0 || h.Devminor < 0 ||
		h.Devmajor > 1<<32-1 || h.Devminor > 1<<32-1 {
		return Entry{}, fmt.Errorf("%w: %q at offset %d: negative or oversized numeric field", ErrBadTar, h.Name, off)
	}
	if len(name) > MaxNameLength || !isCleanName(name, 0) || len(h.Linkname) > MaxNameLength {
		return Entry{}, fmt.Errorf("%w: %.300q at offset %d: path longer than %d bytes or a component longer than %d",
			ErrTooLarge, h.Name, off, MaxNameLength, MaxComponentLength)
	}
	if !unpackedType(h.Typeflag) {
		return Entry{}, fmt.Errorf("%w: %.300q at offset %d: type %q", ErrUnsupportedEntry, h.Name, off, h.Typeflag)
	}
	if h.Typeflag == tar.TypeLink {
		if e.Linkname, err = CleanName(h.Linkname); err != nil {
			return Entry{}, fmt.Errorf("hardlink %q at offset %d: %w", h.Name, off, err)
		}
	}
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
		e.Devmajor, e.Devminor = uint32(h.Devmajor), uint32(h.Devminor)
	}
	if sparseKind(h) != "" {
		e.Flags |= FlagSparse
	}
	var ext EntryExt
	for k, v := range h.PAXRecords {
		switch {
		case strings.HasPrefix(k, "SCHILY.xattr."):
			ext.Xattrs = append(ext.Xattrs, KV{Key: strings.TrimPrefix(k, "SCHILY.xattr."), Value: v})
		case mirroredPAX[k]:
		default:
			ext.PAX = append(ext.PAX, KV{Key: k, Value: v})
		}
	}
	if len(ext.Xattrs)+len(ext.PAX) > 0 {
		sort.Slice(ext.Xattrs, func(i, j int) bool { return ext.Xattrs[i].Key < ext.Xattrs[j].Key })
		sort.Slice(ext.PAX, func(i, j int) bool { return ext.PAX[i].Key < ext.PAX[j].Key })
		e.Ext = &ext
	}
	if e.Flags&FlagSparse != 0 && h.Typeflag != tar.TypeGNUSparse {
		e.Type = tar.TypeReg
	}
	return e, nil
}

// unpackedType reports whether a reader can show entries of type typ: the
// types container runtimes unpack, sparse files, and contiguous files
// ('7', a regular file to every tar reader but containerd's and Docker's,
// which refuse it). archive/tar has already consumed PAX and GNU long-name
// headers and turned old regular files ('\x00') into '0' or '5'.
func unpackedType(typ byte) bool {
	switch typ {
	case tar.TypeReg, tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo,
		tar.TypeCont, tar.TypeGNUSparse:
		return true
	}
	return false
}

// mirroredPAX are PAX keys whose values the Entry already holds in typed fields.
var mirroredPAX = map[string]bool{
	"path": true, "linkpath": true, "size": true, "uid": true, "gid": true,
	"uname": true, "gname": true, "mtime": true,
}

type countingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}
