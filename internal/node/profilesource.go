package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

// registryProfile is the node's registry Source (ProfileConfig.Registry):
// the start-up profile img's manifest carries (lazyfs convert --record),
// else the one attached to it in its registry as an OCI referrer (lazyfs
// record, lazyfs profile push), reached as the node's fetcher reaches the
// registry (hosts.toml server and TLS settings, --insecure), with the
// default keychain's credentials. A manifest's profile that fails its
// bounds, size, digest or parse is logged and the referrers are asked.
func (n *Node) registryProfile(ctx context.Context, img *remote.Image) (*profile.Profile, error) {
	repo, rt := n.fetcher.RegistryAccess(img.Repo)
	opts := []ggcr.Option{ggcr.WithContext(ctx), ggcr.WithAuthFromKeychain(authn.DefaultKeychain), ggcr.WithUserAgent("lazyfs")}
	if rt != nil {
		opts = append(opts, ggcr.WithTransport(rt))
	}
	if img.Manifest != nil {
		p, _, err := profile.FromManifest(ctx, repo, img.Manifest.Annotations, opts...)
		if err == nil {
			return p, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, profile.ErrNotFound) {
			n.log.Warn("ignoring the profile the image's manifest carries; trying its referrers", "image", img.Ref, "error", err)
		}
	}
	p, _, err := profile.Pull(ctx, repo, img.Digest, opts...)
	return p, err
}

// sourceMemo asks a profile Source once per image digest, however many
// per-layer mounts of the image ask at once, and remembers a profile for
// ttl and a miss or an error for missTTL (a profile pushed later is seen
// soon), so a container's layers cost one referrers lookup, not one each.
type sourceMemo struct {
	src     func(context.Context, *remote.Image) (*profile.Profile, error)
	ttl     time.Duration
	missTTL time.Duration
	max     int

	mu sync.Mutex
	m  map[string]*sourceLookup
}

type sourceLookup struct {
	done chan struct{}
	at   time.Time
	p    *profile.Profile
	err  error
}

func newSourceMemo(src func(context.Context, *remote.Image) (*profile.Profile, error)) *sourceMemo {
	return &sourceMemo{src: src, ttl: 10 * time.Minute, missTTL: 30 * time.Second, max: 1024, m: map[string]*sourceLookup{}}
}

// Get returns img's profile from the source, asking it at most once per ttl.
// The lookup runs under the first caller's ctx; a caller whose ctx ends
// first returns with its ctx's error.
func (s *sourceMemo) Get(ctx context.Context, img *remote.Image) (*profile.Profile, error) {
	key := img.Digest.String()
	s.mu.Lock()
	l := s.m[key]
	if l != nil {
		select {
		case <-l.done:
			ttl := s.ttl
			if l.p == nil || l.err != nil {
				ttl = s.missTTL
			}
			if time.Since(l.at) > ttl || l.err != nil && ctx.Err() == nil && isContextErr(l.err) {
				l = nil // expired, or the first asker gave up: ask again
			}
		default:
		}
	}
	if l == nil {
		if len(s.m) >= s.max {
			clear(s.m) // bounded: forget everything rather than grow
		}
		l = &sourceLookup{done: make(chan struct{})}
		s.m[key] = l
		s.mu.Unlock()
		l.p, l.err = s.src(ctx, img)
		l.at = time.Now()
		close(l.done)
		return l.p, l.err
	}
	s.mu.Unlock()
	select {
	case <-l.done:
		return l.p, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func isContextErr(err error) bool {
	return err == context.Canceled || err == context.DeadlineExceeded
}
