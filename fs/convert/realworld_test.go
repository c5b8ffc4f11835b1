package convert_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestDecompressSkippableFirst: a zstd layer whose stream opens with a
// skippable frame (metadata some writers put first; lazyfs layers of an
// empty tar converted before the fix) is decompressed as zstd, as
// containerd's detection does, not taken for a plain tar.
func TestDecompressSkippableFirst(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(10000))
	enc, _ := zstd.NewWriter(nil)
	frame := enc.EncodeAll(tarball, nil)
	enc.Close()
	for magic := uint32(0x184D2A50); magic <= 0x184D2A5F; magic += 0xB {
		blob := binary.LittleEndian.AppendUint32(nil, magic)
		blob = binary.LittleEndian.AppendUint32(blob, 5)
		blob = append(blob, "meta!"...)
		blob = append(blob, frame...)
		rc, err := convert.Decompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, tarball) {
			t.Errorf("magic %#x: %d bytes, %v; want the %d-byte tar", magic, len(got), err, len(tarball))
		}
	}
}
