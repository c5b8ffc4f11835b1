package profile

import (
	"fmt"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// Layer is one layer of the image a profile is resolved against: its blob
// digest and decoded TOC, in the order given to fs.NewRoot.
type Layer struct {
	Digest string
	TOC    *toc.TOC
}

// Resolved is a profile mapped onto an image's layers.
type Resolved struct {
	// Spans are the valid spans in profile order, as fs.Root.StartPrefetch takes them.
	Spans []fs.ChunkSpan
	// Chunks counts the chunks of Spans.
	Chunks int
	// Ignored counts the spans dropped; Reasons holds the first few reasons.
	Ignored int
	Reasons []string
}

const maxReasons = 8

// Resolve maps p's spans onto layers. A span whose layer the image lacks,
// whose path is not a regular file of that layer, or whose chunks are not
// that file's is dropped and counted in Ignored: a stale or foreign profile
// costs nothing but its warning.
func Resolve(p *Profile, layers []Layer) *Resolved {
	res := &Resolved{}
	drop := func(format string, args ...any) {
		res.Ignored++
		if len(res.Reasons) < maxReasons {
			res.Reasons = append(res.Reasons, fmt.Sprintf(format, args...))
		}
	}
	byDigest := make(map[string]int, len(layers))
	for i := len(layers) - 1; i >= 0; i-- {
		byDigest[layers[i].Digest] = i
	}
	where := make([]int, len(p.Layers))
	for i, d := range p.Layers {
		where[i] = -1
		if j, ok := byDigest[d]; ok {
			where[i] = j
		}
	}
	names := make([]map[string]int, len(layers))
	for k, s := range p.Spans {
		if s.Layer < 0 || s.Layer >= len(where) {
			drop("span %d: layer %d out of range", k, s.Layer)
			continue
		}
		li := where[s.Layer]
		if li < 0 {
			drop("span %d: image has no layer %s", k, p.Layers[s.Layer])
			continue
		}
		t := layers[li].TOC
		if names[li] == nil {
			m := make(map[string]int)
			for e := range t.Entries {
				if t.Entries[e].IsRegular() && t.Entries[e].NumChunks > 0 {
					m[t.Entries[e].Name] = e
				}
			}
			names[li] = m
		}
		ei, ok := names[li][s.Path]
		if !ok {
			drop("span %d: layer %s has no file %q", k, p.Layers[s.Layer], s.Path)
			continue
		}
		e := &t.Entries[ei]
		first, end := int64(e.FirstChunk), int64(e.FirstChunk)+int64(e.NumChunks)
		if int64(s.Chunk) < first || int64(s.Chunk)+int64(s.N) > end || end > int64(len(t.Chunks)) {
			drop("span %d: chunks %d+%d are not chunks of %q in layer %s", k, s.Chunk, s.N, s.Path, p.Layers[s.Layer])
			continue
		}
		res.Spans = append(res.Spans, fs.ChunkSpan{Layer: li, First: s.Chunk, Last: s.Chunk + s.N})
		res.Chunks += s.N
	}
	return res
}
