package node

import (
	"context"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// ProfileConfig configures the start-up profiles of a Node's mounts
// (docs/fs.md): every merged image mount prefetches the profile the node
// learned for its image (or Source's), records its own first-read order
// and stores it on unmount for the next cold start; then, unless NoFill,
// fetches the rest of the image in the background.
type ProfileConfig struct {
	// Dir holds the profiles learned on this node, by image digest
	// (default Root/profiles; created 0700).
	Dir string
	// Off turns profiles off: mounts neither learn nor prefetch them.
	Off bool
	// NoLearn keeps no profiles on the node (Dir is unused): mounts learn
	// nothing, and prefetch Source's profile (or the registry's) only.
	NoLearn bool
	// NoFill turns fill off for merged image mounts (fill is on by
	// default: a workload that reads everything finishes no later than a
	// full pull).
	NoFill bool
	// LayerFill fills the snapshotter's per-layer mounts too (off by
	// default: a container's layers are fetched as read and prefetched
	// from the image's profile).
	LayerFill bool
	// Source, if set, returns an image's profile when the node has none.
	// The mounts of one image share one lookup (remembered for a while).
	Source func(ctx context.Context, img *remote.Image) (*profile.Profile, error)
	// Registry, without a Source, uses the profile attached to the image
	// in its registry (lazyfs record), reached through the node's fetcher
	// settings (hosts.toml, --insecure).
	Registry bool
	// Prefetch tunes the profile prefetch (workers, batch size); its Fill
	// is set from NoFill and LayerFill.
	Prefetch fs.PrefetchOptions
	// Autosave times the saves of what mounts have learned so far (zero:
	// when a recording has been idle 5 s after activity, and every 30 s
	// while it grows), so a daemon killed before its mounts are unmounted
	// has still learned their profiles. Unmounting saves in any case.
	Autosave profile.AutosaveOptions
}

// openProfiles opens the node's profile store (nil when profiles are off).
func openProfiles(cfg Config) (*profile.Store, error) {
	if cfg.Profiles.Off || cfg.Profiles.NoLearn {
		return nil, nil
	}
	dir := cfg.Profiles.Dir
	if dir == "" {
		dir = filepath.Join(cfg.Root, "profiles")
	}
	if err := MkdirPrivate(dir); err != nil {
		return nil, err
	}
	return profile.NewStore(dir)
}

// Profiles returns the node's store of learned profiles (nil when off).
func (n *Node) Profiles() *profile.Store { return n.profiles }

// imageProfiles are the profile options of a merged image mount.
func (n *Node) imageProfiles(o ImageOptions) image.ProfileOptions {
	on := n.profiles != nil || n.sources != nil
	fill := !n.cfg.Profiles.NoFill && on
	if o.Fill != nil {
		fill = *o.Fill
	}
	if !on && !o.Record && !fill {
		return image.ProfileOptions{}
	}
	po := image.ProfileOptions{Store: n.profiles, Record: o.Record, NoLoad: o.NoProfile, Prefetch: n.cfg.Profiles.Prefetch, Autosave: n.cfg.Profiles.Autosave}
	if n.sources != nil && !o.NoProfile {
		po.Source = n.sources.Get
	}
	po.Prefetch.Fill = fill
	return po
}

// layerProfiles are the profile options of a per-layer mount of img: it
// prefetches its own layer's spans of the image's learned profile and
// records into the image's recorder, shared by the per-layer mounts of the
// image (a layer's reads alone are not the image's profile). release ends
// the mount's hold on the recorder: the last one stores the profile.
func (n *Node) layerProfiles(img *remote.Image) (po image.ProfileOptions, release func()) {
	if n.profiles == nil {
		if n.sources == nil {
			return image.ProfileOptions{}, func() {}
		}
		// Nothing to learn into: prefetch the source's profile only.
		po = image.ProfileOptions{Source: n.sources.Get, Prefetch: n.cfg.Profiles.Prefetch}
		po.Prefetch.Fill = n.cfg.Profiles.LayerFill
		return po, func() {}
	}
	po = image.ProfileOptions{Store: n.profiles, NoStore: true, Prefetch: n.cfg.Profiles.Prefetch} // the node saves the shared recorder
	if n.sources != nil {
		po.Source = n.sources.Get
	}
	po.Prefetch.Fill = n.cfg.Profiles.LayerFill
	key := digest.Digest(img.Digest.String())
	n.recMu.Lock()
	defer n.recMu.Unlock()
	r := n.recorders[key]
	if r == nil {
		infos := make([]profile.LayerInfo, len(img.Layers))
		for i := range img.Layers {
			infos[i].Digest = img.Layers[i].Digest.String() // chunks: set as each layer mounts
		}
		r = &imageRecorder{rec: profile.NewRecorder(img.Digest.String(), infos)}
		r.stopSave = profile.Autosave(n.profiles, key, r.rec, n.cfg.Profiles.Autosave, func(err error) {
			n.log.Warn("cannot store the profile the image's layer mounts learned so far", "image", img.Ref, "error", err)
		})
		if n.recorders == nil {
			n.recorders = map[digest.Digest]*imageRecorder{}
		}
		n.recorders[key] = r
	}
	r.refs++
	po.Recorder = r.rec
	var once sync.Once
	return po, func() { once.Do(func() { n.releaseRecorder(key, img) }) }
}

// imageRecorder is the first-read order of an image's per-layer mounts.
type imageRecorder struct {
	rec      *profile.Recorder
	refs     int    // per-layer mounts recording into it
	stopSave func() // ends its autosave
}

// releaseRecorder ends one per-layer mount's hold on its image's recorder;
// when none is left, the profile recorded (if any) replaces the node's.
func (n *Node) releaseRecorder(key digest.Digest, img *remote.Image) {
	n.recMu.Lock()
	r := n.recorders[key]
	if r == nil {
		n.recMu.Unlock()
		return
	}
	if r.refs--; r.refs > 0 {
		n.recMu.Unlock()
		return
	}
	delete(n.recorders, key)
	n.recMu.Unlock()
	r.stopSave()
	if r.rec.Len() == 0 {
		return
	}
	if err := n.profiles.Save(key, r.rec.Profile()); err != nil {
		n.log.Warn("cannot store the profile learned by the image's layer mounts", "image", img.Ref, "error", err)
		return
	}
	n.log.Info("stored the profile learned by the image's layer mounts", "image", img.Ref, "digest", key)
}
