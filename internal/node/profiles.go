package node

import (
	"context"
	"path/filepath"

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
	// NoFill turns fill off for merged image mounts (fill is on by
	// default: a workload that reads everything finishes no later than a
	// full pull).
	NoFill bool
	// LayerFill fills the snapshotter's per-layer mounts too (off by
	// default: a container's layers are fetched as read and prefetched
	// from the image's profile).
	LayerFill bool
	// Source, if set, returns an image's profile when the node has none
	// (e.g. the one attached to the image in its registry). Merged image
	// mounts only.
	Source func(ctx context.Context, img *remote.Image) (*profile.Profile, error)
	// Prefetch tunes the profile prefetch (workers, batch size); its Fill
	// is set from NoFill and LayerFill.
	Prefetch fs.PrefetchOptions
}

// openProfiles opens the node's profile store (nil when profiles are off).
func openProfiles(cfg Config) (*profile.Store, error) {
	if cfg.Profiles.Off {
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
	if n.profiles == nil && !o.Record {
		return image.ProfileOptions{}
	}
	po := image.ProfileOptions{Store: n.profiles, Source: n.cfg.Profiles.Source, Record: o.Record, Prefetch: n.cfg.Profiles.Prefetch}
	po.Prefetch.Fill = !n.cfg.Profiles.NoFill && n.profiles != nil
	return po
}

// layerProfiles are the profile options of a per-layer mount: it
// prefetches its own layer's spans of the image's learned profile, and
// stores nothing (a layer's reads alone are not the image's profile).
func (n *Node) layerProfiles() image.ProfileOptions {
	if n.profiles == nil {
		return image.ProfileOptions{}
	}
	po := image.ProfileOptions{Store: n.profiles, NoStore: true, Prefetch: n.cfg.Profiles.Prefetch}
	po.Prefetch.Fill = n.cfg.Profiles.LayerFill
	return po
}
