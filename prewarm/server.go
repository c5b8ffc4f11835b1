package prewarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/lazyfs/lazyfs/internal/unixsock"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lazyfs/lazyfs/prewarm/api"
)

// Server serves the claim/release API (HTTP/JSON on a unix socket):
//
//	GET  /v1/status   → Status
//	POST /v1/claim    ClaimRequest   → ClaimResult
//	POST /v1/release  ReleaseRequest → ReleaseResult
//	GET  /healthz     → {"status":"ok","mode":…}
//
// Errors answer {"error": "…", "code": "already_claimed"|…} with a 4xx/5xx
// status; Client maps the code back to the package's sentinel errors.
type Server struct {
	Manager *Manager
	Images  *ImageKeeper // may be nil
	Logger  *slog.Logger
}

// Handler returns the API's handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.status())
	})
	mux.HandleFunc("POST /v1/claim", func(w http.ResponseWriter, r *http.Request) {
		var req ClaimRequest
		if err := readJSON(r, &req); err != nil {
			s.writeErr(w, err)
			return
		}
		res, err := s.Manager.Claim(r.Context(), req)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /v1/release", func(w http.ResponseWriter, r *http.Request) {
		var req ReleaseRequest
		if err := readJSON(r, &req); err != nil {
			s.writeErr(w, err)
			return
		}
		if req.UUID == "" && req.Worker == "" {
			s.writeErr(w, fmt.Errorf("release: uuid (or worker) missing: %w", ErrBadRequest))
			return
		}
		res, err := s.Manager.Release(r.Context(), req)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /healthz", s.healthz)
	return mux
}

// MetricsHandler serves /metrics and /healthz (for the TCP listener).
func (s *Server) MetricsHandler(m *Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.healthz)
	return mux
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	mode := "hold"
	if s.Manager.ReportOnly() {
		mode = "report-only"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "mode": mode})
}

func (s *Server) status() Status {
	st := s.Manager.Status()
	if s.Images != nil {
		st.Images = s.Images.Status()
	}
	return st
}

func (s *Server) writeErr(w http.ResponseWriter, err error) {
	code, status := api.ErrorCode(err)
	if (code == "internal" || code == "holder_failed") && s.Logger != nil {
		s.Logger.Error("api error", "err", err)
	}
	writeJSON(w, status, api.Error{Error: err.Error(), Code: code})
}

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		return fmt.Errorf("read body: %v: %w", err, ErrBadRequest)
	}
	if len(b) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytesReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode body: %v: %w", err, ErrBadRequest)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// ListenUnix is unixsock.Listen: a socket born 0600 in a 0700 directory,
// never taking over a live one.
func ListenUnix(path string) (net.Listener, error) { return unixsock.Listen(path) }

// Serve serves h on l until ctx is done, then shuts down gracefully.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
