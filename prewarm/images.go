package prewarm

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyfs/lazyfs/internal/unixhttp"
)

// WarmResult is what warming one image fetched into the block cache.
type WarmResult struct {
	Digest string `json:"digest"`
	Chunks int    `json:"chunks"`
	Bytes  int64  `json:"bytes"`
}

// ImageWarmer fetches an image's start-up profile chunks (or the whole
// image) into the node's block cache. ref is always digest-pinned
// (repo@sha256:…). The process that owns the cache implements it; prewarm
// only asks (see HTTPWarmer).
type ImageWarmer interface {
	Warm(ctx context.Context, ref string) (WarmResult, error)
}

// Resolver resolves a reference to its manifest digest.
type Resolver interface {
	Digest(ctx context.Context, ref string) (string, error)
}

// RemoteResolver resolves with a registry HEAD request, authenticating with
// the Docker keychain.
type RemoteResolver struct {
	NameOptions   []name.Option
	RemoteOptions []remote.Option
}

// Digest implements Resolver.
func (r RemoteResolver) Digest(ctx context.Context, ref string) (string, error) {
	rr, err := name.ParseReference(ref, r.NameOptions...)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	opts := append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, r.RemoteOptions...)
	desc, err := remote.Head(rr, opts...)
	if err != nil {
		return "", fmt.Errorf("image %s: resolve: %w", ref, err)
	}
	return desc.Digest.String(), nil
}

// ImageKeeperConfig configures an ImageKeeper.
type ImageKeeperConfig struct {
	Refs     []string
	Resolver Resolver    // default RemoteResolver{}
	Warmer   ImageWarmer // nil: resolve and report only
	// Interval between digest checks of one ref (5m).
	Interval time.Duration
	// Backoff after a failure, doubled per failure up to MaxBackoff (5s, 5m).
	Backoff, MaxBackoff time.Duration
	NameOptions         []name.Option
	Logger              *slog.Logger
	Metrics             *Metrics
}

// ImageKeeper keeps a list of images warm: it resolves each ref
// periodically and warms it on first sight and whenever the tag moves,
// backing off on errors.
type ImageKeeper struct {
	cfg  ImageKeeperConfig
	mu   sync.Mutex
	imgs map[string]*ImageStatus
}

// NewImageKeeper returns a keeper for cfg.Refs.
func NewImageKeeper(cfg ImageKeeperConfig) *ImageKeeper {
	if cfg.Resolver == nil {
		cfg.Resolver = RemoteResolver{NameOptions: cfg.NameOptions}
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Minute
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 5 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	k := &ImageKeeper{cfg: cfg, imgs: map[string]*ImageStatus{}}
	for _, r := range cfg.Refs {
		k.imgs[r] = &ImageStatus{Ref: r}
	}
	return k
}

// Run checks every ref until ctx is done.
func (k *ImageKeeper) Run(ctx context.Context) error {
	if k.cfg.Warmer == nil && len(k.cfg.Refs) > 0 {
		k.cfg.Logger.Warn("image warming: no warmer (cache owner socket) configured; digests are resolved and reported only")
	}
	var wg sync.WaitGroup
	for _, r := range k.cfg.Refs {
		wg.Add(1)
		go func() { defer wg.Done(); k.loop(ctx, r) }()
	}
	wg.Wait()
	return nil
}

func (k *ImageKeeper) loop(ctx context.Context, ref string) {
	for {
		wait := k.cfg.Interval
		if err := k.Check(ctx, ref); err != nil {
			if ctx.Err() != nil {
				return
			}
			k.mu.Lock()
			n := k.imgs[ref].Failures
			k.mu.Unlock()
			wait = min(k.cfg.Backoff<<min(n-1, 20), k.cfg.MaxBackoff)
			k.cfg.Logger.Warn("image warming failed", "image", ref, "err", err, "retry_in", wait)
		}
		k.mu.Lock()
		k.imgs[ref].NextCheck = time.Now().Add(wait)
		k.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Check resolves ref once and warms it if its digest is new. It returns
// the resolve or warm error, which also counts as a failure for backoff.
func (k *ImageKeeper) Check(ctx context.Context, ref string) error {
	k.mu.Lock()
	st := k.imgs[ref]
	if st == nil {
		st = &ImageStatus{Ref: ref}
		k.imgs[ref] = st
	}
	have, warmed := st.Digest, st.WarmedAt != nil
	k.mu.Unlock()

	fail := func(err error) error {
		k.mu.Lock()
		st.Failures++
		st.LastError = err.Error()
		k.mu.Unlock()
		k.cfg.Metrics.imageWarm(ref, "error")
		return err
	}
	dg, err := k.cfg.Resolver.Digest(ctx, ref)
	if err != nil {
		return fail(err)
	}
	if dg == have && (warmed || k.cfg.Warmer == nil) {
		k.mu.Lock()
		st.Failures = 0
		k.mu.Unlock()
		return nil
	}
	if k.cfg.Warmer == nil {
		k.mu.Lock()
		st.Digest, st.LastError, st.Failures = dg, ErrNoWarmer.Error(), 0
		k.mu.Unlock()
		return nil
	}
	pinned, err := pin(ref, dg, k.cfg.NameOptions)
	if err != nil {
		return fail(err)
	}
	if have != "" && have != dg {
		k.cfg.Logger.Info("image tag moved", "image", ref, "from", have, "to", dg)
	}
	res, err := k.cfg.Warmer.Warm(ctx, pinned)
	if err != nil {
		return fail(fmt.Errorf("image %s: warm: %w", pinned, err))
	}
	now := time.Now()
	k.mu.Lock()
	st.Digest, st.WarmedAt, st.LastError, st.Failures = dg, &now, "", 0
	st.Warms++
	st.Chunks, st.Bytes = res.Chunks, res.Bytes
	k.mu.Unlock()
	k.cfg.Metrics.imageWarm(ref, "ok")
	k.cfg.Logger.Info("image warmed", "image", pinned, "chunks", res.Chunks, "bytes", res.Bytes)
	return nil
}

// Status returns one entry per configured ref, in configuration order.
func (k *ImageKeeper) Status() []ImageStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]ImageStatus, 0, len(k.cfg.Refs))
	for _, r := range k.cfg.Refs {
		out = append(out, *k.imgs[r])
	}
	return out
}

func pin(ref, digest string, opts []name.Option) (string, error) {
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	return r.Context().Digest(digest).String(), nil
}

func (m *Metrics) imageWarm(ref, result string) {
	if m != nil {
		m.imageWarms.WithLabelValues(ref, result).Inc()
	}
}

// HTTPWarmer asks the process that owns the block cache (the
// lazyfs-snapshotter or mount daemon) to warm an image, over its unix
// socket: POST /v1/warm {"ref": "repo@sha256:…", "whole": false} answered
// by a WarmResult. That endpoint is the contract docs/prewarm.md describes;
// prewarm never opens the cache itself (badger allows one process).
type HTTPWarmer struct {
	Socket string
	// Whole asks for whole images rather than start-up profiles.
	Whole  bool
	client *unixhttp.Client
	once   sync.Once
}

// Warm implements ImageWarmer.
func (w *HTTPWarmer) Warm(ctx context.Context, ref string) (WarmResult, error) {
	w.once.Do(func() { w.client = unixhttp.New(w.Socket, unixhttp.Options{MaxAnswer: 1 << 20}) })
	var r WarmResult
	if err := w.client.Do(ctx, http.MethodPost, "/v1/warm", map[string]any{"ref": ref, "whole": w.Whole}, &r); err != nil {
		return WarmResult{}, fmt.Errorf("cache owner %s: %w", w.Socket, err)
	}
	return r, nil
}
