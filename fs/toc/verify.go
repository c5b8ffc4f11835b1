package toc

import (
	"context"
	"fmt"
	"io"
	"reflect"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Verify checks that a converted blob's TOC tells the truth about the tar
// the blob decompresses to, so that a scanner reading the tar and a reader
// of the lazy mount see the same files and bytes: it reads the TOC (at loc,
// or through the footer when loc is nil), decompresses the whole blob as
// any zstd reader would, indexes that tar as Convert would with the TOC's
// chunk size, and compares every entry and every chunk (offset, size,
// sha256); then it decodes every chunk's frame at its compressed offset and
// checks it against the chunk's sha256. It returns the verified TOC and the
// tar's diffID (for the caller to compare with the image config). A lie
// fails with an error wrapping ErrTOCMismatch (or the error of the broken
// part: ErrBadTOC, ErrBadChunk, ErrDigestMismatch, ErrBadTar).
func Verify(ctx context.Context, blob io.ReaderAt, size int64, loc *Location) (*TOC, digest.Digest, error) {
	t, _, err := ReadTOC(ctx, blob, size, loc)
	if err != nil {
		return nil, "", err
	}
	if t.ChunkSize < MinChunkSize || t.ChunkSize > MaxChunkSize {
		return nil, "", fmt.Errorf("%w: chunk size %d outside [%d, %d]", ErrTOCMismatch, t.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	dec, err := zstd.NewReader(io.NewSectionReader(blob, 0, size), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return nil, "", err
	}
	defer dec.Close()
	// No more than the TOC's tar (and a block) is read: a blob that
	// decompresses to more fails the size comparison below.
	res, err := Convert(ctx, io.LimitReader(dec, t.TarSize+512), io.Discard, WithChunkSize(int(t.ChunkSize)), WithLibraryChunkSize(int(t.LibraryChunkSize)), withIndexOnly())
	if err != nil {
		return nil, "", fmt.Errorf("decompressed tar: %w", err)
	}
	got := res.TOC
	if got.TarSize != t.TarSize {
		return nil, "", fmt.Errorf("%w: tar of %d bytes, toc says %d", ErrTOCMismatch, got.TarSize, t.TarSize)
	}
	if len(got.Entries) != len(t.Entries) || len(got.Chunks) != len(t.Chunks) {
		return nil, "", fmt.Errorf("%w: tar has %d entries and %d chunks, toc %d and %d", ErrTOCMismatch,
			len(got.Entries), len(got.Chunks), len(t.Entries), len(t.Chunks))
	}
	for i := range got.Entries {
		if !reflect.DeepEqual(got.Entries[i], t.Entries[i]) {
			return nil, "", fmt.Errorf("%w: entry %d (%.300q at offset %d) differs from the tar's (%.300q)", ErrTOCMismatch,
				i, t.Entries[i].Name, t.Entries[i].HeaderOffset, got.Entries[i].Name)
		}
	}
	for i := range got.Chunks {
		g, w := &got.Chunks[i], &t.Chunks[i]
		if g.Offset != w.Offset || g.Size != w.Size || g.Sum != w.Sum {
			return nil, "", fmt.Errorf("%w: chunk %d (tar offset %d) differs from the tar's bytes", ErrTOCMismatch, i, w.Offset)
		}
	}
	var frame, data []byte
	for i := range t.Chunks {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, "", err
			}
		}
		c := &t.Chunks[i]
		if cap(frame) < int(c.CompressedSize) {
			frame = make([]byte, c.CompressedSize)
		}
		frame = frame[:c.CompressedSize]
		if _, err := blob.ReadAt(frame, c.CompressedOffset); err != nil {
			return nil, "", fmt.Errorf("chunk %d: read frame at %d: %w", i, c.CompressedOffset, err)
		}
		if data, err = DecodeChunk(c, frame, data[:0]); err != nil {
			return nil, "", fmt.Errorf("%w: chunk %d: %w", ErrTOCMismatch, i, err)
		}
	}
	return t, res.DiffID, nil
}

func withIndexOnly() Option { return func(o *options) { o.indexOnly = true } }
