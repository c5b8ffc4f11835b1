package profile

import (
	"sync"
	"time"

	"github.com/lazyfs/lazyfs/fs"
)

// LayerInfo describes one layer of the image being recorded: the digest of
// its blob and the number of chunks in its TOC.
type LayerInfo struct {
	Digest string
	Chunks int
}

// Recorder builds a profile from a mount's read events: each chunk is
// recorded the first time a READ needs it, and consecutive new chunks of the
// same file are merged into one span. It is safe for concurrent use and
// stops recording (keeping what it has) at MaxSpans spans.
type Recorder struct {
	mu     sync.Mutex
	image  string
	layers []LayerInfo
	seen   [][]uint64
	spans  []Span
	// chunks counts the chunks recorded, last is when the latest was (for
	// Autosave: a recorder idle after activity has seen a start-up end).
	chunks uint64
	last   time.Time
}

// NewRecorder returns a Recorder for an image (manifest digest image, may
// be empty) made of layers, in the order fs.NewRoot was given them.
func NewRecorder(image string, layers []LayerInfo) *Recorder {
	r := &Recorder{image: image, layers: layers, seen: make([][]uint64, len(layers))}
	for i, l := range layers {
		r.seen[i] = make([]uint64, (max(l.Chunks, 0)+63)/64)
	}
	return r
}

// SetLayerChunks sets the chunk count of layer when NewRecorder was given
// none (0): a recorder shared by the per-layer mounts of an image learns
// each layer's TOC as its mount comes up. A count already set is kept.
func (r *Recorder) SetLayerChunks(layer, chunks int) {
	if layer < 0 || layer >= len(r.layers) || chunks <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.layers[layer].Chunks == 0 {
		r.layers[layer].Chunks = chunks
		r.seen[layer] = make([]uint64, (chunks+63)/64)
	}
}

// OnRead records e; use it as fs.Options.OnRead.
func (r *Recorder) OnRead(e fs.ReadEvent) { r.Record(e.Layer, e.Path, e.FirstChunk, e.LastChunk) }

// Record records a read of chunks [first, last) of path in layer layer.
// Events outside the layers' chunk ranges are ignored.
func (r *Recorder) Record(layer int, path string, first, last int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if layer < 0 || layer >= len(r.layers) || first < 0 || last > r.layers[layer].Chunks || first >= last {
		return
	}
	bits := r.seen[layer]
	for i := first; i < last; i++ {
		if bits[i/64]&(1<<(i%64)) != 0 {
			continue
		}
		if n := len(r.spans); n > 0 {
			s := &r.spans[n-1]
			if s.Layer == layer && s.Path == path && s.Chunk+s.N == i {
				s.N++
				bits[i/64] |= 1 << (i % 64)
				r.recorded()
				continue
			}
		}
		if len(r.spans) >= MaxSpans {
			return
		}
		bits[i/64] |= 1 << (i % 64)
		r.spans = append(r.spans, Span{Layer: layer, Path: path, Chunk: i, N: 1})
		r.recorded()
	}
}

// recorded counts a new chunk; r.mu is held.
func (r *Recorder) recorded() {
	r.chunks++
	r.last = time.Now()
}

// activity returns the number of chunks recorded so far and when the
// latest was recorded.
func (r *Recorder) activity() (uint64, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.chunks, r.last
}

// Len returns the number of spans recorded so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.spans)
}

// Profile returns the profile recorded so far. Layers no span uses are
// dropped, so the profile names only what it needs.
func (r *Recorder) Profile() *Profile {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &Profile{MediaType: MediaType, Version: Version, Image: r.image, Layers: []string{}, Spans: make([]Span, 0, len(r.spans))}
	remap := make([]int, len(r.layers))
	for i := range remap {
		remap[i] = -1
	}
	for _, s := range r.spans {
		if remap[s.Layer] < 0 {
			remap[s.Layer] = len(p.Layers)
			p.Layers = append(p.Layers, r.layers[s.Layer].Digest)
		}
		s.Layer = remap[s.Layer]
		p.Spans = append(p.Spans, s)
	}
	return p
}
