package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/lazyfs/lazyfs/internal/unixsock"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/image"
)

// DefaultControlSocket is where the node daemon serves its control API.
const DefaultControlSocket = "/run/lazyfs/control.sock"

// MountRequest is the body of POST /v1/mounts.
type MountRequest struct {
	Ref      string `json:"ref"`
	Dir      string `json:"dir"`
	Pull     bool   `json:"pull,omitempty"`
	Platform string `json:"platform,omitempty"`
	// Fill turns the mount's background fill on or off; absent, the
	// daemon's default applies (on unless its profiles are off or it was
	// started with fill off).
	Fill *bool `json:"fill,omitempty"`
	// NoProfile prefetches no start-up profile (ImageOptions.NoProfile).
	NoProfile bool `json:"noProfile,omitempty"`
}

// LayerRequest is the body of POST /v1/layers and /v1/layers/check.
type LayerRequest struct {
	Mountpoint string            `json:"mountpoint"`
	Labels     map[string]string `json:"labels"`
}

// UnmountResult is the answer of DELETE /v1/mounts: Note says what
// happened beyond a plain unmount ("" for none): detached because files
// were open, or another mount namespace held it.
type UnmountResult struct {
	Note string `json:"note,omitempty"`
}

// Health is the answer of GET /v1/health.
type Health struct {
	PID    int `json:"pid"`
	Mounts int `json:"mounts"`
}

// maxRequestBody bounds a control API request body.
const maxRequestBody = 256 << 10

// Handler serves the node's control API (HTTP/JSON, for a unix socket):
//
//	GET    /v1/health             Health
//	GET    /v1/mounts             []MountInfo: every mount (images and layers)
//	POST   /v1/mounts             MountRequest → image.Stats: mount an image's merged root
//	DELETE /v1/mounts?dir=DIR     UnmountResult: unmount (lazily when busy)
//	GET    /v1/stats?dir=DIR      image.Stats of one mount
//	POST   /v1/warm               the lazyfs-prewarm contract (image.WarmHandler) on the node cache
//	GET    /metrics               the node's Prometheus metrics (Collectors)
//	POST   /v1/layers             LayerRequest: LayerFS.Mount (for RemoteLayerFS)
//	POST   /v1/layers/check       LayerRequest: LayerFS.Check
//	DELETE /v1/layers?dir=DIR     LayerFS.Unmount
//
// Errors are plain text with status 400 (bad request), 404 (no such
// mount), 409 (mount point in use) or 502 (registry or mount failure).
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		h := Health{PID: os.Getpid(), Mounts: len(n.mounts)}
		n.mu.Unlock()
		writeJSON(w, h)
	})
	mux.HandleFunc("GET /v1/mounts", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, n.List(r.Context()))
	})
	mux.HandleFunc("POST /v1/mounts", func(w http.ResponseWriter, r *http.Request) {
		var req MountRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody)).Decode(&req); err != nil || req.Ref == "" || req.Dir == "" {
			http.Error(w, `body must be {"ref": "...", "dir": "/abs/path", "pull": false, "platform": "", "fill": true, "noProfile": false}`, http.StatusBadRequest)
			return
		}
		o := ImageOptions{Pull: req.Pull, Fill: req.Fill, NoProfile: req.NoProfile}
		if req.Platform != "" {
			p, err := v1.ParsePlatform(req.Platform)
			if err != nil {
				http.Error(w, fmt.Sprintf("platform %q: %v", req.Platform, err), http.StatusBadRequest)
				return
			}
			o.Platform = p
		}
		if !filepath.IsAbs(req.Dir) {
			http.Error(w, "dir must be absolute", http.StatusBadRequest)
			return
		}
		m, err := n.MountImage(r.Context(), req.Ref, req.Dir, o)
		if err != nil {
			httpError(w, err)
			return
		}
		writeJSON(w, m.Stats())
	})
	mux.HandleFunc("DELETE /v1/mounts", func(w http.ResponseWriter, r *http.Request) {
		dir := r.URL.Query().Get("dir")
		if !filepath.IsAbs(dir) {
			http.Error(w, "dir must be absolute", http.StatusBadRequest)
			return
		}
		note, err := n.unmount(r.Context(), dir)
		if err != nil {
			httpError(w, err)
			return
		}
		writeJSON(w, UnmountResult{Note: note})
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := n.Stats(r.URL.Query().Get("dir"))
		if err != nil {
			httpError(w, err)
			return
		}
		writeJSON(w, st)
	})
	mux.Handle("POST /v1/warm", n.resolver.WarmHandler(n.cache))
	mux.Handle("GET /metrics", n.MetricsHandler())
	lfs := n.LayerFS()
	layerReq := func(w http.ResponseWriter, r *http.Request) (LayerRequest, bool) {
		var req LayerRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody)).Decode(&req); err != nil || !filepath.IsAbs(req.Mountpoint) || len(req.Labels) > 256 {
			http.Error(w, `body must be {"mountpoint": "/abs/path", "labels": {...}}`, http.StatusBadRequest)
			return req, false
		}
		return req, true
	}
	mux.HandleFunc("POST /v1/layers", func(w http.ResponseWriter, r *http.Request) {
		if req, ok := layerReq(w, r); ok {
			if err := lfs.Mount(r.Context(), req.Mountpoint, req.Labels); err != nil {
				httpError(w, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /v1/layers/check", func(w http.ResponseWriter, r *http.Request) {
		if req, ok := layerReq(w, r); ok {
			if err := lfs.Check(r.Context(), req.Mountpoint, req.Labels); err != nil {
				httpError(w, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("DELETE /v1/layers", func(w http.ResponseWriter, r *http.Request) {
		dir := r.URL.Query().Get("dir")
		if !filepath.IsAbs(dir) {
			http.Error(w, "dir must be absolute", http.StatusBadRequest)
			return
		}
		if err := lfs.Unmount(r.Context(), dir); err != nil {
			httpError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, ErrNotMounted):
		code = http.StatusNotFound
	case errors.Is(err, ErrMountPointInUse):
		code = http.StatusConflict
	case errors.Is(err, image.ErrNotConverted):
		code = http.StatusUnprocessableEntity
	}
	http.Error(w, err.Error(), code)
}

// Listen is unixsock.Listen: a socket born 0600 in a 0700 directory.
func Listen(path string) (net.Listener, error) { return unixsock.Listen(path) }

// Serve serves h on the unix socket path (see Listen) until ctx is done,
// then stops accepting, gives running requests 5 s, and removes the socket.
func Serve(ctx context.Context, path string, h http.Handler) error {
	ln, err := Listen(path)
	if err != nil {
		return err
	}
	return ServeListener(ctx, ln, h)
}

// ServeListener is Serve on a listener from Listen.
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	if errors.Is(err, context.DeadlineExceeded) {
		srv.Close()
	}
	return nil
}

// Serve serves the Node's control API (Handler) on the unix socket path
// until ctx is done (see the package's Serve).
func (n *Node) Serve(ctx context.Context, path string) error {
	return Serve(ctx, path, n.Handler())
}
