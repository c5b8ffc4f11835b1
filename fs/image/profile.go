package image

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// ProfileOptions configures the start-up profile of a mount: where it comes
// from, whether the mount records (learns) one, and the prefetch and fill.
type ProfileOptions struct {
	// Store holds profiles learned on this node, by image digest. The mount
	// prefetches the image's stored profile, records the first-read order of
	// this mount, and stores it on Close (replacing the old one) so the next
	// cold start of the image on the node uses it.
	Store *profile.Store
	// Source, if set, returns a profile when the store has none (e.g. the
	// one attached to the image in its registry, profile.Pull). It runs in
	// parallel with the TOC fetches; an error is logged and the mount goes on.
	Source func(ctx context.Context, img *remote.Image) (*profile.Profile, error)
	// NoStore prefetches the Store's profile but neither records nor
	// stores one (a per-layer mount: one layer's reads are not the
	// image's profile).
	NoStore bool
	// Recorder, if set, is where the mount records its first-read order
	// (with NoStore): one recorder shared by the per-layer mounts of an
	// image, whose owner stores it when the last of them is gone.
	Recorder *profile.Recorder
	// Record records the first-read order even without a Store, for
	// Mounted.Recorded (lazyfs record).
	Record bool
	// NoLoad prefetches no profile, neither the Store's nor Source's; the
	// mount still records and stores its own (lazyfs mount --no-profile).
	NoLoad bool
	// Prefetch configures the profile prefetch; with Prefetch.Fill the rest
	// of the image follows in the background, with or without a profile.
	Prefetch fs.PrefetchOptions
	// Autosave times the saves of the first-read order recorded so far into
	// Store while the mount is up (profile.Autosave; zero values: its
	// defaults; Off: only Close stores), so a process killed before Close
	// has still stored what the mount learned.
	Autosave profile.AutosaveOptions
}

// profileState is a mount's profile: the one prefetched and the recorder.
type profileState struct {
	o        ProfileOptions
	log      *slog.Logger
	img      *remote.Image
	source   string // "node", "registry" or ""
	loaded   chan struct{}
	p        *profile.Profile
	rec      *profile.Recorder
	pf       *fs.Prefetcher
	pinner   pinner
	pinned   []digest.Digest
	stopSave func() // ends the autosave (nil: none)
	stopOnce sync.Once
}

// pinner is the optional cache method set (blobcache has it) that keeps a
// live mount's profile chunks from being evicted before other chunks.
type pinner interface {
	Pin(ds ...digest.Digest)
	Unpin(ds ...digest.Digest)
}

// loadProfile starts looking for the image's profile in the background.
func loadProfile(ctx context.Context, o ProfileOptions, img *remote.Image, log *slog.Logger) *profileState {
	ps := &profileState{o: o, log: log, img: img, loaded: make(chan struct{})}
	go func() {
		defer close(ps.loaded)
		if o.NoLoad {
			return
		}
		if o.Store != nil {
			p, err := o.Store.Load(digestOf(img))
			switch {
			case err == nil:
				ps.p, ps.source = p, "node"
				return
			case !errors.Is(err, profile.ErrNotFound):
				log.Warn("ignoring the node's profile of the image", "image", img.Ref, "error", err)
			}
		}
		if o.Source != nil {
			p, err := o.Source(ctx, img)
			switch {
			case err == nil && p != nil:
				ps.p, ps.source = p, "registry"
			case err != nil && !errors.Is(err, profile.ErrNotFound):
				log.Warn("ignoring the image's profile", "image", img.Ref, "error", err)
			}
		}
	}()
	return ps
}

// onRead chains the recorder (if the mount records) before next. The
// recorder covers every layer of the image; a per-layer mount's events
// (layer 0 of its Root) are recorded as its layer's index in the image.
func (ps *profileState) onRead(layers []*Layer, next func(fs.ReadEvent)) func(fs.ReadEvent) {
	index := make([]int, len(layers))
	for i, l := range layers {
		index[i] = l.Index()
	}
	if r := ps.o.Recorder; r != nil {
		for _, l := range layers {
			r.SetLayerChunks(l.Index(), len(l.TOC.Chunks))
		}
		return chainRead(func(e fs.ReadEvent) {
			if e.Layer >= 0 && e.Layer < len(index) {
				r.Record(index[e.Layer], e.Path, e.FirstChunk, e.LastChunk)
			}
		}, next)
	}
	if (ps.o.Store == nil || ps.o.NoStore) && !ps.o.Record {
		return next
	}
	// Layers this mount does not serve (0 chunks) record nothing.
	infos := make([]profile.LayerInfo, len(ps.img.Layers))
	for i := range ps.img.Layers {
		infos[i].Digest = ps.img.Layers[i].Digest.String()
	}
	for _, l := range layers {
		infos[l.Index()].Chunks = len(l.TOC.Chunks)
	}
	ps.rec = profile.NewRecorder(ps.img.Digest.String(), infos)
	return chainRead(func(e fs.ReadEvent) {
		if e.Layer >= 0 && e.Layer < len(index) {
			ps.rec.Record(index[e.Layer], e.Path, e.FirstChunk, e.LastChunk)
		}
	}, next)
}

// chainRead calls rec, then next (if set), for each read event.
func chainRead(rec, next func(fs.ReadEvent)) func(fs.ReadEvent) {
	if next == nil {
		return rec
	}
	return func(e fs.ReadEvent) { rec(e); next(e) }
}

// start waits for the profile lookup, resolves the profile against the
// layers and starts the prefetch (and fill).
func (ps *profileState) start(ctx context.Context, root *fs.Root, layers []*Layer, cache fs.Cache) {
	select {
	case <-ps.loaded:
	case <-ctx.Done():
		return // the lookup may still be writing ps.p
	}
	var spans []fs.ChunkSpan
	if ps.p != nil {
		pl := make([]profile.Layer, len(layers))
		for i, l := range layers {
			pl[i] = profile.Layer{Digest: l.Digest().String(), TOC: l.TOC}
		}
		p := ps.p
		if len(layers) < len(ps.img.Layers) {
			p = spansOf(p, pl)
		}
		res := profile.Resolve(p, pl)
		if res.Ignored > 0 {
			ps.log.Warn("profile names files or chunks the image lacks: ignoring them",
				"image", ps.img.Ref, "source", ps.source, "ignored", res.Ignored, "kept", len(res.Spans), "reasons", res.Reasons)
		}
		spans = res.Spans
		if pn, ok := cache.(pinner); ok {
			for _, sp := range spans {
				for i := sp.First; i < sp.Last; i++ {
					ps.pinned = append(ps.pinned, layers[sp.Layer].TOC.Chunks[i].Digest())
				}
			}
			pn.Pin(ps.pinned...)
			ps.pinner = pn
		}
		ps.log.Info("prefetching the start-up profile", "image", ps.img.Ref, "source", ps.source, "chunks", res.Chunks)
	}
	if len(spans) == 0 && !ps.o.Prefetch.Fill {
		return
	}
	pf, err := root.StartPrefetch(spans, ps.o.Prefetch)
	if err != nil {
		ps.log.Warn("no prefetch", "image", ps.img.Ref, "error", err)
		return
	}
	ps.pf = pf
}

// autosave starts saving the mount's recording while it is up (once the
// mount is up: a mount that fails has nothing to stop it).
func (ps *profileState) autosave() {
	if ps.o.Store == nil || ps.o.NoStore || ps.rec == nil {
		return
	}
	ps.stopSave = profile.Autosave(ps.o.Store, digestOf(ps.img), ps.rec, ps.o.Autosave, func(err error) {
		ps.log.Warn("cannot store the profile learned so far", "image", ps.img.Ref, "error", err)
	})
}

// stop ends the prefetch and stores the recorded profile in the node's store.
func (ps *profileState) stop() {
	ps.stopOnce.Do(func() {
		if ps.stopSave != nil {
			ps.stopSave()
		}
		if ps.pf != nil {
			ps.pf.Stop()
		}
		if ps.pinner != nil {
			ps.pinner.Unpin(ps.pinned...)
		}
		if ps.o.Store == nil || ps.o.NoStore || ps.rec == nil || ps.rec.Len() == 0 {
			return
		}
		if err := ps.o.Store.Save(digestOf(ps.img), ps.rec.Profile()); err != nil {
			ps.log.Warn("cannot store the learned profile", "image", ps.img.Ref, "error", err)
		}
	})
}

// spansOf returns p with only the spans of layers (a per-layer mount: the
// spans of the image's other layers are not this mount's to fetch, nor
// stale).
func spansOf(p *profile.Profile, layers []profile.Layer) *profile.Profile {
	keep := make(map[string]bool, len(layers))
	for _, l := range layers {
		keep[l.Digest] = true
	}
	q := *p
	q.Spans = nil
	for _, s := range p.Spans {
		if s.Layer >= 0 && s.Layer < len(p.Layers) && keep[p.Layers[s.Layer]] {
			q.Spans = append(q.Spans, s)
		}
	}
	return &q
}

func digestOf(img *remote.Image) digest.Digest { return digest.Digest(img.Digest.String()) }

// Recorded returns the first-read order recorded so far (nil unless the
// mount records: ProfileOptions.Store or Record).
func (m *Mounted) Recorded() *profile.Profile {
	if m.profiles == nil || m.profiles.rec == nil {
		return nil
	}
	return m.profiles.rec.Profile()
}

// Prefetcher returns the running profile prefetch, or nil.
func (m *Mounted) Prefetcher() *fs.Prefetcher {
	if m.profiles == nil {
		return nil
	}
	return m.profiles.pf
}

// ProfileSource says where the prefetched profile came from: "node",
// "registry", or "" for none.
func (m *Mounted) ProfileSource() string {
	if m.profiles == nil {
		return ""
	}
	select {
	case <-m.profiles.loaded:
		return m.profiles.source
	default:
		return ""
	}
}
