package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

// WarmResult says what warming an image fetched into the cache. It is the
// answer of the /v1/warm endpoint that lazyfs-prewarm calls.
type WarmResult struct {
	Digest string `json:"digest"`
	Chunks int    `json:"chunks"`
	Bytes  int64  `json:"bytes"`
}

// WarmCache is what warming needs of the node's block cache (blobcache's
// caches have both): chunks arrive verified by the fetcher, so they are
// stored without a second hash.
type WarmCache interface {
	Has(ctx context.Context, d digest.Digest) (bool, error)
	PutVerified(ctx context.Context, d digest.Digest, data []byte) error
}

// Warm fetches an image's chunks into cache ahead of its first container:
// every chunk with whole, otherwise the start-up set. Until recorded
// start-up profiles exist (lazyfs record), the start-up set is the first
// chunk of every regular file — what opening and starting to read any file
// needs. Chunks already cached are skipped; fetches are background work for
// the fetcher (on-demand reads of live mounts go first).
func Warm(ctx context.Context, f *remote.Fetcher, cache WarmCache, ref string, whole bool) (WarmResult, error) {
	return NewResolver(f, ResolverOptions{}).Warm(ctx, cache, ref, whole)
}

// Warm is the package's Warm with the Resolver's shared images and TOCs: a
// daemon that warms an image it serves loads no manifest or TOC again.
func (r *Resolver) Warm(ctx context.Context, cache WarmCache, ref string, whole bool) (WarmResult, error) {
	if cache == nil {
		return WarmResult{}, errors.New("warm: no cache")
	}
	img, err := r.Resolve(ctx, ref, nil)
	if err != nil {
		return WarmResult{}, err
	}
	res := WarmResult{Digest: img.Digest.String()}
	var chunks, nbytes atomic.Int64
	ctx = remote.Background(ctx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range img.Layers {
		l := &img.Layers[i]
		if !l.Chunked() {
			return res, fmt.Errorf("warm %s: %w: layer %d (%s) is not chunked", ref, ErrNotConverted, i, l.Digest)
		}
		g.Go(func() error {
			blob := r.Fetcher().LayerBlob(img, i)
			t, err := r.TOC(gctx, img, i)
			if err != nil {
				return fmt.Errorf("warm %s: %w", ref, err)
			}
			var want []toc.Chunk
			seen := map[[32]byte]bool{}
			for j := range t.Entries {
				e := &t.Entries[j]
				cs := t.EntryChunks(e)
				if !whole && len(cs) > 1 {
					cs = cs[:1]
				}
				for _, c := range cs {
					if seen[c.Sum] {
						continue
					}
					seen[c.Sum] = true
					if ok, _ := cache.Has(gctx, c.Digest()); !ok {
						want = append(want, c)
					}
				}
			}
			if len(want) == 0 {
				return nil
			}
			err = blob.FetchChunks(gctx, want, func(k int, data []byte) error {
				if err := cache.PutVerified(gctx, want[k].Digest(), data); err != nil {
					return err
				}
				chunks.Add(1)
				nbytes.Add(int64(len(data)))
				return nil
			})
			if err != nil {
				return fmt.Errorf("warm %s: layer %d (%s): %w", ref, i, l.Digest, err)
			}
			return nil
		})
	}
	err = g.Wait()
	res.Chunks, res.Bytes = int(chunks.Load()), nbytes.Load()
	return res, err
}

// WarmHandler serves POST /v1/warm {"ref": "...", "whole": bool} with a
// WarmResult: the contract lazyfs-prewarm's HTTPWarmer speaks to the process
// that owns the node's block cache (see docs/prewarm.md).
func WarmHandler(f *remote.Fetcher, cache WarmCache) http.Handler {
	return NewResolver(f, ResolverOptions{}).WarmHandler(cache)
}

// WarmHandler is the package's WarmHandler over the Resolver's shared
// images and TOCs.
func (r *Resolver) WarmHandler(cache WarmCache) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/warm", func(w http.ResponseWriter, req *http.Request) {
		var body struct {
			Ref   string `json:"ref"`
			Whole bool   `json:"whole"`
		}
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<16)).Decode(&body); err != nil || body.Ref == "" {
			http.Error(w, "body must be {\"ref\": \"repo@sha256:...\", \"whole\": false}", http.StatusBadRequest)
			return
		}
		res, err := r.Warm(req.Context(), cache, body.Ref, body.Whole)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	})
	return mux
}
