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
	// DefaultLibraryChunkSize is the default size shared libraries are cut
	// into (IsSharedLibrary; docs/format.md).
	DefaultLibraryChunkSize = 64 << 10
	// MinChunkSize and MaxChunkSize bound the chunk size a writer accepts.
	MinChunkSize = 4 << 10
	MaxChunkSize = 64 << 20

	// TOCFrameMagic is the zstd skippable-frame magic of the frame holding the TOC.
	TOCFrameMagic = 0x184D2A5B
	// FooterFrameMagic is the zstd skippable-frame magic of the footer frame.
	FooterFrameMagic = 0x184D2A5E
	// FooterSize is the size in bytes of the footer frame that ends every converted blob.
	FooterSize = 8 + footerPayloadSize

	// MaxTOCSize bounds the decompressed size of a TOC a reader accepts
	// (untrusted input), and the compressed size (Location.Length) too.
	// A real layer of 62,000 files has a 4.9 MB TOC (2.8 MB compressed).
	MaxTOCSize = 128 << 20
	// MaxTOCExpansion bounds the decompressed size of a TOC to this many
	// times its compressed size plus TOCExpansionFloor: real TOCs, mostly
	// sha256 sums, compress less than 2:1 (5.5:1 for a tree of directories
	// and symlinks; ~1000:1 for 100,000 empty files with sequential names and
	// equal metadata, which the floor covers), while a tiny hostile TOC of
	// zeros expands tens of thousands of times.
	MaxTOCExpansion = 256
	// TOCExpansionFloor is the decompressed size any TOC may have whatever
	// its compressed size.
	TOCExpansionFloor = 8 << 20
	// MinEntryBytes is the smallest encoding of a TOC entry: a decoder takes
	// no more entries than the decompressed TOC has bytes for.
	MinEntryBytes = 14
	// MaxNameLength and MaxComponentLength bound a path (Entry.Name, a
	// hardlink's or symlink's target) and each of its components, as Linux
	// does (PATH_MAX, NAME_MAX).
	MaxNameLength      = 4096
	MaxComponentLength = 255
	// MaxNameExpansion bounds the total bytes of all entry names to this
	// many times the decompressed TOC's size plus 1 MiB: names are
	// prefix-compressed in the encoding but whole in memory (real layers:
	// about 1 byte of names per byte of TOC).
	MaxNameExpansion = 16
	// MaxFileSize bounds a tar entry's (logical) size, ext4's limit: a sparse
	// file may claim any size while storing a few bytes.
	MaxFileSize = 16 << 40
	// MaxTOCStrings bounds the TOC's string table (user and group names,
	// xattr and PAX keys: a real layer has a handful).
	MaxTOCStrings = 1 << 16
	// TOCDecodeBudget bounds the decompressed TOC bytes being decoded at
	// once in a process (each decode reserves its limit); further decodes wait.
	TOCDecodeBudget = 2 * MaxTOCSize
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
	// ErrUnsupportedEntry means a tar entry has a type that container
	// runtimes do not unpack (a GNU volume label, a dump directory, a
	// vendor type): containerd and Docker refuse such a layer.
	ErrUnsupportedEntry = errors.New("unsupported tar entry type")
	// ErrBadChunk means a chunk's frame does not decode to the chunk's bytes.
	ErrBadChunk = errors.New("bad chunk")
	// ErrTOCMismatch means a converted blob's TOC does not describe the tar
	// the blob decompresses to (see Verify).
	ErrTOCMismatch = errors.New("toc does not match the layer's tar")
	// ErrTooLarge means a tar entry or the layer is beyond a limit of the
	// format (docs/format.md, "Limits"): a path or component too long, a
	// sparse file too large, a TOC too large.
	ErrTooLarge = errors.New("beyond the limits of the lazyfs format")
)
