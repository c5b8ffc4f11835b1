package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/toc"
)

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: k.user, Password: k.pass}), nil
}

// tokenAuth is a registry front that demands bearer tokens from its own
// token endpoint; expire() invalidates every token issued so far.
type tokenAuth struct {
	next        http.Handler
	realm       string
	noChallenge bool // answer expired tokens with a bare 401 (no WWW-Authenticate)

	mu     sync.Mutex
	gen    int
	issued atomic.Int64
}

func (a *tokenAuth) expire() { a.mu.Lock(); a.gen++; a.mu.Unlock() }

func (a *tokenAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	tok := fmt.Sprintf("tok-%d", a.gen)
	a.mu.Unlock()
	if r.URL.Path == "/token" {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		a.issued.Add(1)
		fmt.Fprintf(w, `{"token": %q, "expires_in": 300}`, tok)
		return
	}
	got := r.Header.Get("Authorization")
	if got != "Bearer "+tok {
		if !(a.noChallenge && strings.HasPrefix(got, "Bearer ")) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test"`, a.realm))
		}
		http.Error(w, "token required", http.StatusUnauthorized)
		return
	}
	a.next.ServeHTTP(w, r)
}

// Tokens that expire during a long-lived mount are refreshed and the read succeeds.
func TestAuthTokenExpiry(t *testing.T) {
	for _, noChallenge := range []bool{false, true} {
		t.Run(fmt.Sprintf("challenge=%v", !noChallenge), func(t *testing.T) {
			l := allTypesLayer(t)
			_, host := newRegistry(t, nil)
			push(t, host, "lazy/img:v1", l)
			a := &tokenAuth{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.URL.Host = host
				proxy(t, host).ServeHTTP(w, r)
			}), noChallenge: noChallenge}
			srv := httptest.NewServer(a)
			defer srv.Close()
			a.realm = srv.URL + "/token"
			phost := strings.TrimPrefix(srv.URL, "http://")

			f := newFetcher(t, WithKeychain(staticKeychain{"alice", "s3cret"}))
			ctx := context.Background()
			img, err := f.Resolve(ctx, phost+"/lazy/img:v1", nil)
			if err != nil {
				t.Fatal(err)
			}
			b := f.LayerBlob(img, 0)
			want := l.want(t)
			chunks := l.res.TOC.Chunks
			for i := range chunks {
				if i%4 == 0 {
					a.expire()
				}
				got, err := fetchAll(ctx, b, chunks[i:i+1])
				if err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
				if !bytes.Equal(got[0], want[i]) {
					t.Fatalf("chunk %d differs", i)
				}
			}
			if n := a.issued.Load(); n < 3 {
				t.Errorf("%d tokens issued, want a refresh after each expiry", n)
			}
			if st := f.Stats(); noChallenge && st.AuthRefreshes == 0 {
				t.Errorf("no credential rebuild counted: %+v", st)
			}
		})
	}
}

func TestAuthBadCredentials(t *testing.T) {
	_, host := newRegistry(t, nil)
	a := &tokenAuth{next: proxy(t, host)}
	srv := httptest.NewServer(a)
	defer srv.Close()
	a.realm = srv.URL + "/token"
	f := newFetcher(t, WithKeychain(staticKeychain{"alice", "wrong"}))
	_, err := f.Resolve(context.Background(), strings.TrimPrefix(srv.URL, "http://")+"/lazy/img:v1", nil)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrUnauthorized", err)
	}
}

// proxy forwards requests to the registry at host (a reverse proxy).
func proxy(t testing.TB, host string) http.Handler {
	tr := pushTransport(t)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+host+r.URL.RequestURI(), r.Body)
		for k, vs := range r.Header {
			if k != "Authorization" {
				out.Header[k] = vs
			}
		}
		out.ContentLength = r.ContentLength
		resp, err := tr.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
}

// redirBlobs redirects blob GETs to a storage server once on is set.
type redirBlobs struct {
	mem     registry.BlobHandler
	on      atomic.Bool
	gen     atomic.Int64
	storage string
}

func (r *redirBlobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	if r.on.Load() {
		loc := fmt.Sprintf("%s/%s?gen=%d&X-Amz-Date=%s&X-Amz-Expires=600&X-Amz-Signature=x",
			r.storage, h, r.gen.Load(), time.Now().UTC().Format("20060102T150405Z"))
		return nil, registry.RedirectError{Location: loc, Code: http.StatusTemporaryRedirect}
	}
	return r.mem.Get(ctx, repo, h)
}

func (r *redirBlobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return r.mem.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

// Redirects to blob storage are followed, the storage URL is reused for
// later ranges, and a refused (expired) URL sends the fetcher back to the registry.
func TestRedirectCache(t *testing.T) {
	l := allTypesLayer(t)
	rb := &redirBlobs{mem: registry.NewInMemoryBlobHandler()}
	var storageGets, authLeaks atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageGets.Add(1)
		if r.Header.Get("Authorization") != "" {
			authLeaks.Add(1)
		}
		if r.URL.Query().Get("gen") != fmt.Sprint(rb.gen.Load()) {
			http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
			return
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
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap, registry.WithBlobHandler(rb))
	push(t, host, "lazy/img:v1", l)
	rb.on.Store(true)

	f := newFetcher(t, WithMaxGap(0), WithMaxRequestSize(64<<10))
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	want := l.want(t)
	fetch := func(i int) {
		t.Helper()
		got, err := fetchAll(context.Background(), b, l.res.TOC.Chunks[i:i+1])
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if !bytes.Equal(got[0], want[i]) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	fetch(0)
	fetch(1)
	fetch(2)
	if g, s := fl.blobGets.Load(), storageGets.Load(); g != 1 || s != 3 {
		t.Errorf("registry blob GETs %d (want 1), storage GETs %d (want 3)", g, s)
	}
	st := f.Stats()
	if st.Redirects != 1 || st.RedirectReuses != 2 {
		t.Errorf("stats %+v", st)
	}
	rb.gen.Add(1) // the cached URL now answers 403
	fetch(3)
	fetch(4)
	if g := fl.blobGets.Load(); g != 2 {
		t.Errorf("registry blob GETs %d after expiry, want 2", g)
	}
	if st := f.Stats(); st.Errors != 0 || st.Redirects != 2 {
		t.Errorf("stats after expiry %+v", st)
	}
	if n := authLeaks.Load(); n != 0 {
		t.Errorf("%d requests carried Authorization to blob storage", n)
	}
}

func TestRedirectExpiry(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ttl := 5 * time.Minute
	for _, tc := range []struct {
		q    string
		want time.Time
	}{
		{"", now.Add(ttl)},
		{"X-Amz-Date=20260102T030000Z&X-Amz-Expires=1200", now.Add(15*time.Minute - 5*time.Second)}, // expires 03:20:00, minus 1 min margin,
		{"X-Goog-Date=20260102T030405Z&X-Goog-Expires=60", now.Add(54 * time.Second)},               // margin: 10% of the time left,
		{"Expires=" + fmt.Sprint(now.Add(10*time.Minute).Unix()), now.Add(9 * time.Minute)},
		{"se=2026-01-02T03:34:05Z&sig=abc", now.Add(29 * time.Minute)},
		{"X-Amz-Expires=bogus", now.Add(ttl)},
		{"Expires=" + fmt.Sprint(now.Add(48*time.Hour).Unix()), now.Add(time.Hour)},
	} {
		u, _ := urlParse("https://bucket.s3.example/blob?" + tc.q)
		if got := redirectExpiry(u, now, ttl); !got.Equal(tc.want) {
			t.Errorf("%q: %v, want %v", tc.q, got, tc.want)
		}
	}
}

// rotatingKeychain returns the current password; the test rotates it.
type rotatingKeychain struct{ pass *atomic.Value }

func (k rotatingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: "bob", Password: k.pass.Load().(string)}), nil
}

// A Basic-auth registry whose password rotates mid-mount: the 401 rebuilds
// the credentials from the keychain once and the read succeeds.
func TestAuthBasicRotation(t *testing.T) {
	l := allTypesLayer(t)
	_, host := newRegistry(t, nil)
	push(t, host, "lazy/img:v1", l)
	var serverPass, keyPass atomic.Value
	serverPass.Store("one")
	keyPass.Store("one")
	backend := proxy(t, host)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != serverPass.Load().(string) {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	defer srv.Close()
	phost := strings.TrimPrefix(srv.URL, "http://")
	f := newFetcher(t, WithKeychain(rotatingKeychain{&keyPass}))
	b := f.Blob(repoOf(t, phost, "lazy/img"), l.digest(), l.res.Size)
	want := l.want(t)
	for i, c := range l.res.TOC.Chunks[:4] {
		if i == 2 {
			serverPass.Store("two")
			keyPass.Store("two")
		}
		got, err := fetchAll(context.Background(), b, []toc.Chunk{c})
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if !bytes.Equal(got[0], want[i]) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	if st := f.Stats(); st.AuthRefreshes != 1 {
		t.Errorf("auth refreshes %d, want 1", st.AuthRefreshes)
	}
	// Revoked for good: a clear ErrUnauthorized after one rebuild.
	serverPass.Store("three")
	_, err := fetchAll(context.Background(), b, l.res.TOC.Chunks[5:6])
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), l.digest().String()) {
		t.Fatalf("err = %v, want ErrUnauthorized naming the blob", err)
	}
}

// A registry with a public-looking name speaks plain HTTP only with WithInsecure.
func TestInsecure(t *testing.T) {
	l := allTypesLayer(t)
	_, host := newRegistry(t, nil)
	push(t, host, "lazy/img:v1", l)
	_, port, _ := strings.Cut(host, ":")
	dialer := &net.Dialer{}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasPrefix(addr, "registry.example.test:") {
			addr = "127.0.0.1:" + port
		}
		return dialer.DialContext(ctx, network, addr)
	}
	defer tr.CloseIdleConnections()
	ref := "registry.example.test:" + port + "/lazy/img:v1"
	strict := New(WithTransport(tr))
	defer strict.Close()
	if _, err := strict.Resolve(context.Background(), ref, nil); err == nil {
		t.Fatal("plain HTTP used without WithInsecure")
	} else if st := strict.Stats(); st.Retries != 0 {
		t.Errorf("a plain-HTTP answer to TLS was retried %d times (%v)", st.Retries, err)
	}
	f := New(WithTransport(tr), WithInsecure(true))
	defer f.Close()
	img, err := f.Resolve(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A repository parsed without name.Insecure still gets plain HTTP.
	repo, _ := name.NewRepository("registry.example.test:" + port + "/lazy/img")
	if _, err := fetchAll(context.Background(), f.Blob(repo, img.Layers[0].Digest, img.Layers[0].Size), l.res.TOC.Chunks); err != nil {
		t.Fatal(err)
	}
}
