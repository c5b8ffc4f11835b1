package toc

import (
	"archive/tar"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// TOC is the decoded table of contents of one converted layer.
type TOC struct {
	// ChunkSize is the nominal size files were cut with (the last chunk of a file is shorter).
	ChunkSize int64
	// LibraryChunkSize is the nominal size shared libraries (IsSharedLibrary)
	// were cut with: at most ChunkSize; equal to it when the layer does not
	// cut them smaller.
	LibraryChunkSize int64
	// TarSize is the size of the layer's uncompressed tar.
	TarSize int64
	// Entries lists every tar entry in tar order (PAX global headers excepted).
	Entries []Entry
	// Chunks lists every content chunk in tar (and blob) order.
	Chunks []Chunk
}

// Chunk is one independently compressed piece of a file's contents.
type Chunk struct {
	// Offset is the chunk's offset in the uncompressed tar stream.
	Offset int64
	// CompressedOffset is the offset of the chunk's zstd frame in the blob.
	CompressedOffset int64
	// Size and CompressedSize are the uncompressed and compressed (frame) sizes.
	Size           uint32
	CompressedSize uint32
	// Sum is the sha256 of the chunk's uncompressed bytes: its content address.
	Sum [32]byte
}

// MaxCompressedSize returns the largest frame a chunk of size uncompressed
// bytes may have: zstd's worst-case bound (ZSTD_COMPRESSBOUND: size +
// size/256, plus a margin for small inputs) and 64 bytes of frame overhead
// (frame header, block headers, checksum). A TOC claiming more is refused,
// so that a claimed compressed size never drives an allocation.
func MaxCompressedSize(size uint32) uint32 {
	n := uint64(size) + uint64(size)>>8 + 64
	if size < 128<<10 {
		n += uint64(128<<10-size) >> 11
	}
	return uint32(min(n, math.MaxUint32))
}

// Digest returns the chunk's content address.
func (c *Chunk) Digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(c.Sum[:]))
}

// Entry flags.
const (
	// FlagSparse marks a GNU/PAX sparse file. Without FlagSparseMap its
	// data is kept in the stream but not cut into chunks (TOCs written
	// before sparse maps: readers cannot serve its contents).
	FlagSparse = 1 << 0
	// FlagSparseMap marks a sparse file whose data regions are in
	// Entry.SparseMap and whose stored bytes (the regions' contents, one
	// after the other) are its chunks; the holes between them read as
	// zeros.
	FlagSparseMap = 1 << 1
)

// Region is one data region of a sparse file: Length bytes at logical
// offset Offset, stored in the file's chunks after the regions before it.
type Region struct {
	Offset, Length int64
}

// Entry describes one tar entry with all of its metadata. Fields are
// ordered for size: a decoded TOC keeps one Entry per tar entry in memory.
type Entry struct {
	// Name is the cleaned path relative to the layer root ("" is the root
	// itself), without a leading "./" or "/" or a trailing "/".
	Name string
	// Linkname is the target of a symlink (verbatim) or a hardlink (cleaned like Name).
	Linkname string
	Uname    string
	Gname    string
	// Size is the file's logical size.
	Size int64
	// Mode holds the permission and special bits (setuid, setgid, sticky) as in the tar header.
	Mode int64
	UID  int64
	GID  int64
	// ModTime is the modification time (seconds and nanoseconds since the epoch).
	ModTimeSec int64
	// HeaderOffset is the offset in the tar of the entry's first header block
	// (including any PAX or GNU long-name header before it).
	HeaderOffset int64
	ModTimeNsec  int32
	Devmajor     uint32
	Devminor     uint32
	// FirstChunk and NumChunks select the entry's content chunks in TOC.Chunks.
	FirstChunk uint32
	NumChunks  uint32
	// Type is the tar typeflag (tar.TypeReg, tar.TypeDir, ...).
	Type  byte
	Flags uint8
	// Ext holds the entry's xattrs and other PAX records; nil when it has none
	// (most entries), which keeps an Entry small.
	Ext *EntryExt
}

// EntryExt holds the rarer metadata of an entry.
type EntryExt struct {
	// Xattrs holds extended attributes (from SCHILY.xattr.* PAX records), sorted by key.
	Xattrs []KV
	// PAX holds the entry's other PAX records (not the ones already mirrored
	// by Entry's fields: path, linkpath, size, uid, gid, uname, gname,
	// mtime), sorted by key.
	PAX []KV
	// Sparse holds a sparse file's data regions (FlagSparseMap), in
	// increasing order, none empty, none overlapping.
	Sparse []Region
}

// SparseMap returns the data regions of a sparse file with FlagSparseMap
// (nil for any other entry, and for a sparse file that is all hole).
func (e *Entry) SparseMap() []Region {
	if e.Ext == nil {
		return nil
	}
	return e.Ext.Sparse
}

// Chunked reports whether the entry's contents are served from its chunks:
// a regular file, or a sparse file with its map.
func (e *Entry) Chunked() bool {
	if e.Flags&FlagSparse != 0 {
		return e.Flags&FlagSparseMap != 0
	}
	return e.IsRegular()
}

// Xattrs returns the entry's extended attributes, sorted by key.
func (e *Entry) Xattrs() []KV {
	if e.Ext == nil {
		return nil
	}
	return e.Ext.Xattrs
}

// PAX returns the entry's other PAX records, sorted by key.
func (e *Entry) PAX() []KV {
	if e.Ext == nil {
		return nil
	}
	return e.Ext.PAX
}

// KV is one key/value pair of an entry's xattrs or PAX records.
type KV struct {
	Key   string
	Value string
}

// ModTime returns the entry's modification time.
func (e *Entry) ModTime() time.Time { return time.Unix(e.ModTimeSec, int64(e.ModTimeNsec)) }

// IsRegular reports whether the entry is a regular file (with content).
func (e *Entry) IsRegular() bool {
	return e.Type == tar.TypeReg || e.Type == 0 /* old TypeRegA */ || e.Type == tar.TypeCont
}

// Xattr returns the value of the extended attribute key, if present.
func (e *Entry) Xattr(key string) (string, bool) {
	xs := e.Xattrs()
	i := sort.Search(len(xs), func(i int) bool { return xs[i].Key >= key })
	if i < len(xs) && xs[i].Key == key {
		return xs[i].Value, true
	}
	return "", false
}

// EntryChunks returns the content chunks of entry e (a view into t.Chunks).
func (t *TOC) EntryChunks(e *Entry) []Chunk {
	if e.NumChunks == 0 {
		return nil
	}
	return t.Chunks[e.FirstChunk : e.FirstChunk+e.NumChunks]
}

// ChunkRange returns the index range [first, last) of t.Chunks that holds the
// bytes [off, off+n) of entry e's contents. It returns an empty range when the
// range is empty or beyond the end of the file.
func (t *TOC) ChunkRange(e *Entry, off, n int64) (first, last int) {
	if e.NumChunks == 0 || n <= 0 || off >= e.Size || off < 0 {
		return 0, 0
	}
	chunks := t.EntryChunks(e)
	base := chunks[0].Offset
	end := off + n
	if end > e.Size {
		end = e.Size
	}
	// First chunk whose end is beyond off.
	i := sort.Search(len(chunks), func(i int) bool {
		return chunks[i].Offset-base+int64(chunks[i].Size) > off
	})
	j := sort.Search(len(chunks), func(j int) bool { return chunks[j].Offset-base >= end })
	return int(e.FirstChunk) + i, int(e.FirstChunk) + j
}

// DataOffset returns the offset of entry e's contents in the tar stream, or -1 if it has no chunks.
func (t *TOC) DataOffset(e *Entry) int64 {
	if e.NumChunks == 0 {
		return -1
	}
	return t.Chunks[e.FirstChunk].Offset
}

// CleanName turns a tar path into the form used by Entry.Name, or returns
// ErrUnsafePath when it escapes the root ("..", or ".." after cleaning).
func CleanName(name string) (string, error) {
	n := strings.TrimLeft(name, "/")
	if n == "" || n == "." || n == "./" {
		return "", nil
	}
	c := cleanPath(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// IsSharedLibrary reports whether the file called name (a TOC entry name) is
// cut as a shared library: its base name ends in ".so" or holds ".so."
// (libc.so.6, libtorch_cpu.so.1.13.0, _multiarray_umath.cpython-311-x86_64-linux-gnu.so).
// The dynamic loader maps a library and the kernel faults in small
// scattered parts of it, so smaller chunks fetch less of what start-up never
// reads (docs/format.md, "Choosing the chunk size").
func IsSharedLibrary(name string) bool {
	base := name[strings.LastIndexByte(name, '/')+1:]
	return strings.HasSuffix(base, ".so") || strings.Contains(base, ".so.")
}
