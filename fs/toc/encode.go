package toc

import (
	"encoding/binary"
	"fmt"
	"math"
	"path"
	"strings"
	"unsafe"
)

// tocMagic opens every encoded TOC; the version follows as a uvarint.
const tocMagic = "LZFSTOC\x00"

// TOC header flag bits (see docs/format.md).
const (
	// tocFlagLibraryChunkSize: a uvarint library chunk size follows the chunk size.
	tocFlagLibraryChunkSize = 1 << iota
	// tocFlagSparseMaps: entries may carry a sparse map (entry flag bit 5).
	// Set only when one does, so that readers from before sparse maps
	// refuse exactly the TOCs they would misread.
	tocFlagSparseMaps

	tocFlagsKnown = tocFlagLibraryChunkSize | tocFlagSparseMaps
)

// Entry field-presence bits in the encoding (see docs/format.md).
const (
	encFlagSparse = 1 << iota
	encFlagLink
	encFlagDev
	encFlagXattrs
	encFlagPAX
	encFlagSparseMap
)

func cleanPath(p string) string { return path.Clean(p) }

// Marshal encodes t in the binary TOC encoding (uncompressed). The encoding is
// deterministic: equal TOCs give equal bytes.
func (t *TOC) Marshal() []byte {
	strs := map[string]uint64{}
	var table []string
	intern := func(s string) uint64 {
		if i, ok := strs[s]; ok {
			return i
		}
		i := uint64(len(table))
		strs[s] = i
		table = append(table, s)
		return i
	}
	// Intern in a first pass so the table precedes its users.
	for i := range t.Entries {
		e := &t.Entries[i]
		intern(e.Uname)
		intern(e.Gname)
		for _, kv := range e.Xattrs() {
			intern(kv.Key)
		}
		for _, kv := range e.PAX() {
			intern(kv.Key)
		}
	}

	b := make([]byte, 0, 64+len(t.Chunks)*44+len(t.Entries)*48)
	b = append(b, tocMagic...)
	b = binary.AppendUvarint(b, Version)
	var flags uint64
	if t.LibraryChunkSize != 0 && t.LibraryChunkSize != t.ChunkSize {
		flags |= tocFlagLibraryChunkSize
	}
	for i := range t.Entries {
		if t.Entries[i].Flags&FlagSparseMap != 0 {
			flags |= tocFlagSparseMaps
			break
		}
	}
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, uint64(t.ChunkSize))
	if flags&tocFlagLibraryChunkSize != 0 {
		b = binary.AppendUvarint(b, uint64(t.LibraryChunkSize))
	}
	b = binary.AppendUvarint(b, uint64(t.TarSize))
	b = binary.AppendUvarint(b, uint64(len(table)))
	for _, s := range table {
		b = appendString(b, s)
	}

	b = binary.AppendUvarint(b, uint64(len(t.Chunks)))
	var endU, endC int64
	for i := range t.Chunks {
		c := &t.Chunks[i]
		b = binary.AppendUvarint(b, uint64(c.Offset-endU))
		b = binary.AppendUvarint(b, uint64(c.Size))
		b = binary.AppendUvarint(b, uint64(c.CompressedOffset-endC))
		b = binary.AppendUvarint(b, uint64(c.CompressedSize))
		b = append(b, c.Sum[:]...)
		endU = c.Offset + int64(c.Size)
		endC = c.CompressedOffset + int64(c.CompressedSize)
	}

	b = binary.AppendUvarint(b, uint64(len(t.Entries)))
	prev := ""
	var prevHdr int64
	for i := range t.Entries {
		e := &t.Entries[i]
		b = append(b, e.Type)
		p := commonPrefix(prev, e.Name)
		b = binary.AppendUvarint(b, uint64(p))
		b = appendString(b, e.Name[p:])
		prev = e.Name
		b = binary.AppendUvarint(b, uint64(e.Mode))
		b = binary.AppendUvarint(b, uint64(e.UID))
		b = binary.AppendUvarint(b, uint64(e.GID))
		b = binary.AppendUvarint(b, strs[e.Uname])
		b = binary.AppendUvarint(b, strs[e.Gname])
		b = binary.AppendVarint(b, e.ModTimeSec)
		b = binary.AppendUvarint(b, uint64(e.ModTimeNsec))
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = binary.AppendUvarint(b, uint64(e.HeaderOffset-prevHdr))
		prevHdr = e.HeaderOffset
		b = binary.AppendUvarint(b, uint64(e.NumChunks))
		var f uint64
		if e.Flags&FlagSparse != 0 {
			f |= encFlagSparse
		}
		if e.Linkname != "" {
			f |= encFlagLink
		}
		if e.Devmajor != 0 || e.Devminor != 0 {
			f |= encFlagDev
		}
		if len(e.Xattrs()) > 0 {
			f |= encFlagXattrs
		}
		if len(e.PAX()) > 0 {
			f |= encFlagPAX
		}
		if e.Flags&FlagSparseMap != 0 {
			f |= encFlagSparseMap
		}
		b = binary.AppendUvarint(b, f)
		if f&encFlagLink != 0 {
			b = appendString(b, e.Linkname)
		}
		if f&encFlagDev != 0 {
			b = binary.AppendUvarint(b, uint64(e.Devmajor))
			b = binary.AppendUvarint(b, uint64(e.Devminor))
		}
		if f&encFlagXattrs != 0 {
			b = appendKVs(b, e.Xattrs(), strs)
		}
		if f&encFlagPAX != 0 {
			b = appendKVs(b, e.PAX(), strs)
		}
		if f&encFlagSparseMap != 0 {
			rs := e.SparseMap()
			b = binary.AppendUvarint(b, uint64(len(rs)))
			var end int64
			for _, r := range rs {
				b = binary.AppendUvarint(b, uint64(r.Offset-end))
				b = binary.AppendUvarint(b, uint64(r.Length))
				end = r.Offset + r.Length
			}
		}
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendKVs(b []byte, kvs []KV, strs map[string]uint64) []byte {
	b = binary.AppendUvarint(b, uint64(len(kvs)))
	for _, kv := range kvs {
		b = binary.AppendUvarint(b, strs[kv.Key])
		b = appendString(b, kv.Value)
	}
	return b
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// decoder reads the binary TOC encoding with bounds checks on every step.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: at byte %d: %s", ErrBadTOC, d.off, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint for %s", what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail("bad varint for %s", what)
		return 0
	}
	d.off += n
	return v
}

// int63 reads a uvarint that must fit a non-negative int64.
func (d *decoder) int63(what string) int64 {
	v := d.uvarint(what)
	if v > math.MaxInt64 {
		d.fail("%s out of range", what)
		return 0
	}
	return int64(v)
}

func (d *decoder) u32(what string) uint32 {
	v := d.uvarint(what)
	if v > math.MaxUint32 {
		d.fail("%s out of range", what)
		return 0
	}
	return uint32(v)
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail("truncated before %s", what)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *decoder) bytes(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail("truncated %s", what)
		return nil
	}
	s := d.b[d.off : d.off+n]
	d.off += n
	return s
}

func (d *decoder) str(what string) string {
	n := d.uvarint(what)
	if n > uint64(len(d.b)) {
		d.fail("%s length %d beyond the toc", what, n)
		return ""
	}
	return string(d.bytes(int(n), what))
}

// count reads an element count and checks that at least min bytes per
// element remain, so a hostile count cannot force a huge allocation.
func (d *decoder) count(what string, minBytes int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)-d.off)/uint64(minBytes) {
		d.fail("%s count %d larger than the toc allows", what, n)
		return 0
	}
	return int(n)
}

// Unmarshal decodes an uncompressed binary TOC and checks its consistency:
// chunk ranges in order and non-overlapping, every entry's chunks inside the
// table and covering exactly its size, names safe. It enforces the bounds
// that keep a small hostile TOC from costing much memory (see
// docs/format.md, "Limits"): MinEntryBytes per entry, MaxNameLength and
// MaxComponentLength, MaxNameExpansion for all names together, the zstd
// bound on every chunk's compressed size.
//
// A TOC with flag bits this reader does not know fails with
// ErrUnsupportedVersion (the layer is then served as a plain layer).
func Unmarshal(b []byte) (*TOC, error) {
	d := &decoder{b: b}
	if len(b) < len(tocMagic) || string(b[:len(tocMagic)]) != tocMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrBadTOC)
	}
	d.off = len(tocMagic)
	if v := d.uvarint("version"); d.err == nil && v != Version {
		return nil, fmt.Errorf("%w: toc version %d (this reader knows %d)", ErrUnsupportedVersion, v, Version)
	}
	flags := d.uvarint("flags")
	if d.err == nil && flags&^tocFlagsKnown != 0 {
		return nil, fmt.Errorf("%w: toc flags %#x (this reader knows %#x)", ErrUnsupportedVersion, flags, tocFlagsKnown)
	}
	t := &TOC{}
	t.ChunkSize = d.int63("chunk size")
	t.LibraryChunkSize = t.ChunkSize
	if flags&tocFlagLibraryChunkSize != 0 {
		t.LibraryChunkSize = d.int63("library chunk size")
		// Strictly smaller: an equal size is encoded without the flag, so
		// that every TOC has one encoding.
		if d.err == nil && (t.LibraryChunkSize <= 0 || t.LibraryChunkSize >= t.ChunkSize) {
			d.fail("library chunk size %d outside (0, chunk size %d)", t.LibraryChunkSize, t.ChunkSize)
		}
	}
	t.TarSize = d.int63("tar size")
	nstr := d.count("string table", 1)
	if nstr > MaxTOCStrings {
		d.fail("string table of %d strings, more than %d", nstr, MaxTOCStrings)
		return nil, d.err
	}
	table := make([]string, nstr)
	for i := range table {
		table[i] = d.str("string")
	}
	lookup := func(what string) string {
		i := d.uvarint(what)
		if d.err != nil {
			return ""
		}
		if i >= uint64(len(table)) {
			d.fail("%s index %d outside the string table", what, i)
			return ""
		}
		return table[i]
	}

	nchunks := d.count("chunk", 36)
	t.Chunks = make([]Chunk, nchunks)
	var endU, endC int64
	for i := range t.Chunks {
		c := &t.Chunks[i]
		gapU := d.int63("chunk offset")
		c.Size = d.u32("chunk size")
		gapC := d.int63("chunk compressed offset")
		c.CompressedSize = d.u32("chunk compressed size")
		copy(c.Sum[:], d.bytes(32, "chunk digest"))
		if d.err != nil {
			return nil, d.err
		}
		if c.Size == 0 || c.CompressedSize == 0 {
			d.fail("chunk %d: empty", i)
		}
		if c.Size > MaxChunkSize || c.CompressedSize > MaxCompressedSize(c.Size) {
			d.fail("chunk %d: %d bytes compressed to %d: beyond the zstd bound %d (chunks are at most %d bytes)",
				i, c.Size, c.CompressedSize, MaxCompressedSize(c.Size), MaxChunkSize)
		}
		c.Offset = endU + gapU
		c.CompressedOffset = endC + gapC
		if c.Offset < endU || c.CompressedOffset < endC || c.Offset > math.MaxInt64-int64(c.Size) ||
			c.CompressedOffset > math.MaxInt64-int64(c.CompressedSize) {
			d.fail("chunk %d: offset overflow", i)
		}
		endU = c.Offset + int64(c.Size)
		endC = c.CompressedOffset + int64(c.CompressedSize)
		if d.err != nil {
			return nil, d.err
		}
	}
	if endU > t.TarSize {
		d.fail("chunks end at %d, beyond the tar size %d", endU, t.TarSize)
	}

	nent := d.count("entry", MinEntryBytes)
	// Names are whole in memory but prefix-compressed in the encoding:
	// bound their total by the size of the encoding.
	nameBudget := min(uint64(MaxNameExpansion)*uint64(len(b))+1<<20, math.MaxUint32)
	var nameBytes uint64
	t.Entries = make([]Entry, nent)
	// Names are assembled in one arena and turned into a single string at the
	// end: one allocation for all names instead of one per entry.
	var arena []byte
	spans := make([]uint64, nent)  // start<<32 | length, in arena
	shared := make([]uint32, nent) // name bytes shared with the previous name
	prevStart, prevLen := 0, 0
	var hdr int64
	var next uint32
	for i := range t.Entries {
		e := &t.Entries[i]
		e.Type = d.byte1("entry type")
		p := d.uvarint("name prefix")
		suffix := d.bytes(int(min(d.uvarint("name length"), uint64(len(d.b)+1))), "name")
		if d.err != nil {
			return nil, d.err
		}
		if p > uint64(prevLen) {
			d.fail("entry %d: name prefix %d longer than the previous name", i, p)
			return nil, d.err
		}
		if p+uint64(len(suffix)) > MaxNameLength {
			d.fail("entry %d: name of %d bytes, longer than %d", i, p+uint64(len(suffix)), MaxNameLength)
			return nil, d.err
		}
		if nameBytes += p + uint64(len(suffix)); nameBytes > nameBudget {
			d.fail("entry %d: names add up to more than %d bytes (%d times the toc plus 1 MiB)", i, nameBudget, MaxNameExpansion)
			return nil, d.err
		}
		start := len(arena)
		if start+int(p)+len(suffix) > math.MaxUint32 {
			d.fail("entry %d: names too long", i)
			return nil, d.err
		}
		if need := start + int(p) + len(suffix); need > cap(arena) {
			// Grow by doubling (append grows large slices by 1.25x, which
			// allocates ~5x the final size in total).
			na := make([]byte, start, min(max(2*cap(arena), need, 4096), int(nameBudget)))
			copy(na, arena)
			arena = na
		}
		arena = append(arena, arena[prevStart:prevStart+int(p)]...)
		arena = append(arena, suffix...)
		prevStart, prevLen = start, len(arena)-start
		spans[i] = uint64(start)<<32 | uint64(prevLen)
		shared[i] = uint32(p)
		e.Mode = d.int63("mode")
		e.UID = d.int63("uid")
		e.GID = d.int63("gid")
		e.Uname = lookup("uname")
		e.Gname = lookup("gname")
		e.ModTimeSec = d.varint("mtime")
		ns := d.uvarint("mtime nsec")
		if ns >= 1e9 {
			d.fail("entry %d: mtime nanoseconds %d", i, ns)
		}
		e.ModTimeNsec = int32(ns)
		e.Size = d.int63("size")
		h := d.int63("header offset")
		if h > math.MaxInt64-hdr {
			d.fail("entry %d: header offset overflow", i)
		}
		hdr += h
		e.HeaderOffset = hdr
		e.NumChunks = d.u32("chunk count")
		f := d.uvarint("flags")
		if f >= encFlagSparseMap<<1 || f&encFlagSparseMap != 0 && flags&tocFlagSparseMaps == 0 {
			d.fail("entry %d: flags %#x", i, f)
			return nil, d.err
		}
		if f&encFlagSparse != 0 {
			e.Flags |= FlagSparse
		}
		if f&encFlagLink != 0 {
			if e.Linkname = d.str("linkname"); len(e.Linkname) > MaxNameLength {
				d.fail("entry %d: link target of %d bytes, longer than %d", i, len(e.Linkname), MaxNameLength)
			}
		}
		if f&encFlagDev != 0 {
			e.Devmajor = d.u32("devmajor")
			e.Devminor = d.u32("devminor")
		}
		if f&(encFlagXattrs|encFlagPAX) != 0 {
			e.Ext = &EntryExt{}
			if f&encFlagXattrs != 0 {
				e.Ext.Xattrs = d.kvs(lookup, "xattr")
			}
			if f&encFlagPAX != 0 {
				e.Ext.PAX = d.kvs(lookup, "pax record")
			}
		}
		if f&encFlagSparseMap != 0 {
			e.Flags |= FlagSparseMap
			if rs := d.regions(); len(rs) > 0 {
				if e.Ext == nil {
					e.Ext = &EntryExt{}
				}
				e.Ext.Sparse = rs
			}
		}
		if d.err != nil {
			return nil, d.err
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	// The arena is never written again: share it instead of copying.
	names := unsafe.String(unsafe.SliceData(arena), len(arena))
	for i := range t.Entries {
		start, n := int(spans[i]>>32), int(spans[i]&math.MaxUint32)
		t.Entries[i].Name = names[start : start+n]
		// Whole components shared with the previous (checked) name need no new check.
		from := 0
		if i > 0 {
			from = strings.LastIndexByte(t.Entries[i].Name[:shared[i]], '/') + 1
		}
		if !isCleanName(t.Entries[i].Name, from) {
			return nil, fmt.Errorf("%w: entry %d (%.300q): name is not clean, escapes the root or has a component longer than %d bytes",
				ErrBadTOC, i, t.Entries[i].Name, MaxComponentLength)
		}
		if err := t.checkEntry(i, &t.Entries[i], &next); err != nil {
			return nil, err
		}
	}
	if int(next) != len(t.Chunks) {
		return nil, fmt.Errorf("%w: %d chunks listed, %d used by entries", ErrBadTOC, len(t.Chunks), next)
	}
	if d.off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadTOC, len(b)-d.off)
	}
	return t, nil
}

// isCleanName reports whether name is what CleanName returns for some path:
// relative, no empty, "." or ".." components, none longer than
// MaxComponentLength, no trailing slash. It does
// not allocate (path.Clean dominated TOC decoding). Components before byte
// from (a component boundary) are taken as checked.
func isCleanName(name string, from int) bool {
	if name == "" {
		return true
	}
	start := from
	for i := from; i <= len(name); i++ {
		if i == len(name) || name[i] == '/' {
			switch name[start:i] {
			case "", ".", "..":
				return false
			}
			if i-start > MaxComponentLength {
				return false
			}
			start = i + 1
		}
	}
	return true
}

func (d *decoder) kvs(lookup func(string) string, what string) []KV {
	n := d.count(what, 2)
	if n == 0 {
		return nil
	}
	kvs := make([]KV, n)
	for i := range kvs {
		kvs[i].Key = lookup(what + " key")
		kvs[i].Value = d.str(what + " value")
	}
	return kvs
}

// regions reads a sparse map: a count, then each region's gap from the end
// of the one before and its length.
func (d *decoder) regions() []Region {
	n := d.count("sparse region", 2)
	if n == 0 {
		return nil
	}
	rs := make([]Region, n)
	var end int64
	for i := range rs {
		gap, length := d.int63("sparse gap"), d.int63("sparse length")
		if d.err != nil {
			return nil
		}
		if gap > MaxFileSize || length > MaxFileSize || end > MaxFileSize-gap-length {
			d.fail("sparse region %d beyond %d bytes", i, int64(MaxFileSize))
			return nil
		}
		rs[i] = Region{Offset: end + gap, Length: length}
		end += gap + length
	}
	return rs
}

// checkEntry validates entry i and assigns its chunks, which follow those of
// the entries before it.
func (t *TOC) checkEntry(i int, e *Entry, next *uint32) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: entry %d (%q): %s", ErrBadTOC, i, e.Name, fmt.Sprintf(format, args...))
	}
	if e.Size > MaxFileSize {
		return bad("size %d larger than %d", e.Size, int64(MaxFileSize))
	}
	if e.Type == 0x31 /* hardlink */ {
		if !isCleanName(e.Linkname, 0) {
			return bad("hardlink target is not clean or escapes the root")
		}
	}
	// The bytes the chunks hold: the file's, or a sparse file's regions'.
	stored := e.Size
	if e.Flags&FlagSparseMap != 0 {
		if e.Flags&FlagSparse == 0 || !e.IsRegular() && e.Type != 'S' {
			return bad("a sparse map on an entry that is not a sparse file")
		}
		stored = 0
		var end int64
		for j, r := range e.SparseMap() {
			if r.Length <= 0 || r.Offset < end || r.Offset+r.Length > e.Size {
				return bad("sparse region %d (%d bytes at %d) empty, out of order or beyond the size %d", j, r.Length, r.Offset, e.Size)
			}
			end = r.Offset + r.Length
			stored += r.Length
		}
	} else if e.Flags&FlagSparse != 0 {
		stored = 0
	}
	if e.NumChunks == 0 {
		if e.Chunked() && stored != 0 {
			return bad("%d bytes but no chunks", stored)
		}
		return nil
	}
	if !e.Chunked() {
		return bad("chunks on an entry that cannot have them")
	}
	if uint64(*next)+uint64(e.NumChunks) > uint64(len(t.Chunks)) {
		return bad("chunks %d+%d beyond the table of %d", *next, e.NumChunks, len(t.Chunks))
	}
	e.FirstChunk = *next
	*next += e.NumChunks
	cs := t.Chunks[e.FirstChunk:*next]
	pos := cs[0].Offset
	for j := range cs {
		if cs[j].Offset != pos {
			return bad("chunk %d not contiguous with the one before", j)
		}
		pos += int64(cs[j].Size)
	}
	if pos-cs[0].Offset != stored {
		return bad("chunks cover %d bytes, the file stores %d", pos-cs[0].Offset, stored)
	}
	if cs[0].Offset < e.HeaderOffset+512 {
		return bad("data at %d before its header at %d", cs[0].Offset, e.HeaderOffset)
	}
	return nil
}
