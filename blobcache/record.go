package blobcache

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// On-disk layout of Badger (all integers little endian). Two keys per chunk,
// written and deleted together in one transaction:
//
//	'c' + sha256 (33 bytes) → chunk record: header (8 bytes) + chunk bytes
//	'm' + sha256 (33 bytes) → meta record (24 bytes)
//
// chunk record header:
//
//	[0]    'L' magic
//	[1]    version (1)
//	[2:4]  zero
//	[4:8]  CRC-32C (Castagnoli) of the chunk bytes
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
	chunkHeaderLen = 8

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

// encodeChunkHeader writes the chunk record header for data's CRC into dst.
func encodeChunkHeader(dst []byte, crc uint32) {
	dst[0] = chunkMagic
	dst[1] = chunkVersion
	dst[2], dst[3] = 0, 0
	binary.LittleEndian.PutUint32(dst[4:8], crc)
}

// decodeChunkRecord splits a stored chunk record into its CRC and payload.
func decodeChunkRecord(rec []byte) (crc uint32, payload []byte, err error) {
	if len(rec) < chunkHeaderLen {
		return 0, nil, fmt.Errorf("chunk record of %d bytes: %w", len(rec), ErrCorruptRecord)
	}
	if rec[0] != chunkMagic || rec[1] != chunkVersion || rec[2] != 0 || rec[3] != 0 {
		return 0, nil, fmt.Errorf("chunk record header %x: %w", rec[:4], ErrCorruptRecord)
	}
	if len(rec)-chunkHeaderLen > MaxChunkSize {
		return 0, nil, fmt.Errorf("chunk record of %d bytes: %w", len(rec), ErrCorruptRecord)
	}
	return binary.LittleEndian.Uint32(rec[4:8]), rec[chunkHeaderLen:], nil
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
		return meta{}, fmt.Errorf("meta record of %d bytes: %w", len(b), ErrCorruptRecord)
	}
	if b[0] != metaVersion {
		return meta{}, fmt.Errorf("meta record version %d: %w", b[0], ErrCorruptRecord)
	}
	for _, z := range b[1:8] {
		if z != 0 {
			return meta{}, fmt.Errorf("meta record reserved bytes %x: %w", b[1:8], ErrCorruptRecord)
		}
	}
	size := binary.LittleEndian.Uint64(b[8:16])
	if size > MaxChunkSize {
		return meta{}, fmt.Errorf("meta record size %d: %w", size, ErrCorruptRecord)
	}
	return meta{size: int64(size), atime: int64(binary.LittleEndian.Uint64(b[16:24]))}, nil
}
