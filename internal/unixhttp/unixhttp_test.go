package unixhttp_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/internal/unixhttp"
	"github.com/lazyfs/lazyfs/internal/unixsock"
)

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "api.sock")
	ln, err := unixsock.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestDo(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "no content type", http.StatusBadRequest)
			return
		}
		var in map[string]int
		json.NewDecoder(r.Body).Decode(&in)
		in["n"]++
		json.NewEncoder(w).Encode(in)
	})
	mux.HandleFunc("DELETE /gone", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /missing", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no such mount", http.StatusNotFound) })
	mux.HandleFunc("GET /garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("not json")) })
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`"` + strings.Repeat("x", 2000) + `"`)) })
	sock := serve(t, mux)
	ctx := context.Background()
	for _, o := range []unixhttp.Options{{}, {Timeout: 5 * time.Second, DialTimeout: time.Second, NoKeepAlive: true, MaxAnswer: 1000}} {
		c := unixhttp.New(sock, o)
		var out map[string]int
		if err := c.Do(ctx, http.MethodPost, "/echo", map[string]int{"n": 41}, &out); err != nil || out["n"] != 42 {
			t.Fatalf("echo: %v %v", out, err)
		}
		if err := c.Do(ctx, http.MethodDelete, "/gone", nil, &out); err != nil {
			t.Fatalf("204 answer: %v", err)
		}
		err := c.Do(ctx, http.MethodGet, "/missing", nil, &out)
		se, ok := errors.AsType[*unixhttp.StatusError](err)
		if !ok || se.Code != http.StatusNotFound || strings.TrimSpace(string(se.Body)) != "no such mount" || err.Error() != "404 Not Found: no such mount" {
			t.Fatalf("404 answer: %v", err)
		}
		if err := c.Do(ctx, http.MethodGet, "/garbage", nil, &out); !errors.Is(err, unixhttp.ErrBadAnswer) {
			t.Fatalf("garbage answer: %v", err)
		}
		var s string
		err = c.Do(ctx, http.MethodGet, "/big", nil, &s)
		if o.MaxAnswer == 1000 && !errors.Is(err, unixhttp.ErrBadAnswer) {
			t.Fatalf("answer over MaxAnswer: %v", err)
		}
		if o.MaxAnswer == 0 && (err != nil || len(s) != 2000) {
			t.Fatalf("answer under the default bound: %d %v", len(s), err)
		}
		c.CloseIdleConnections()
	}
}

func TestConnectError(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	c := unixhttp.New(sock, unixhttp.Options{DialTimeout: time.Second})
	err := c.Do(context.Background(), http.MethodGet, "/v1/health", nil, nil)
	var ce *unixhttp.ConnectError
	if !errors.Is(err, unixhttp.ErrConnect) || !errors.As(err, &ce) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("no server: %v", err)
	}
}
