package convert_test

import (
	"bytes"
	"io"

	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func gzipStd(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// rawLayer is a layer whose stored bytes need not match its diffID: it
// lets tests push corrupt layers under a plausible config.
type rawLayer struct {
	blob   []byte
	digest v1.Hash
	diffID v1.Hash
	mt     types.MediaType
}

func newRawLayer(blob, tarball []byte, mt types.MediaType) *rawLayer {
	d, _, _ := v1.SHA256(bytes.NewReader(blob))
	diff, _, _ := v1.SHA256(bytes.NewReader(tarball))
	return &rawLayer{blob: blob, digest: d, diffID: diff, mt: mt}
}

func (l *rawLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *rawLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *rawLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *rawLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
func (l *rawLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *rawLayer) Uncompressed() (io.ReadCloser, error) {
	zr, err := gzip.NewReader(bytes.NewReader(l.blob))
	if err != nil {
		return nil, err
	}
	return zr, nil
}
