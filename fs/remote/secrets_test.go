package remote

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestRedirectDropsHostsHeaders: headers from hosts.toml go to the
// registry host only; a redirect to another host (blob storage) carries
// none of them, as net/http already does for Authorization.
func TestRedirectDropsHostsHeaders(t *testing.T) {
	l := allTypesLayer(t)
	rb := &redirBlobs{mem: registry.NewInMemoryBlobHandler()}
	var storageGets, leaks atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageGets.Add(1)
		if r.Header.Get("X-Registry-Token") != "" || r.Header.Get("X-Other") != "" || r.Header.Get("Authorization") != "" {
			leaks.Add(1)
		}
		h, _ := v1.NewHash(strings.TrimPrefix(r.URL.Path, "/"))
		rc, err := rb.mem.Get(r.Context(), "", h)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		data, _ := io.ReadAll(rc)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer storage.Close()
	rb.storage = storage.URL
	var regSaw atomic.Int64
	_, host := newRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && r.Header.Get("X-Registry-Token") == "s3cret" {
				regSaw.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}, registry.WithBlobHandler(rb))
	push(t, host, "lazy/img:v1", l)
	rb.on.Store(true)
	dir := t.TempDir()
	writeHosts(t, dir, host, fmt.Sprintf(`
server = "http://%s"
[header]
  X-Registry-Token = "s3cret"
  X-Other = ["a", "b"]
`, host))
	f := newFetcher(t, WithHostsDir(dir))
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	if _, err := fetchAll(context.Background(), b, l.res.TOC.Chunks[:1]); err != nil {
		t.Fatal(err)
	}
	if regSaw.Load() == 0 || storageGets.Load() == 0 {
		t.Fatalf("registry saw the header %d times, storage GETs %d: the test did not redirect", regSaw.Load(), storageGets.Load())
	}
	if n := leaks.Load(); n != 0 {
		t.Errorf("%d requests to the storage host carried the registry's hosts.toml headers", n)
	}
}

// TestErrorsRedactSignedURLs: a network error on a redirected, signed URL
// names the host and path but not the query (signatures, tokens), in the
// error and in the log.
func TestErrorsRedactSignedURLs(t *testing.T) {
	l := allTypesLayer(t)
	rb := &redirBlobs{mem: registry.NewInMemoryBlobHandler()}
	// Storage that resets every connection: the error comes from net/http
	// (a *url.Error holding the whole URL).
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer storage.Close()
	rb.storage = storage.URL
	_, host := newRegistry(t, nil, registry.WithBlobHandler(rb))
	push(t, host, "lazy/img:v1", l)
	rb.on.Store(true)
	var logs bytes.Buffer
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logs, mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := newFetcher(t, WithRetry(2, time.Millisecond, 5*time.Second), WithLogger(logger))
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	_, err := fetchAll(context.Background(), b, l.res.TOC.Chunks[:1])
	if err == nil {
		t.Fatal("fetch through a resetting storage host succeeded")
	}
	<-mu
	logged := logs.String()
	mu <- struct{}{}
	for _, secret := range []string{"X-Amz-Signature", "X-Amz-Date", "gen="} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the signed query (%s): %v", secret, err)
		}
		if strings.Contains(logged, secret) {
			t.Errorf("log shows the signed query (%s):\n%s", secret, logged)
		}
	}
	if !strings.Contains(err.Error(), strings.TrimPrefix(storage.URL, "http://")) {
		t.Errorf("error does not name the storage host: %v", err)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu chan struct{}
}

func (w lockedWriter) Write(p []byte) (int, error) {
	<-w.mu
	defer func() { w.mu <- struct{}{} }()
	return w.w.Write(p)
}

// FuzzRedactURL: whatever a registry puts in a redirect, the redacted form
// keeps nothing after the first '?' or '#' and no user info.
func FuzzRedactURL(f *testing.F) {
	for _, s := range []string{
		"https://bucket.s3.amazonaws.com/blob?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
		"https://user:pass@cdn.example/blob?sig=x&se=2026-01-01T00:00:00Z",
		"http://[::1]:5000/v2/x/blobs/sha256:00?token=t#frag",
		"%zz?token=secret", "no-scheme?token=secret", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := redactString(s)
		q := strings.Count(got, "?")
		if strings.Contains(got, "#") || q > 1 || (q == 1 && !strings.HasSuffix(got, "?REDACTED")) {
			t.Fatalf("redact(%q) = %q keeps a query or fragment", s, got)
		}
		if u, err := url.Parse(s); err == nil && u.User != nil {
			if p, ok := u.User.Password(); ok && len(p) >= 4 && strings.Contains(got, p) && !strings.Contains(u.Host+u.EscapedPath(), p) {
				t.Fatalf("redact(%q) = %q keeps the password", s, got)
			}
		}
	})
}
