// Package profile owns the lazyfs start-up profile: the order in which a
// program first read an image's files and chunks, recorded from a mount's
// read events, stored on the node (keyed by image digest, saved as it grows:
// Autosave), attached to the image in its registry as an OCI 1.1 referrer
// artifact (Push, Pull) or carried in its manifest (Embed, FromManifest),
// and resolved against the image's TOCs into the chunk spans that package
// fs prefetches.
//
// A profile is untrusted input: Parse bounds its size and every count before
// it allocates, and Resolve drops (with a reason) every span that names a
// layer, path or chunk the image lacks instead of failing. The format is
// specified in docs/format.md §8.
package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
)

const (
	// MediaType is the media type of an encoded profile, and the artifactType
	// of the OCI artifact manifest that carries it.
	MediaType = "application/vnd.lazyfs.profile.v1+json"
	// Version is the profile format version this package reads and writes.
	Version = 1

	// MaxSize bounds an encoded profile in bytes.
	MaxSize = 16 << 20
	// MaxLayers bounds the layers a profile names.
	MaxLayers = 1024
	// MaxSpans bounds the spans of a profile.
	MaxSpans = 1 << 20
	// MaxChunks bounds the chunks a profile names in all (64 TiB at the
	// default chunk size: far beyond any image, small enough to count).
	MaxChunks = 1 << 28
	// MaxPath bounds a span's path in bytes.
	MaxPath = 4096
)

// Errors of this package, wrapped with context naming the object.
var (
	// ErrBadProfile means encoded bytes are not a valid profile.
	ErrBadProfile = errors.New("bad profile")
	// ErrTooLarge means a profile exceeds one of the bounds above.
	ErrTooLarge = errors.New("profile too large")
	// ErrUnsupportedVersion means the profile's version is not Version.
	ErrUnsupportedVersion = errors.New("unsupported profile version")
	// ErrNotFound means no profile is stored or attached for an image.
	ErrNotFound = errors.New("no profile")
)

// Profile is a recorded start-up access order over an image's layers.
type Profile struct {
	// MediaType is MediaType (written by Marshal, checked by Parse when set).
	MediaType string `json:"mediaType"`
	// Version is Version.
	Version int `json:"version"`
	// Image is the digest of the image manifest the profile was recorded on
	// (informational: the profile applies to any image holding its layers).
	Image string `json:"image,omitempty"`
	// Layers are the digests of the layer blobs the spans index into.
	Layers []string `json:"layers"`
	// Spans are the chunk runs in the order they were first read.
	Spans []Span `json:"spans"`
}

// Span is a run of chunks of one file, first read together.
type Span struct {
	// Layer indexes Profile.Layers.
	Layer int `json:"l"`
	// Path is the file's name in that layer's TOC (toc.Entry.Name).
	Path string `json:"p"`
	// Chunk is the index of the run's first chunk in the layer's TOC.Chunks
	// (a layer digest fixes its TOC, so indices are stable), N the run's length.
	Chunk int `json:"c"`
	N     int `json:"n"`
}

// Chunks returns the number of chunks the profile names.
func (p *Profile) Chunks() int {
	n := 0
	for _, s := range p.Spans {
		n += s.N
	}
	return n
}

// Paths returns the distinct paths of the profile in first-read order.
func (p *Profile) Paths() []string {
	seen := make(map[string]bool)
	var out []string
	for _, s := range p.Spans {
		if !seen[s.Path] {
			seen[s.Path] = true
			out = append(out, s.Path)
		}
	}
	return out
}

// Validate checks the bounds and internal consistency of p.
func (p *Profile) Validate() error {
	if p.MediaType != "" && p.MediaType != MediaType {
		return fmt.Errorf("%w: media type %q", ErrBadProfile, p.MediaType)
	}
	if p.Version != Version {
		return fmt.Errorf("%w: %d (want %d)", ErrUnsupportedVersion, p.Version, Version)
	}
	if len(p.Layers) > MaxLayers {
		return fmt.Errorf("%w: %d layers (max %d)", ErrTooLarge, len(p.Layers), MaxLayers)
	}
	if len(p.Spans) > MaxSpans {
		return fmt.Errorf("%w: %d spans (max %d)", ErrTooLarge, len(p.Spans), MaxSpans)
	}
	if p.Image != "" {
		if _, err := digest.Parse(p.Image); err != nil {
			return fmt.Errorf("%w: image %q: %v", ErrBadProfile, p.Image, err)
		}
	}
	for i, l := range p.Layers {
		if _, err := digest.Parse(l); err != nil {
			return fmt.Errorf("%w: layer %d %q: %v", ErrBadProfile, i, l, err)
		}
	}
	total := 0
	for i, s := range p.Spans {
		switch {
		case s.Layer < 0 || s.Layer >= len(p.Layers):
			return fmt.Errorf("%w: span %d: layer %d of %d", ErrBadProfile, i, s.Layer, len(p.Layers))
		case len(s.Path) > MaxPath:
			return fmt.Errorf("%w: span %d: path of %d bytes", ErrTooLarge, i, len(s.Path))
		case s.Chunk < 0 || s.N <= 0 || s.N > MaxChunks || s.Chunk > MaxChunks-s.N:
			return fmt.Errorf("%w: span %d: chunks %d+%d", ErrBadProfile, i, s.Chunk, s.N)
		}
		total += s.N
		if total > MaxChunks {
			return fmt.Errorf("%w: more than %d chunks", ErrTooLarge, MaxChunks)
		}
	}
	return nil
}

// Marshal encodes p (with MediaType and Version set) as compact JSON.
func (p *Profile) Marshal() ([]byte, error) {
	q := *p
	q.MediaType, q.Version = MediaType, Version
	if q.Layers == nil {
		q.Layers = []string{}
	}
	if q.Spans == nil {
		q.Spans = []Span{}
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&q)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes encoded (max %d)", ErrTooLarge, len(b), MaxSize)
	}
	return b, nil
}

// Parse decodes and validates an encoded profile. It never allocates more
// than a small multiple of len(b), which it bounds by MaxSize.
func Parse(b []byte) (*Profile, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadProfile, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrBadProfile)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.Layers == nil {
		p.Layers = []string{}
	}
	if p.Spans == nil {
		p.Spans = []Span{}
	}
	return &p, nil
}

// Read reads and parses a profile from r, reading at most MaxSize+1 bytes.
func Read(r io.Reader) (*Profile, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, err
	}
	return Parse(b)
}
