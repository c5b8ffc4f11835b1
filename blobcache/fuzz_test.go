package blobcache

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzRecords feeds the decoders of what the cache reads back from disk
// (badger's chunk, meta and extent records, a segment record's header)
// arbitrary bytes, as a damaged or tampered cache directory would: none may
// panic or accept a size beyond MaxChunkSize, and whatever a decoder
// accepts encodes back to the same bytes, so no two stored forms mean the
// same record.
func FuzzRecords(f *testing.F) {
	var k key
	for i := range k {
		k[i] = byte(i)
	}
	rec := make([]byte, chunkHeaderLen+3)
	chunkHeader{crc: crc32c([]byte("abc")), k: k}.encode(rec)
	copy(rec[chunkHeaderLen:], "abc")
	f.Add(rec)
	f.Add(meta{size: 3, atime: 1700000000}.encode())
	f.Add(extent{crc: 7, seg: 1, off: 4096, size: 262144}.encode())
	hdr := make([]byte, segHdrLen)
	encodeSegHeader(hdr, 7, 262144, k)
	f.Add(hdr)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, payload, err := decodeChunkRecord(b); err == nil {
			if len(payload) > MaxChunkSize {
				t.Fatalf("chunk record with a %d-byte payload accepted", len(payload))
			}
			again := make([]byte, chunkHeaderLen)
			h.encode(again)
			if !bytes.Equal(append(again, payload...), b) {
				t.Fatalf("chunk record %x decodes to %+v, which encodes to %x", b[:chunkHeaderLen], h, again)
			}
		}
		if m, err := decodeMeta(b); err == nil {
			if m.size < 0 || m.size > MaxChunkSize {
				t.Fatalf("meta record with size %d accepted", m.size)
			}
			if again := m.encode(); !bytes.Equal(again, b) {
				t.Fatalf("meta record %x decodes to %+v, which encodes to %x", b, m, again)
			}
		}
		if isExtent(b) != (len(b) > 0 && b[0] == extentMagic) {
			t.Fatalf("isExtent(%x) = %v", b, isExtent(b))
		}
		if x, err := decodeExtent(b); err == nil {
			if x.size < 0 || x.size > MaxChunkSize || x.off < 0 || x.seg == 0 {
				t.Fatalf("extent %+v accepted", x)
			}
			if again := x.encode(); !bytes.Equal(again, b) {
				t.Fatalf("extent record %x decodes to %+v, which encodes to %x", b, x, again)
			}
		}
		if len(b) >= segHdrLen {
			// checkSegHeader accepts a header only for the chunk, size and
			// checksum it is asked about: what encodeSegHeader wrote.
			var want key
			copy(want[:], b[16:48])
			crc, size := binary.LittleEndian.Uint32(b[4:8]), int64(binary.LittleEndian.Uint64(b[8:16]))
			if checkSegHeader(b[:segHdrLen], crc, size, want) == nil {
				again := make([]byte, segHdrLen)
				encodeSegHeader(again, crc, size, want)
				if !bytes.Equal(again, b[:segHdrLen]) {
					t.Fatalf("segment header %x accepted, encodes to %x", b[:segHdrLen], again)
				}
			}
			if checkSegHeader(b[:segHdrLen], crc+1, size, want) == nil {
				t.Fatalf("segment header %x accepted for a crc it does not hold", b[:segHdrLen])
			}
		}
	})
}
