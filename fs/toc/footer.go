package toc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

const (
	footerMagic       = "LZFSFOOT"
	footerPayloadSize = 64
)

// Location says where a layer's TOC bytes are in its blob and what they hash to.
type Location struct {
	Offset int64
	Length int64
	Digest digest.Digest
}

// Footer is the fixed-size frame at the end of every converted blob. It
// repeats the TOC location so that a reader without the descriptor's
// annotations can find the TOC with one more range request.
type Footer struct {
	Location
	Version uint32
}

// AppendFooter appends f's encoding (a zstd skippable frame of FooterSize bytes) to b.
func AppendFooter(b []byte, f Footer) []byte {
	b = binary.LittleEndian.AppendUint32(b, FooterFrameMagic)
	b = binary.LittleEndian.AppendUint32(b, footerPayloadSize)
	b = append(b, footerMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(f.Offset))
	b = binary.LittleEndian.AppendUint64(b, uint64(f.Length))
	sum, _ := hexSum(f.Digest)
	b = append(b, sum[:]...)
	b = binary.LittleEndian.AppendUint32(b, f.Version)
	b = binary.LittleEndian.AppendUint32(b, 0) // reserved
	return b
}

// ParseFooter decodes the last FooterSize bytes of a blob.
func ParseFooter(b []byte) (Footer, error) {
	var f Footer
	if len(b) != FooterSize {
		return f, fmt.Errorf("%w: %d bytes, want %d", ErrBadFooter, len(b), FooterSize)
	}
	if binary.LittleEndian.Uint32(b[0:4]) != FooterFrameMagic ||
		binary.LittleEndian.Uint32(b[4:8]) != footerPayloadSize ||
		string(b[8:16]) != footerMagic {
		return f, fmt.Errorf("%w: no lazyfs footer magic", ErrNotChunked)
	}
	p := b[16:]
	off, n := binary.LittleEndian.Uint64(p[0:8]), binary.LittleEndian.Uint64(p[8:16])
	if off > 1<<62 || n > 1<<62 {
		return f, fmt.Errorf("%w: toc offset %d length %d out of range", ErrBadFooter, off, n)
	}
	f.Offset, f.Length = int64(off), int64(n)
	f.Digest = digest.NewDigestFromBytes(digest.SHA256, p[16:48])
	f.Version = binary.LittleEndian.Uint32(p[48:52])
	if f.Version != Version {
		return f, fmt.Errorf("%w: footer version %d", ErrUnsupportedVersion, f.Version)
	}
	if binary.LittleEndian.Uint32(p[52:56]) != 0 {
		return f, fmt.Errorf("%w: reserved field not zero", ErrBadFooter)
	}
	return f, nil
}

func hexSum(d digest.Digest) ([32]byte, error) {
	var s [32]byte
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return s, fmt.Errorf("digest %q is not a sha256 digest", d)
	}
	_, err := hex.Decode(s[:], []byte(d.Encoded()))
	return s, err
}

// LocationFromAnnotations reads the TOC location from a layer descriptor's
// annotations. ok is false when the descriptor carries none (not converted).
func LocationFromAnnotations(a map[string]string) (loc Location, ok bool, err error) {
	so, hasO := a[AnnotationTOCOffset]
	sl, hasL := a[AnnotationTOCLength]
	sd, hasD := a[AnnotationTOCDigest]
	if !hasO && !hasL && !hasD {
		return loc, false, nil
	}
	if !hasO || !hasL || !hasD {
		return loc, false, fmt.Errorf("%w: incomplete toc annotations", ErrBadTOC)
	}
	if loc.Offset, err = strconv.ParseInt(so, 10, 64); err != nil || loc.Offset < 0 {
		return loc, false, fmt.Errorf("%w: annotation %s=%q", ErrBadTOC, AnnotationTOCOffset, so)
	}
	if loc.Length, err = strconv.ParseInt(sl, 10, 64); err != nil || loc.Length <= 0 {
		return loc, false, fmt.Errorf("%w: annotation %s=%q", ErrBadTOC, AnnotationTOCLength, sl)
	}
	loc.Digest = digest.Digest(sd)
	if _, err := hexSum(loc.Digest); err != nil {
		return loc, false, fmt.Errorf("%w: annotation %s: %v", ErrBadTOC, AnnotationTOCDigest, err)
	}
	return loc, true, nil
}

// tocBudget holds the decompressed TOC bytes being decoded at once.
var tocBudget = semaphore.NewWeighted(TOCDecodeBudget)

// DecodeTOC verifies the TOC bytes (the payload of the TOC frame) against
// want, decompresses and decodes them. The decompressed size is bounded by
// MaxTOCSize and by MaxTOCExpansion times the payload (plus
// TOCExpansionFloor); the
// decode waits for its share of TOCDecodeBudget.
func DecodeTOC(payload []byte, want digest.Digest) (*TOC, error) {
	return decodeTOC(context.Background(), payload, want)
}

func decodeTOC(ctx context.Context, payload []byte, want digest.Digest) (*TOC, error) {
	sum := sha256.Sum256(payload)
	if got := digest.NewDigestFromBytes(digest.SHA256, sum[:]); got != want {
		return nil, fmt.Errorf("toc: %w: got %s, want %s", ErrDigestMismatch, got, want)
	}
	return decodeTOCPayload(ctx, payload)
}

// tocLimit is the most a TOC payload of n bytes may decompress to.
func tocLimit(n int) int64 {
	return min(int64(MaxTOCSize), int64(MaxTOCExpansion)*int64(n)+TOCExpansionFloor)
}

func decodeTOCPayload(ctx context.Context, payload []byte) (*TOC, error) {
	limit := tocLimit(len(payload))
	if err := tocBudget.Acquire(ctx, limit); err != nil {
		return nil, fmt.Errorf("toc: waiting for decode memory: %w", err)
	}
	defer tocBudget.Release(limit)
	raw, err := decompressBounded(payload, limit)
	if err != nil {
		return nil, err
	}
	return Unmarshal(raw)
}

// decompressBounded decompresses payload, failing as soon as the output
// would pass limit bytes. A decoder per call: TOCs are decoded once per
// layer, and the limit is per payload.
func decompressBounded(payload []byte, limit int64) ([]byte, error) {
	dec, err := zstd.NewReader(bytes.NewReader(payload),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(uint64(limit)),
		zstd.WithDecoderMaxWindow(uint64(limit)))
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %v", ErrBadTOC, err)
	}
	defer dec.Close()
	// Start from the frame's declared size when it has one (still bounded).
	n := int64(64 << 10)
	var h zstd.Header
	if h.Decode(payload) == nil && h.HasFCS {
		if h.FrameContentSize > uint64(limit) {
			return nil, fmt.Errorf("%w: declares %d bytes decompressed, more than %d (limit for a %d-byte toc: %d times it plus %d, at most %d)",
				ErrBadTOC, h.FrameContentSize, limit, len(payload), MaxTOCExpansion, TOCExpansionFloor, MaxTOCSize)
		}
		n = int64(h.FrameContentSize)
	}
	buf := bytes.NewBuffer(make([]byte, 0, n+1))
	m, err := buf.ReadFrom(io.LimitReader(dec, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %v", ErrBadTOC, err)
	}
	if m > limit {
		return nil, fmt.Errorf("%w: decompresses to more than %d bytes (limit for a %d-byte toc: %d times it plus %d, at most %d)",
			ErrBadTOC, limit, len(payload), MaxTOCExpansion, TOCExpansionFloor, MaxTOCSize)
	}
	return buf.Bytes(), nil
}

// ReadTOC reads and verifies the TOC of a converted blob of the given size.
// With loc == nil it reads the footer first (two reads); otherwise one read.
func ReadTOC(ctx context.Context, r io.ReaderAt, size int64, loc *Location) (*TOC, Location, error) {
	if loc == nil {
		if size < FooterSize {
			return nil, Location{}, fmt.Errorf("%w: blob of %d bytes is too small", ErrNotChunked, size)
		}
		b := make([]byte, FooterSize)
		if _, err := r.ReadAt(b, size-FooterSize); err != nil {
			return nil, Location{}, fmt.Errorf("read footer: %w", err)
		}
		f, err := ParseFooter(b)
		if err != nil {
			return nil, Location{}, err
		}
		loc = &f.Location
	}
	if loc.Offset < 8 || loc.Length <= 0 || loc.Length > MaxTOCSize || loc.Offset+loc.Length > size-FooterSize {
		return nil, *loc, fmt.Errorf("%w: toc at %d+%d outside the blob of %d bytes", ErrBadTOC, loc.Offset, loc.Length, size)
	}
	if err := ctx.Err(); err != nil {
		return nil, *loc, err
	}
	payload := make([]byte, loc.Length)
	if _, err := r.ReadAt(payload, loc.Offset); err != nil {
		return nil, *loc, fmt.Errorf("read toc at %d: %w", loc.Offset, err)
	}
	t, err := decodeTOC(ctx, payload, loc.Digest)
	if err != nil {
		return nil, *loc, err
	}
	for i := range t.Chunks {
		if c := &t.Chunks[i]; c.CompressedOffset+int64(c.CompressedSize) > loc.Offset-8 {
			return nil, *loc, fmt.Errorf("%w: chunk %d at %d+%d overlaps the toc frame", ErrBadTOC, i, c.CompressedOffset, c.CompressedSize)
		}
	}
	return t, *loc, nil
}

// chunkDecoder decodes chunk frames; frames are at most MaxChunkSize.
var chunkDecoder, _ = zstd.NewReader(nil,
	zstd.WithDecoderConcurrency(0),
	zstd.WithDecoderMaxMemory(MaxChunkSize),
	zstd.WithDecoderMaxWindow(MaxChunkSize))

// DecodeChunk decompresses frame (the chunk's compressed bytes), appending to
// dst, and verifies size and sha256 against c. A chunk larger than
// MaxChunkSize or claiming more than MaxCompressedSize is refused before
// anything is allocated. On a mismatch it returns an
// error wrapping ErrDigestMismatch or ErrBadChunk and never the bytes.
func DecodeChunk(c *Chunk, frame, dst []byte) ([]byte, error) {
	if c.Size > MaxChunkSize || c.CompressedSize > MaxCompressedSize(c.Size) {
		return nil, fmt.Errorf("chunk at %d: %w: %d bytes compressed to %d, beyond the zstd bound %d",
			c.CompressedOffset, ErrBadChunk, c.Size, c.CompressedSize, MaxCompressedSize(c.Size))
	}
	if len(frame) != int(c.CompressedSize) {
		return nil, fmt.Errorf("chunk at %d: %w: frame is %d bytes, want %d", c.CompressedOffset, ErrBadChunk, len(frame), c.CompressedSize)
	}
	start := len(dst)
	if cap(dst)-start < int(c.Size) {
		nd := make([]byte, start, start+int(c.Size))
		copy(nd, dst)
		dst = nd
	}
	out, err := chunkDecoder.DecodeAll(frame, dst)
	if err != nil {
		return nil, fmt.Errorf("chunk at %d: %w: %v", c.CompressedOffset, ErrBadChunk, err)
	}
	data := out[start:]
	if len(data) != int(c.Size) {
		return nil, fmt.Errorf("chunk at %d: %w: %d bytes, want %d", c.CompressedOffset, ErrBadChunk, len(data), c.Size)
	}
	if sum := sha256.Sum256(data); !bytes.Equal(sum[:], c.Sum[:]) {
		return nil, fmt.Errorf("chunk at %d: %w: got %x, want %x", c.CompressedOffset, ErrDigestMismatch, sum, c.Sum)
	}
	return out, nil
}
