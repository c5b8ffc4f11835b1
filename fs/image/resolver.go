package image

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/singleflight"

	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// Resolver resolves image references and loads layers' verified TOCs once
// per image and once per layer, however many mounts, layers or warm requests
// ask at the same time: concurrent callers share one registry round trip
// (singleflight) and later callers find the result in a bounded cache.
//
// A reference by digest is cached until evicted; a reference by tag for
// ResolverOptions.TagTTL only, so a moved tag is seen again. TOCs are keyed
// by layer digest and the TOC's own digest from the layer's annotations (a
// descriptor cannot borrow another image's TOC by reusing a layer digest).
// A Resolver is safe for concurrent use.
type Resolver struct {
	f    *remote.Fetcher
	opts ResolverOptions

	flight singleflight.Group

	mu        sync.Mutex
	images    map[string]*list.Element // key → *imageEntry
	imageLRU  *list.List
	tocs      map[tocKey]*list.Element // → *tocEntry
	tocLRU    *list.List
	tocWeight int64

	resolves, tocLoads int64 // registry round trips made (for tests and stats)
}

// ResolverOptions bound a Resolver's caches. Zero values take the defaults.
type ResolverOptions struct {
	// TagTTL is how long a reference by tag stays resolved (default 1 minute).
	TagTTL time.Duration
	// MaxImages bounds the cached resolved images (default 256).
	MaxImages int
	// MaxTOCWeight bounds the cached TOCs by their entries plus chunks
	// (default 4,000,000, a few hundred MiB of decoded TOCs). A TOC heavier
	// than the bound is returned but not cached.
	MaxTOCWeight int64
}

// Resolver defaults.
const (
	DefaultTagTTL       = time.Minute
	DefaultMaxImages    = 256
	DefaultMaxTOCWeight = 4_000_000
)

type imageEntry struct {
	key     string
	img     *remote.Image
	expires time.Time // zero: never (by digest)
}

type tocKey struct{ layer, toc string }

type tocEntry struct {
	key    tocKey
	t      *toc.TOC
	weight int64
}

// NewResolver returns a Resolver that reaches registries through f.
func NewResolver(f *remote.Fetcher, o ResolverOptions) *Resolver {
	if o.TagTTL <= 0 {
		o.TagTTL = DefaultTagTTL
	}
	if o.MaxImages <= 0 {
		o.MaxImages = DefaultMaxImages
	}
	if o.MaxTOCWeight <= 0 {
		o.MaxTOCWeight = DefaultMaxTOCWeight
	}
	return &Resolver{f: f, opts: o, images: map[string]*list.Element{}, imageLRU: list.New(), tocs: map[tocKey]*list.Element{}, tocLRU: list.New()}
}

// Fetcher returns the fetcher the Resolver uses.
func (r *Resolver) Fetcher() *remote.Fetcher { return r.f }

// ResolverStats count the registry round trips a Resolver made.
type ResolverStats struct {
	Resolves int64 `json:"resolves"` // image references resolved at the registry
	TOCLoads int64 `json:"tocLoads"` // TOCs fetched and verified
	Images   int   `json:"images"`   // resolved images cached
	TOCs     int   `json:"tocs"`     // TOCs cached
}

// Stats returns the Resolver's counters.
func (r *Resolver) Stats() ResolverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return ResolverStats{Resolves: r.resolves, TOCLoads: r.tocLoads, Images: len(r.images), TOCs: len(r.tocs)}
}

// Resolve returns ref's image for platform (nil: the running platform).
// The result is shared: callers must not modify it.
func (r *Resolver) Resolve(ctx context.Context, ref string, platform *v1.Platform) (*remote.Image, error) {
	key := ref
	if platform != nil {
		key += "|" + platform.String()
	}
	if img := r.cachedImage(key); img != nil {
		return img, nil
	}
	ch := r.flight.DoChan("image\x00"+key, func() (any, error) {
		if img := r.cachedImage(key); img != nil {
			return img, nil
		}
		// Detached from the first caller: a caller that gives up does not
		// fail the others waiting on the same resolve. The fetcher's own
		// deadlines bound it.
		img, err := r.f.Resolve(context.WithoutCancel(ctx), ref, platform)
		r.mu.Lock()
		r.resolves++
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		var expires time.Time
		if _, ok := img.Ref.(name.Digest); !ok {
			expires = time.Now().Add(r.opts.TagTTL)
		}
		r.storeImage(&imageEntry{key: key, img: img, expires: expires})
		return img, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*remote.Image), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("resolve %s: %w", ref, ctx.Err())
	}
}

func (r *Resolver) cachedImage(key string) *remote.Image {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.images[key]
	if !ok {
		return nil
	}
	e := el.Value.(*imageEntry)
	if !e.expires.IsZero() && time.Now().After(e.expires) {
		r.imageLRU.Remove(el)
		delete(r.images, key)
		return nil
	}
	r.imageLRU.MoveToFront(el)
	return e.img
}

func (r *Resolver) storeImage(e *imageEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, ok := r.images[e.key]; ok {
		r.imageLRU.Remove(el)
	}
	r.images[e.key] = r.imageLRU.PushFront(e)
	for r.imageLRU.Len() > r.opts.MaxImages {
		old := r.imageLRU.Back()
		r.imageLRU.Remove(old)
		delete(r.images, old.Value.(*imageEntry).key)
	}
}

// TOC returns the verified TOC of layer i of img, which must be chunked.
// The TOC is shared: callers must not modify it.
func (r *Resolver) TOC(ctx context.Context, img *remote.Image, i int) (*toc.TOC, error) {
	if i < 0 || i >= len(img.Layers) {
		return nil, fmt.Errorf("image %s: no layer %d of %d", img.Ref, i, len(img.Layers))
	}
	l := &img.Layers[i]
	loc, ok, err := toc.LocationFromAnnotations(l.Annotations)
	if err != nil || !ok {
		return nil, fmt.Errorf("image %s: layer %d (%s): %w: no valid lazyfs TOC annotations (%v)", img.Ref, i, l.Digest, ErrNotConverted, err)
	}
	key := tocKey{layer: l.Digest.String(), toc: loc.Digest.String()}
	if t := r.cachedTOC(key); t != nil {
		return t, nil
	}
	blob := r.f.LayerBlob(img, i)
	annotations := l.Annotations
	ch := r.flight.DoChan("toc\x00"+key.layer+"\x00"+key.toc, func() (any, error) {
		if t := r.cachedTOC(key); t != nil {
			return t, nil
		}
		t, err := blob.TOC(context.WithoutCancel(ctx), annotations)
		r.mu.Lock()
		r.tocLoads++
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		r.storeTOC(&tocEntry{key: key, t: t, weight: int64(len(t.Entries) + len(t.Chunks) + 1)})
		return t, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, fmt.Errorf("image %s: layer %d (%s): %w", img.Ref, i, l.Digest, res.Err)
		}
		return res.Val.(*toc.TOC), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("image %s: layer %d (%s): toc: %w", img.Ref, i, l.Digest, ctx.Err())
	}
}

func (r *Resolver) cachedTOC(k tocKey) *toc.TOC {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.tocs[k]
	if !ok {
		return nil
	}
	r.tocLRU.MoveToFront(el)
	return el.Value.(*tocEntry).t
}

func (r *Resolver) storeTOC(e *tocEntry) {
	if e.weight > r.opts.MaxTOCWeight {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.tocs[e.key]; ok {
		return
	}
	r.tocs[e.key] = r.tocLRU.PushFront(e)
	r.tocWeight += e.weight
	for r.tocWeight > r.opts.MaxTOCWeight {
		old := r.tocLRU.Back()
		oe := old.Value.(*tocEntry)
		r.tocLRU.Remove(old)
		delete(r.tocs, oe.key)
		r.tocWeight -= oe.weight
	}
}
