package blobcache

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// On-disk layout of Badger (all integers little endian). Two keys per chunk,
// written and deleted together in one transaction:
//
//	'c' + sha256 (33 bytes) → chunk record: header (40 bytes) + chunk bytes
//	'm' + sha256 (33 bytes) → meta record (24 bytes)
//
// chunk record header:
//
//	[0]    'L' magic
//	[1]    version (1)
//	[2:4]  zero
//	[4:8]  CRC-32C (Castagnoli) of the chunk bytes
//	[8:40] sha256 of the chunk bytes, i.e. the record's own key: a value
//	       pointer that ends up at another chunk's intact record (after a
//	       crash, or a bug) is rejected instead of served
//
// meta record:
//
//	[0]     version (1)
//	[1:8]   zero
//	[8:16]  chunk size in bytes
//	[16:24] last access, unix nanoseconds (persisted lazily, see Open)
//
// The meta records are small, stay in badger's LSM tree and are all read on
// Open to rebuild the LRU index without touching chunk bytes.
const (
	prefixChunk = 'c'
	prefixMeta  = 'm'
	keyLen      = 1 + 32

	chunkMagic     = 'L'
	chunkVersion   = 1
	chunkHeaderLen = 40

	metaVersion = 1
	metaLen     = 24
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// dbKey returns the badger key for k under prefix p.
func dbKey(p byte, k key) []byte {
	b := make([]byte, keyLen)
	b[0] = p
	copy(b[1:], k[:])
	return b
}

// chunkHeader is the decoded header of a chunk record.
type chunkHeader struct {
	crc uint32
	k   key
}

// encode writes the header into dst[:chunkHeaderLen].
func (h chunkHeader) encode(dst []byte) {
	dst[0] = chunkMagic
	dst[1] = chunkVersion
	dst[2], dst[3] = 0, 0
	binary.LittleEndian.PutUint32(dst[4:8], h.crc)
	copy(dst[8:40], h.k[:])
}

// decodeChunkRecord splits a stored chunk record into its header and payload.
func decodeChunkRecord(rec []byte) (chunkHeader, []byte, error) {
	var h chunkHeader
	if len(rec) < chunkHeaderLen {
		return h, nil, fmt.Errorf("chunk record of %d bytes: %w", len(rec), errCorruptRecord)
	}
	if rec[0] != chunkMagic || rec[1] != chunkVersion || rec[2] != 0 || rec[3] != 0 {
		return h, nil, fmt.Errorf("chunk record header %x: %w", rec[:4], errCorruptRecord)
	}
	if len(rec)-chunkHeaderLen > MaxChunkSize {
		return h, nil, fmt.Errorf("chunk record of %d bytes: %w", len(rec), errCorruptRecord)
	}
	h.crc = binary.LittleEndian.Uint32(rec[4:8])
	copy(h.k[:], rec[8:40])
	return h, rec[chunkHeaderLen:], nil
}

// meta is the decoded meta record.
type meta struct {
	size  int64
	atime int64
}

func (m meta) encode() []byte {
	b := make([]byte, metaLen)
	b[0] = metaVersion
	binary.LittleEndian.PutUint64(b[8:16], uint64(m.size))
	binary.LittleEndian.PutUint64(b[16:24], uint64(m.atime))
	return b
}

func decodeMeta(b []byte) (meta, error) {
	if len(b) != metaLen {
		return meta{}, fmt.Errorf("meta record of %d bytes: %w", len(b), errCorruptRecord)
	}
	if b[0] != metaVersion {
		return meta{}, fmt.Errorf("meta record version %d: %w", b[0], errCorruptRecord)
	}
	for _, z := range b[1:8] {
		if z != 0 {
			return meta{}, fmt.Errorf("meta record reserved bytes %x: %w", b[1:8], errCorruptRecord)
		}
	}
	size := binary.LittleEndian.Uint64(b[8:16])
	if size > MaxChunkSize {
		return meta{}, fmt.Errorf("meta record size %d: %w", size, errCorruptRecord)
	}
	return meta{size: int64(size), atime: int64(binary.LittleEndian.Uint64(b[16:24]))}, nil
}
