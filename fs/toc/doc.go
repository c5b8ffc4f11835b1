// Package toc owns the lazyfs layer format: a tar+zstd OCI layer whose file
// contents are cut into independently compressed zstd frames ("chunks"),
// followed by a table of contents (TOC) in a zstd skippable frame and a fixed
// footer. Decompressing a converted layer with any zstd decoder yields the
// byte-identical original tar; the TOC lets a reader fetch any file's bytes
// with one range request per chunk and verify them by sha256.
//
// The package holds the TOC types, the binary TOC encoding, the footer, the
// converter from a tar stream (Convert) and the helpers readers need to locate
// and verify a TOC and decode a chunk. The specification is docs/format.md.
package toc

import (
	"errors"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Format constants. They are part of the on-disk format: see docs/format.md.
const (
	// Version is the TOC format version written by this package.
	Version = 1

	// MediaTypeLayer is the media type of a converted layer: the OCI zstd
	// layer type, so that any runtime can pull it.
	MediaTypeLayer = ocispec.MediaTypeImageLayerZstd

	// DefaultChunkSize is the default size of a file-content chunk; see
	// docs/format.md for the measurements behind it.
	DefaultChunkSize = 256 << 10
	// MinChunkSize and MaxChunkSize bound the chunk size a writer accepts.
	MinChunkSize = 4 << 10
	MaxChunkSize = 64 << 20

	// TOCFrameMagic is the zstd skippable-frame magic of the frame holding the TOC.
	TOCFrameMagic = 0x184D2A5B
	// FooterFrameMagic is the zstd skippable-frame magic of the footer frame.
	FooterFrameMagic = 0x184D2A5E
	// FooterSize is the size in bytes of the footer frame that ends every converted blob.
	FooterSize = 8 + footerPayloadSize

	// MaxTOCSize bounds the decompressed size of a TOC a reader accepts (untrusted input).
	MaxTOCSize = 1 << 30
)

// Annotations carried by a converted layer's descriptor.
const (
	// AnnotationTOCOffset is the decimal offset in the blob of the TOC bytes (the
	// payload of the TOC skippable frame, a zstd frame holding the encoded TOC).
	AnnotationTOCOffset = "dev.lazyfs.toc.offset"
	// AnnotationTOCLength is the decimal length of the TOC bytes.
	AnnotationTOCLength = "dev.lazyfs.toc.length"
	// AnnotationTOCDigest is the sha256 digest of the TOC bytes.
	AnnotationTOCDigest = "dev.lazyfs.toc.digest"
	// AnnotationFormat is the lazyfs format version of the layer ("1").
	AnnotationFormat = "dev.lazyfs.format"
	// AnnotationChunkSize is the chunk size the layer was cut with.
	AnnotationChunkSize = "dev.lazyfs.chunk-size"
	// AnnotationUncompressedSize is the size of the layer's tar.
	AnnotationUncompressedSize = "dev.lazyfs.uncompressed-size"
	// AnnotationSourceDigest is the digest of the layer blob it was converted from.
	AnnotationSourceDigest = "dev.lazyfs.source.digest"

	// AnnotationProfileDigest, on an image manifest, names the blob holding the
	// image's recorded start-up profile.
	AnnotationProfileDigest = "dev.lazyfs.profile.digest"
	// AnnotationProfileSize is the size of that blob.
	AnnotationProfileSize = "dev.lazyfs.profile.size"
)

// Errors returned by this package, wrapped with context naming the object.
var (
	// ErrNotChunked means a blob or descriptor is not a lazyfs-converted layer.
	ErrNotChunked = errors.New("not a lazyfs chunked layer")
	// ErrBadFooter means the footer frame is missing or malformed.
	ErrBadFooter = errors.New("bad lazyfs footer")
	// ErrBadTOC means the TOC bytes are malformed or inconsistent.
	ErrBadTOC = errors.New("bad lazyfs toc")
	// ErrUnsupportedVersion means the format version is newer than this reader knows.
	ErrUnsupportedVersion = errors.New("unsupported lazyfs format version")
	// ErrDigestMismatch means bytes did not hash to the digest that describes them.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrUnsafePath means a tar entry's path (or hardlink target) escapes the layer root.
	ErrUnsafePath = errors.New("tar entry path escapes the root")
	// ErrBadTar means the tar stream could not be parsed.
	ErrBadTar = errors.New("bad tar stream")
	// ErrBadChunk means a chunk's frame does not decode to the chunk's bytes.
	ErrBadChunk = errors.New("bad chunk")
)
