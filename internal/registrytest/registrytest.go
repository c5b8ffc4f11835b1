// Package registrytest is the one in-process registry fixture of lazyfs's
// tests: go-containerregistry's registry on httptest with blobs on disk (as
// a real registry keeps them; the in-memory handler copies a whole blob per
// range request), request counters, a middleware hook for fault injection,
// a read-only variant (pushes answered 405, as a pull-through mirror) and a
// host that never answers. Image-building helpers on top of it live with
// the packages that own the formats (fs/image/imagetest for lazy images).
package registrytest

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is an in-process registry on 127.0.0.1 that counts the requests
// it answers.
type Registry struct {
	// Host is HOST:PORT, for references like Host+"/repo:tag" (plain HTTP:
	// clients treat 127.0.0.1 as insecure by default).
	Host string
	// URL is http://HOST:PORT.
	URL string
	// Manifests counts GET/HEAD requests of manifests; Blobs counts GETs of blobs.
	Manifests, Blobs atomic.Int64
	// Referrers counts GETs of the OCI referrers API (/v2/NAME/referrers/DIGEST).
	Referrers atomic.Int64
}

type options struct {
	wrap     func(http.Handler) http.Handler
	readOnly bool
}

// Option configures New.
type Option func(*options)

// WithMiddleware wraps the registry's handler (after the counters), e.g. to
// inject faults or measure bytes per repository.
func WithMiddleware(f func(next http.Handler) http.Handler) Option {
	return func(o *options) { o.wrap = f }
}

// ReadOnly answers every request but GET and HEAD with 405, as a
// pull-through mirror does.
func ReadOnly() Option { return func(o *options) { o.readOnly = true } }

// New starts a registry that is closed when the test ends.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	r := &Registry{}
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)),
		registry.WithBlobHandler(registry.NewDiskBlobHandler(t.TempDir())))
	if o.wrap != nil {
		h = o.wrap(h)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case strings.Contains(req.URL.Path, "/manifests/") && req.Method != http.MethodPut:
			r.Manifests.Add(1)
		case strings.Contains(req.URL.Path, "/blobs/sha256:") && req.Method == http.MethodGet:
			r.Blobs.Add(1)
		case strings.Contains(req.URL.Path, "/referrers/") && req.Method == http.MethodGet:
			r.Referrers.Add(1)
		}
		if o.readOnly && req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			io.WriteString(w, `{"errors":[{"code":"UNSUPPORTED","message":"read-only registry"}]}`)
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// Ref is Host+"/"+repoTag.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// PushTars pushes an image whose layers are the given uncompressed tars
// (bottom first; gzip-compressed on the way) to ref and returns its digest.
func PushTars(t testing.TB, ref string, tars ...[]byte) v1.Hash {
	t.Helper()
	img := empty.Image
	for _, b := range tars {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return Push(t, ref, img)
}

// Push pushes img to ref and returns its digest.
func Push(t testing.TB, ref string, img v1.Image) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Hung is a server that accepts connections and never answers, as a
// registry hung behind a load balancer: clients must give up through their
// context or deadlines.
type Hung struct {
	// Host is HOST:PORT.
	Host string
	// Connected is closed once the first client has connected: the client
	// is then waiting on the registry.
	Connected <-chan struct{}
}

// Silent starts a Hung server, closed when the test ends.
func Silent(t testing.TB) *Hung {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	connected := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if len(conns) == 0 {
				close(connected)
			}
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return &Hung{Host: ln.Addr().String(), Connected: connected}
}
