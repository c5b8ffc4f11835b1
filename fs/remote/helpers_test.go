package remote

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/goleak"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// layer is a converted test layer.
type layer struct {
	blob  []byte
	res   *toc.Result
	files []toctest.File
}

func newLayer(t testing.TB, files []toctest.File, chunk int) *layer {
	t.Helper()
	blob, res := toctest.Convert(t, toctest.Tar(t, files), toc.WithChunkSize(chunk))
	return &layer{blob: blob, res: res, files: files}
}

// allTypesLayer is the toctest corpus with a big file of 12 chunks of 64 KiB.
func allTypesLayer(t testing.TB) *layer { return newLayer(t, toctest.AllTypes(12*64<<10), 64<<10) }

// want returns the uncompressed bytes of every chunk, by index in TOC.Chunks.
func (l *layer) want(t testing.TB) [][]byte {
	t.Helper()
	out := make([][]byte, len(l.res.TOC.Chunks))
	for i, c := range l.res.TOC.Chunks {
		d, err := toc.DecodeChunk(&c, l.blob[c.CompressedOffset:c.CompressedOffset+int64(c.CompressedSize)], nil)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

func (l *layer) digest() v1.Hash { h, _ := v1.NewHash(l.res.Digest.String()); return h }

// testTransport is used by the test's own ggcr pushes; closed in cleanup.
func pushTransport(t testing.TB) http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// newRegistry starts an in-process registry behind wrap (which may be nil).
func newRegistry(t testing.TB, wrap func(http.Handler) http.Handler, opts ...registry.Option) (*httptest.Server, string) {
	t.Helper()
	var h http.Handler = registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, strings.TrimPrefix(srv.URL, "http://")
}

// push writes an image made of layers (with their lazyfs annotations) to host/repo:tag.
func push(t testing.TB, host, repoTag string, layers ...*layer) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range layers {
		sl := static.NewLayer(l.blob, types.MediaType(toc.MediaTypeLayer))
		img, err = mutate.Append(img, mutate.Addendum{Layer: sl, Annotations: l.res.Annotations(), MediaType: types.MediaType(toc.MediaTypeLayer)})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := ggcrremote.Write(ref, img, ggcrremote.WithTransport(pushTransport(t))); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

func repoOf(t testing.TB, host, repo string) name.Repository {
	t.Helper()
	r, err := name.NewRepository(host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newFetcher returns a fetcher with fast retries, closed at cleanup.
func newFetcher(t testing.TB, opts ...Option) *Fetcher {
	f := New(append([]Option{WithRetry(5, time.Millisecond, 10*time.Second), WithStallTimeout(2 * time.Second)}, opts...)...)
	t.Cleanup(func() { f.Close() })
	return f
}

// fetchAll fetches chunks and returns copies of the delivered bytes by index.
func fetchAll(ctx context.Context, b *Blob, chunks []toc.Chunk) ([][]byte, error) {
	out := make([][]byte, len(chunks))
	var mu sync.Mutex
	err := b.FetchChunks(ctx, chunks, func(i int, data []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if out[i] != nil {
			return io.ErrShortWrite // delivered twice: a bug
		}
		out[i] = bytes.Clone(data)
		return nil
	})
	return out, err
}

// faults wraps a handler and injects faults into blob GETs, consuming the
// configured counts in order: status codes, resets, mid-body resets, stalls, corruptions.
type faults struct {
	next http.Handler

	mu          sync.Mutex
	statuses    []int
	retryAfter  string
	resets      int
	midResets   int
	stalls      int
	stallFor    time.Duration
	corrupt     int
	corruptAt   int64
	ignoreRange bool
	trickle     time.Duration // pause before every body write (a slow but live body)
	latency     time.Duration
	gate        chan struct{}
	ranges      []string

	blobGets, requests    atomic.Int64
	inflight, maxInflight atomic.Int64
}

func (f *faults) wrap(h http.Handler) http.Handler { f.next = h; return f }

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}

func (f *faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if !isBlobGet(r) {
		f.next.ServeHTTP(w, r)
		return
	}
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		m := f.maxInflight.Load()
		if n <= m || f.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	f.blobGets.Add(1)
	f.mu.Lock()
	f.ranges = append(f.ranges, r.Header.Get("Range"))
	lat, gate := f.latency, f.gate
	f.mu.Unlock()
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-r.Context().Done():
			return
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	var status int
	var reset, mid, stall, corrupt bool
	switch {
	case len(f.statuses) > 0:
		status, f.statuses = f.statuses[0], f.statuses[1:]
	case f.resets > 0:
		f.resets--
		reset = true
	case f.midResets > 0:
		f.midResets--
		mid = true
	case f.stalls > 0:
		f.stalls--
		stall = true
	case f.corrupt > 0:
		f.corrupt--
		corrupt = true
	}
	if f.ignoreRange {
		r.Header.Del("Range")
	}
	stallFor, corruptAt, retryAfter, trickle := f.stallFor, f.corruptAt, f.retryAfter, f.trickle
	f.mu.Unlock()
	switch {
	case status != 0:
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, "injected fault", status)
	case reset:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST instead of FIN
		}
		conn.Close()
	case mid, stall, corrupt, trickle > 0:
		mw := &mangler{ResponseWriter: w, ctx: r.Context(), mid: mid, stall: stall, corrupt: corrupt, stallFor: stallFor, at: corruptAt, trickle: trickle}
		f.next.ServeHTTP(mw, r)
	default:
		f.next.ServeHTTP(w, r)
	}
}

func (f *faults) set(fn func(f *faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faults) rangesSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ranges...)
}

// mangler breaks a response body: aborts or stalls it halfway, or flips a byte.
type mangler struct {
	http.ResponseWriter
	ctx                 context.Context
	mid, stall, corrupt bool
	stallFor, trickle   time.Duration
	at                  int64
	written             int64
	half                int64
}

func (m *mangler) WriteHeader(code int) {
	if cl := m.Header().Get("Content-Length"); cl != "" {
		var n int64
		for _, c := range cl {
			n = n*10 + int64(c-'0')
		}
		m.half = n / 2
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *mangler) Write(p []byte) (int, error) {
	if m.trickle > 0 && len(p) > 8<<10 { // 8 KiB at a time, with a pause before each
		total := 0
		for len(p) > 0 {
			n, err := m.Write(p[:min(len(p), 8<<10)])
			total += n
			if err != nil {
				return total, err
			}
			p = p[n:]
		}
		return total, nil
	}
	if m.trickle > 0 {
		m.ResponseWriter.(http.Flusher).Flush()
		select {
		case <-time.After(m.trickle):
		case <-m.ctx.Done():
			return 0, m.ctx.Err()
		}
	}
	if m.corrupt && m.at >= m.written && m.at < m.written+int64(len(p)) {
		p = bytes.Clone(p)
		p[m.at-m.written] ^= 0x5a
	}
	if (m.mid || m.stall) && m.written+int64(len(p)) > m.half {
		k := m.half - m.written
		n, _ := m.ResponseWriter.Write(p[:k])
		m.written += int64(n)
		m.ResponseWriter.(http.Flusher).Flush()
		if m.mid {
			panic(http.ErrAbortHandler)
		}
		m.stall = false
		select {
		case <-time.After(m.stallFor):
		case <-m.ctx.Done():
			return n, m.ctx.Err()
		}
		p = p[k:]
	}
	n, err := m.ResponseWriter.Write(p)
	m.written += int64(n)
	return n, err
}

// pushIndex writes an index of the given per-arch manifests (by digest, already pushed).
func pushIndex(t testing.TB, host, repoTag string, archs map[string]v1.Hash) string {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var adds []mutate.IndexAddendum
	for arch, d := range archs {
		img, err := ggcrremote.Image(ref.Context().Digest(d.String()), ggcrremote.WithTransport(pushTransport(t)))
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	if err := ggcrremote.WriteIndex(ref, idx, ggcrremote.WithTransport(pushTransport(t))); err != nil {
		t.Fatal(err)
	}
	return ref.String()
}

func urlParse(s string) (*url.URL, error) { return url.Parse(s) }

var timeNowForFuzz = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
