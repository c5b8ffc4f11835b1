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

	"github.com/lazyfs/lazyfs/fs"
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

// Warm fetches an image's chunks into cache ahead of its first container:
// every chunk with whole, otherwise the start-up set. Until recorded
// start-up profiles exist (lazyfs record), the start-up set is the first
// chunk of every regular file — what opening and starting to read any file
// needs. Chunks already cached are skipped; fetches are background work for
// the fetcher (on-demand reads of live mounts go first).
func Warm(ctx context.Context, f *remote.Fetcher, cache fs.Cache, ref string, whole bool) (WarmResult, error) {
	if cache == nil {
		return WarmResult{}, errors.New("warm: no cache")
	}
	img, err := f.Resolve(ctx, ref, nil)
	if err != nil {
		return WarmResult{}, err
	}
	res := WarmResult{Digest: img.Digest.String()}
	var chunks, bytes atomic.Int64
	ctx = remote.Background(ctx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range img.Layers {
		l := &img.Layers[i]
		if !l.Chunked() {
			return res, fmt.Errorf("warm %s: %w: layer %d (%s) is not chunked", ref, ErrNotConverted, i, l.Digest)
		}
		g.Go(func() error {
			blob := f.Blob(img.Repo, l.Digest, l.Size)
			t, err := blob.TOC(gctx, l.Annotations)
			if err != nil {
				return fmt.Errorf("warm %s: layer %d: %w", ref, i, err)
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
					if ok, _ := has(gctx, cache, c.Digest()); !ok {
						want = append(want, c)
					}
				}
			}
			if len(want) == 0 {
				return nil
			}
			err = blob.FetchChunks(gctx, want, func(k int, data []byte) error {
				if err := putVerified(gctx, cache, want[k].Digest(), data); err != nil {
					return err
				}
				chunks.Add(1)
				bytes.Add(int64(len(data)))
				return nil
			})
			if err != nil {
				return fmt.Errorf("warm %s: layer %d (%s): %w", ref, i, l.Digest, err)
			}
			return nil
		})
	}
	err = g.Wait()
	res.Chunks, res.Bytes = int(chunks.Load()), bytes.Load()
	return res, err
}

func has(ctx context.Context, c fs.Cache, d digest.Digest) (bool, error) {
	if h, ok := c.(interface {
		Has(context.Context, digest.Digest) (bool, error)
	}); ok {
		return h.Has(ctx, d)
	}
	_, err := c.Get(ctx, d)
	return err == nil, nil
}

// putVerified stores a chunk the registry fetcher has just verified.
func putVerified(ctx context.Context, c fs.Cache, d digest.Digest, data []byte) error {
	own := append([]byte(nil), data...)
	if vp, ok := c.(interface {
		PutVerified(context.Context, digest.Digest, []byte) error
	}); ok {
		return vp.PutVerified(ctx, d, own)
	}
	return c.Put(ctx, d, own)
}

// WarmHandler serves POST /v1/warm {"ref": "...", "whole": bool} with a
// WarmResult: the contract lazyfs-prewarm's HTTPWarmer speaks to the process
// that owns the node's block cache (see docs/prewarm.md).
func WarmHandler(f *remote.Fetcher, cache fs.Cache) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/warm", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Ref   string `json:"ref"`
			Whole bool   `json:"whole"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Ref == "" {
			http.Error(w, "body must be {\"ref\": \"repo@sha256:...\", \"whole\": false}", http.StatusBadRequest)
			return
		}
		res, err := Warm(r.Context(), f, cache, req.Ref, req.Whole)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	})
	return mux
}
