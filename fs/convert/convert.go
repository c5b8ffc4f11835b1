// Package convert turns registry images into lazyfs images: every tar layer
// is rewritten in the chunked format of package toc (byte-identical tar, so
// diffIDs and the config stay unchanged) and the image is pushed with an OCI
// manifest whose layer descriptors carry the TOC annotations. Conversion is
// all-or-nothing: every layer of every selected platform is converted before
// anything is pushed, and manifests are pushed after their blobs.
package convert

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/lazyfs/lazyfs/internal/platform"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// refDigestAnnotation names the image an attestation manifest of BuildKit's
// describes (platform.RefTypeAnnotation marks such manifests).
const refDigestAnnotation = "vnd.docker.reference.digest"

// Errors of this package.
var (
	// ErrUnsupportedMediaType means a manifest or layer type cannot be converted.
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	// ErrDiffIDMismatch means a layer's uncompressed bytes do not match the config's diffID.
	ErrDiffIDMismatch = errors.New("layer does not match the config's diffID")
	// ErrKeptLayerMismatch means a layer already in the lazyfs format failed
	// verification: its TOC does not describe its tar, or its tar does not
	// match the config's diffID.
	ErrKeptLayerMismatch = errors.New("already-chunked layer failed verification")
	// ErrNoMatchingPlatform means --platform matched no image of an index.
	ErrNoMatchingPlatform = errors.New("no image for the requested platform")
)

// Option configures Image.
type Option func(*options)

type options struct {
	platform  *v1.Platform
	chunkSize int
	libChunk  int
	level     zstd.EncoderLevel
	startLvl  zstd.EncoderLevel
	jobs      int
	keychain  authn.Keychain
	insecure  bool
	tempDir   string
	progress  func(Progress)
	logger    *slog.Logger
	transport remoteTransport
	trust     bool
	byDigest  bool
}

type remoteTransport = []remote.Option

// WithPlatform converts only the image of an index that matches p, and
// pushes it as a single image.
func WithPlatform(p *v1.Platform) Option { return func(o *options) { o.platform = p } }

// WithChunkSize sets the chunk size (default toc.DefaultChunkSize).
func WithChunkSize(n int) Option { return func(o *options) { o.chunkSize = n } }

// WithLibraryChunkSize sets the size shared libraries are cut into
// (toc.WithLibraryChunkSize: default toc.DefaultLibraryChunkSize, negative
// for the chunk size).
func WithLibraryChunkSize(n int) Option { return func(o *options) { o.libChunk = n } }

// WithLevel sets the zstd level of the frames (default zstd.SpeedDefault)
// but those of WithStartupLevel.
func WithLevel(l zstd.EncoderLevel) Option { return func(o *options) { o.level = l } }

// WithStartupLevel sets the zstd level of the chunks of shared libraries and
// of one-chunk files (toc.WithStartupLevel; default
// zstd.SpeedBestCompression: ~6% fewer bytes for start-ups to fetch than
// the default level, for a conversion ~3.5× slower on those files).
func WithStartupLevel(l zstd.EncoderLevel) Option { return func(o *options) { o.startLvl = l } }

// WithJobs bounds how many layers are converted at once (default GOMAXPROCS).
func WithJobs(n int) Option { return func(o *options) { o.jobs = n } }

// WithKeychain sets where credentials come from (default the Docker config keychain).
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithInsecure allows plain HTTP to any registry (localhost works without it).
func WithInsecure(b bool) Option { return func(o *options) { o.insecure = b } }

// WithTempDir sets where converted layers are staged before the push.
func WithTempDir(dir string) Option { return func(o *options) { o.tempDir = dir } }

// WithProgress sets a function called as layers are read (from several goroutines, serialised).
func WithProgress(f func(Progress)) Option { return func(o *options) { o.progress = f } }

// WithTrustChunked keeps layers that are already in the lazyfs format
// without checking their TOC against their tar (default: every kept layer
// is downloaded and verified with toc.Verify, so that a scanner reading the
// tar and the lazy mount cannot see different files).
func WithTrustChunked(b bool) Option { return func(o *options) { o.trust = b } }

// WithPushByDigest pushes the converted image by digest only, leaving the
// destination's tag as it was (Report.Digest names what was pushed):
// lazyfs convert --record tags it once its profile is in the manifest.
func WithPushByDigest(b bool) Option { return func(o *options) { o.byDigest = b } }

// WithLogger sets a logger for debug output (default: silent).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRemoteOptions adds go-containerregistry remote options (e.g. a transport).
func WithRemoteOptions(ro ...remote.Option) Option {
	return func(o *options) { o.transport = append(o.transport, ro...) }
}

// Progress reports conversion progress. Total is known once every
// manifest has been read; Done grows as layer bytes are read.
type Progress struct {
	Done, Total int64
	Phase       string // "convert" or "push"
}

// Report summarises a conversion; it is what `lazyfs convert --json` prints.
type Report struct {
	Source           string           `json:"source"`
	Destination      string           `json:"destination"`
	Digest           string           `json:"digest"`
	MediaType        string           `json:"mediaType"`
	AlreadyConverted bool             `json:"alreadyConverted"`
	Images           []ImageReport    `json:"images"`
	Duration         Duration         `json:"durationSeconds"`
	Stats            ConversionTotals `json:"totals"`
}

// ImageReport is one converted image (one platform).
type ImageReport struct {
	Platform       string        `json:"platform,omitempty"`
	SourceDigest   string        `json:"sourceDigest"`
	Digest         string        `json:"digest"`
	Layers         []LayerReport `json:"layers"`
	SourceManifest string        `json:"sourceMediaType"`
}

// LayerReport is one layer of one image.
type LayerReport struct {
	SourceDigest     string   `json:"sourceDigest"`
	SourceMediaType  string   `json:"sourceMediaType"`
	SourceSize       int64    `json:"sourceSize"`
	Digest           string   `json:"digest"`
	MediaType        string   `json:"mediaType"`
	Size             int64    `json:"size"`
	UncompressedSize int64    `json:"uncompressedSize,omitempty"`
	Entries          int      `json:"entries,omitempty"`
	Chunks           int      `json:"chunks,omitempty"`
	TOCSize          int64    `json:"tocSize,omitempty"`
	Duration         Duration `json:"durationSeconds"`
	// Kept says why a layer was not converted ("already chunked", "not distributable", "not a tar layer").
	Kept string `json:"kept,omitempty"`
	// KeptTOC says, for a layer kept as "already chunked", whether its TOC
	// was "verified" against its tar or "trusted" (WithTrustChunked).
	KeptTOC string `json:"keptToc,omitempty"`
}

// ConversionTotals adds up the layers converted in this run.
type ConversionTotals struct {
	Layers           int   `json:"layersConverted"`
	UncompressedSize int64 `json:"uncompressedBytes"`
	SourceSize       int64 `json:"sourceBytes"`
	Size             int64 `json:"convertedBytes"`
}

// Duration marshals as seconds.
type Duration time.Duration

// MarshalJSON writes the duration in seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).Seconds())
}

// UnmarshalJSON reads a duration in seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s float64
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*d = Duration(s * float64(time.Second))
	return nil
}

func (o *options) remoteOpts(ctx context.Context) []remote.Option {
	ro := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(o.keychain), remote.WithJobs(max(o.jobs, 4)),
		remote.WithUserAgent("lazyfs-convert")}
	return append(ro, o.transport...)
}

// ParseReference parses an image reference; insecure allows plain HTTP.
func ParseReference(s string, insecure bool) (name.Reference, error) {
	var nopts []name.Option
	if insecure {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(s, nopts...)
	if err != nil {
		return nil, fmt.Errorf("parse reference %q: %w", s, err)
	}
	return ref, nil
}

// Image converts the image at src and pushes the result to dst.
func Image(ctx context.Context, src, dst string, opts ...Option) (*Report, error) {
	start := time.Now()
	o := options{chunkSize: toc.DefaultChunkSize, level: zstd.SpeedDefault, startLvl: zstd.SpeedBestCompression, jobs: runtime.GOMAXPROCS(0), keychain: authn.DefaultKeychain}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	srcRef, err := ParseReference(src, o.insecure)
	if err != nil {
		return nil, err
	}
	dstRef, err := ParseReference(dst, o.insecure)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ro := o.remoteOpts(ctx)
	desc, err := remote.Get(srcRef, ro...)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", srcRef, err)
	}
	c := &converter{o: o, ro: ro, src: srcRef, layers: map[v1.Hash]*layerJob{}}
	defer c.cleanup()
	rep := &Report{Source: srcRef.String(), Destination: dstRef.String()}

	var push func() error
	var outDigest v1.Hash
	var outType types.MediaType
	// single converts one image and plans to push it alone.
	single := func(img v1.Image, p *v1.Platform) error {
		ci, ir, err := c.image(ctx, img, p)
		if err != nil {
			return err
		}
		if outDigest, err = ci.Digest(); err != nil {
			return err
		}
		if outType, err = ci.MediaType(); err != nil {
			return err
		}
		rep.Images = []ImageReport{ir}
		push = func() error { return remote.Write(dstRef, ci, ro...) }
		return nil
	}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", srcRef, err)
		}
		if o.platform != nil {
			img, child, err := c.pick(idx)
			if err != nil {
				return nil, err
			}
			if err := single(img, child.Platform); err != nil {
				return nil, err
			}
			break
		}
		ni, irs, err := c.index(ctx, idx)
		if err != nil {
			return nil, err
		}
		rep.Images = irs
		push = func() error { return remote.WriteIndex(dstRef, ni, ro...) }
		outDigest, outType = ni.digest, types.OCIImageIndex
	case desc.MediaType.IsImage():
		img, err := desc.Image()
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", srcRef, err)
		}
		if err := single(img, desc.Platform); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("image %s: %w: manifest type %q", srcRef, ErrUnsupportedMediaType, desc.MediaType)
	}

	// All converted: now, and only now, push blobs then manifests.
	rep.AlreadyConverted = c.converted == 0
	rep.Digest, rep.MediaType = outDigest.String(), string(outType)
	for _, ir := range rep.Images {
		for _, l := range ir.Layers {
			if l.Kept == "" {
				rep.Stats.Layers++
				rep.Stats.UncompressedSize += l.UncompressedSize
				rep.Stats.SourceSize += l.SourceSize
				rep.Stats.Size += l.Size
			}
		}
	}
	same := srcRef.Context().String() == dstRef.Context().String() && srcRef.Identifier() == dstRef.Identifier()
	if o.byDigest {
		// push (a closure over dstRef) now puts the manifest by digest only.
		dstRef = dstRef.Context().Digest(outDigest.String())
		same = srcRef.Context().String() == dstRef.Context().String() && desc.Digest == outDigest
	}
	if !(rep.AlreadyConverted && same && desc.Digest == outDigest) {
		c.report("push", 0)
		if err := push(); err != nil {
			return nil, fmt.Errorf("push %s: %w", dstRef, err)
		}
	}
	rep.Duration = Duration(time.Since(start))
	return rep, nil
}

type converter struct {
	o         options
	ro        []remote.Option
	src       name.Reference
	mu        sync.Mutex
	layers    map[v1.Hash]*layerJob // by source digest: layers shared between platforms convert once
	converted int
	done      int64 // progress, guarded by mu like total
	total     int64
}

type layerJob struct {
	once   sync.Once
	report LayerReport
	layer  partial.CompressedLayer
	desc   v1.Descriptor
	file   string
	err    error
}

func (c *converter) cleanup() {
	for _, j := range c.layers {
		if j.file != "" {
			os.Remove(j.file)
		}
	}
}

func (c *converter) report(phase string, n int64) {
	if c.o.progress == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done += n
	c.o.progress(Progress{Done: c.done, Total: c.total, Phase: phase})
}

func platformString(p *v1.Platform) string {
	if p == nil {
		return ""
	}
	return p.String()
}

// pick returns the image of idx to convert for the requested platform, as
// containerd (and the lazy mount, remote.Fetcher.Resolve) would choose it
// to run: platform.Pick, an image whose index entry's platform satisfies
// it, else one whose entry has no platform and whose config's does; never
// an attestation manifest.
func (c *converter) pick(idx v1.ImageIndex) (v1.Image, v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("image %s: %w", c.src, err)
	}
	imgs := map[int]v1.Image{}
	image := func(i int) (v1.Image, error) {
		if img, ok := imgs[i]; ok {
			return img, nil
		}
		d := im.Manifests[i]
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("image %s@%s: %w", c.src, d.Digest, err)
		}
		imgs[i] = img
		return img, nil
	}
	i, p, err := platform.Pick(im.Manifests, *c.o.platform, func(i int) (*v1.Platform, error) {
		img, err := image(i)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("image %s@%s: config: %w", c.src, im.Manifests[i].Digest, err)
		}
		return cf.Platform(), nil
	})
	switch {
	case errors.Is(err, platform.ErrUnprobed):
		return nil, v1.Descriptor{}, fmt.Errorf("image %s: %w %s: %w", c.src, ErrNoMatchingPlatform, c.o.platform, err)
	case err != nil:
		return nil, v1.Descriptor{}, err
	case i < 0:
		return nil, v1.Descriptor{}, fmt.Errorf("image %s: %w %s", c.src, ErrNoMatchingPlatform, c.o.platform)
	}
	img, err := image(i)
	if err != nil {
		return nil, im.Manifests[i], err
	}
	d := im.Manifests[i]
	d.Platform = p
	return img, d, nil
}

// index converts every image of an index (nested indexes are converted too).
func (c *converter) index(ctx context.Context, idx v1.ImageIndex) (*index, []ImageReport, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", c.src, err)
	}
	out := &index{manifest: *im.DeepCopy(), children: map[v1.Hash]any{}}
	out.manifest.MediaType = types.OCIImageIndex
	out.manifest.SchemaVersion = 2
	var reps []ImageReport
	for i, d := range im.Manifests {
		switch {
		case d.MediaType.IsImage():
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, nil, fmt.Errorf("image %s@%s: %w", c.src, d.Digest, err)
			}
			ci, ir, err := c.image(ctx, img, d.Platform)
			if err != nil {
				return nil, nil, err
			}
			reps = append(reps, ir)
			nd, err := partial.Descriptor(ci)
			if err != nil {
				return nil, nil, err
			}
			nd.Platform, nd.Annotations, nd.ArtifactType = d.Platform, d.Annotations, d.ArtifactType
			out.manifest.Manifests[i] = *nd
			out.children[nd.Digest] = ci
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, nil, fmt.Errorf("image %s@%s: %w", c.src, d.Digest, err)
			}
			ni, irs, err := c.index(ctx, child)
			if err != nil {
				return nil, nil, err
			}
			reps = append(reps, irs...)
			nd := d
			nd.MediaType, nd.Digest, nd.Size = types.OCIImageIndex, ni.digest, int64(len(ni.raw))
			out.manifest.Manifests[i] = nd
			out.children[nd.Digest] = ni
		default:
			return nil, nil, fmt.Errorf("image %s@%s: %w: manifest type %q in index", c.src, d.Digest, ErrUnsupportedMediaType, d.MediaType)
		}
	}
	// Manifests that refer to a converted one by digest (BuildKit's
	// attestations: vnd.docker.reference.digest) follow it.
	moved := map[string]string{}
	for i, d := range im.Manifests {
		if nd := out.manifest.Manifests[i].Digest; nd != d.Digest {
			moved[d.Digest.String()] = nd.String()
		}
	}
	for i := range out.manifest.Manifests {
		a := out.manifest.Manifests[i].Annotations
		if to, ok := moved[a[refDigestAnnotation]]; ok {
			na := make(map[string]string, len(a))
			for k, v := range a {
				na[k] = v
			}
			na[refDigestAnnotation] = to
			out.manifest.Manifests[i].Annotations = na
		}
	}
	if err := out.seal(); err != nil {
		return nil, nil, err
	}
	return out, reps, nil
}

// Decompress returns the uncompressed tar of a layer blob read from r,
// detecting gzip, zstd (a zstd frame or a skippable one first) or plain tar
// from the first bytes (media types are not always truthful). The returned
// Close releases the decoder, not r.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, _ := br.Peek(4)
	skippable := len(head) == 4 && binary.LittleEndian.Uint32(head)&0xFFFFFFF0 == 0x184D2A50
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}), skippable:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	default:
		return io.NopCloser(br), nil
	}
}

// openTar opens a layer's uncompressed tar (see Decompress); drain reads the
// rest of the compressed stream, so that the registry reader verifies the
// blob's digest, and closes it.
func openTar(l partial.CompressedLayer) (io.ReadCloser, func() error, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, err
	}
	tr, err := Decompress(rc)
	if err != nil {
		rc.Close()
		return nil, nil, err
	}
	drain := func() error {
		_, err := io.Copy(io.Discard, rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return tr, drain, nil
}

// Types of layers this converter rewrites.
func isTarLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer:
		return true
	}
	return false
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
