package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/registry"
)

func TestParseHostsFile(t *testing.T) {
	data := []byte(`
server = "https://registry.example.com"
capabilities = ["pull", "resolve"]

[host."https://z-first.mirror"]
  capabilities = ["pull"]
  skip_verify = true
  [host."https://z-first.mirror".header]
    x-token = "abc"
    x-multi = ["1", "2"]

[host."http://a-second.mirror:5000/prefix/v2"]
  capabilities = ["pull", "resolve"]
  override_path = true
  ca = ["/etc/ca1.pem", "/etc/ca2.pem"]
  client = [["/etc/c.cert", "/etc/c.key"], "/etc/both.pem"]
`)
	hf, err := ParseHostsFile(data, "https://default")
	if err != nil {
		t.Fatal(err)
	}
	want := &HostsFile{
		Server: HostConfig{URL: "https://registry.example.com", Capabilities: []string{"pull", "resolve"}},
		Hosts: []HostConfig{
			{URL: "https://z-first.mirror", Capabilities: []string{"pull"}, SkipVerify: true,
				Header: http.Header{"X-Token": {"abc"}, "X-Multi": {"1", "2"}}},
			{URL: "http://a-second.mirror:5000/prefix/v2", Capabilities: []string{"pull", "resolve"}, OverridePath: true,
				CA: []string{"/etc/ca1.pem", "/etc/ca2.pem"}, Client: [][]string{{"/etc/c.cert", "/etc/c.key"}, {"/etc/both.pem"}}},
		},
	}
	if diff := cmp.Diff(want, hf); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	// No server: the default origin.
	hf, err = ParseHostsFile([]byte(`[host."https://m"]`), "https://default")
	if err != nil || hf.Server.URL != "https://default" || len(hf.Hosts) != 1 {
		t.Fatalf("%+v %v", hf, err)
	}
	for _, bad := range []string{
		`server = "ftp://x"`,
		`[host."https://m"]` + "\ncapabilities = [\"fly\"]",
		`[host."https://m"]` + "\nca = 3",
		`server = `,
		`client = [["a", "b", "c"]]`,
	} {
		if _, err := ParseHostsFile([]byte(bad), "https://default"); !errors.Is(err, ErrBadHostsConfig) {
			t.Errorf("%q: %v, want ErrBadHostsConfig", bad, err)
		}
	}
}

func FuzzParseHostsFile(f *testing.F) {
	f.Add([]byte(`server = "https://r"` + "\n[host.\"https://m\"]\ncapabilities = [\"pull\"]\n"))
	f.Add([]byte(`host = { "https://m" = { capabilities = ["pull"] } }`))
	f.Fuzz(func(t *testing.T, data []byte) {
		hf, err := ParseHostsFile(data, "https://default")
		if err == nil && hf.Server.URL == "" {
			t.Fatal("no server")
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 5-9/*", "bytes 9-5/10", "bytes -1-2/3", "bytes 0-0/0", "items 0-1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, z, tot, err := parseContentRange(s)
		if err == nil && (a < 0 || z < a || (tot != -1 && tot <= z)) {
			t.Fatalf("%q: accepted %d-%d/%d", s, a, z, tot)
		}
	})
}

func FuzzRedirectExpiry(f *testing.F) {
	f.Add("X-Amz-Date=20260102T030000Z&X-Amz-Expires=1200")
	f.Add("Expires=99999999999999999999")
	f.Add("se=2026-01-02T03:34:05Z&sig=abc")
	f.Fuzz(func(t *testing.T, q string) {
		u, err := urlParse("https://s.example/b?" + q)
		if err != nil {
			return
		}
		now := timeNowForFuzz
		if exp := redirectExpiry(u, now, DefaultRedirectTTL); exp.After(now.Add(61 * 60e9)) {
			t.Fatalf("%q: expiry %v more than an hour ahead", q, exp)
		}
	})
}

func writeHosts(t *testing.T, dir, host, content string) {
	t.Helper()
	p := filepath.Join(dir, host)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Blobs come from the mirror, tags from the origin (the mirror lacks
// "resolve"); a failing or corrupting mirror falls back to the origin.
func TestMirrors(t *testing.T) {
	l := allTypesLayer(t)
	fo := &faults{}
	origin, backend := twoFronts(t, fo)
	push(t, origin, "lazy/img:v1", l)
	fm := &faults{}
	var sawHeader bool
	mirror := httptest.NewServer(fm.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Mirror-Token") == "abc" {
			sawHeader = true
		}
		proxy(t, backend).ServeHTTP(w, r)
	})))
	defer mirror.Close()
	dir := t.TempDir()
	writeHosts(t, dir, origin, fmt.Sprintf(`
server = "http://%s"
[host."%s"]
  capabilities = ["pull"]
  [host."%s".header]
    X-Mirror-Token = "abc"
`, origin, mirror.URL, mirror.URL))

	f := newFetcher(t, WithHostsDir(dir))
	ctx := context.Background()
	img, err := f.Resolve(ctx, origin+"/lazy/img:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if fm.requests.Load() != 0 {
		t.Errorf("tag resolved through a mirror without the resolve capability")
	}
	b := f.LayerBlob(img, 0)
	want := l.want(t)
	check := func(got [][]byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("chunk %d differs", i)
			}
		}
	}
	check(fetchAll(ctx, b, l.res.TOC.Chunks))
	if fm.blobGets.Load() == 0 || fo.blobGets.Load() != 0 || !sawHeader {
		t.Fatalf("mirror blob GETs %d, origin %d, header seen %v", fm.blobGets.Load(), fo.blobGets.Load(), sawHeader)
	}

	// The mirror breaks: the same read falls back to the origin.
	fm.set(func(f *faults) { f.statuses = []int{503} })
	f2 := newFetcher(t, WithHostsDir(dir))
	check(fetchAll(ctx, f2.Blob(img.Repo, img.Layers[0].Digest, img.Layers[0].Size), l.res.TOC.Chunks))
	if st := f2.Stats(); st.MirrorFallbacks != 1 || fo.blobGets.Load() == 0 {
		t.Errorf("after mirror 503: stats %+v, origin blob GETs %d", st, fo.blobGets.Load())
	}
	// The failed mirror is paused: the next read goes straight to the origin.
	mirrorGets := fm.blobGets.Load()
	check(fetchAll(ctx, f2.Blob(img.Repo, img.Layers[0].Digest, img.Layers[0].Size), l.res.TOC.Chunks))
	if fm.blobGets.Load() != mirrorGets {
		t.Errorf("paused mirror was asked again")
	}

	// A mirror serving wrong bytes: verified, rejected, origin serves.
	fm.set(func(f *faults) { f.corrupt = 100; f.corruptAt = 10 })
	f3 := newFetcher(t, WithHostsDir(dir))
	check(fetchAll(ctx, f3.Blob(img.Repo, img.Layers[0].Digest, img.Layers[0].Size), l.res.TOC.Chunks))
	if st := f3.Stats(); st.VerifyFailures == 0 || st.MirrorFallbacks != 1 {
		t.Errorf("corrupt mirror: stats %+v", st)
	}
}

// override_path: the mirror URL is the API root; a mirror without /v2/
// handshake is used without auth.
func TestMirrorOverridePath(t *testing.T) {
	l := allTypesLayer(t)
	fo := &faults{}
	origin, backend := twoFronts(t, fo)
	push(t, origin, "lazy/img:v1", l)
	var mirrorGets int
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/cache/registry")
		if !ok {
			http.NotFound(w, r)
			return
		}
		mirrorGets++
		r.URL.Path = "/v2" + rest
		proxy(t, backend).ServeHTTP(w, r)
	}))
	defer mirror.Close()
	dir := t.TempDir()
	writeHosts(t, dir, "_default", fmt.Sprintf(`
[host."%s/cache/registry"]
  capabilities = ["pull", "resolve"]
  override_path = true
`, mirror.URL))
	f := newFetcher(t, WithHostsDir(dir))
	img, err := f.Resolve(context.Background(), origin+"/lazy/img:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fetchAll(context.Background(), f.LayerBlob(img, 0), l.res.TOC.Chunks); err != nil {
		t.Fatal(err)
	}
	if mirrorGets < 2 || fo.blobGets.Load() != 0 {
		t.Errorf("mirror requests %d, origin blob GETs %d", mirrorGets, fo.blobGets.Load())
	}
}

// twoFronts serves one in-process registry twice: as the origin (behind fo)
// and as a plain backend that mirrors proxy to, so that fo counts only
// requests that reached the origin itself.
func twoFronts(t *testing.T, fo *faults) (origin, backend string) {
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	o := httptest.NewServer(fo.wrap(h))
	t.Cleanup(o.Close)
	b := httptest.NewServer(h)
	t.Cleanup(b.Close)
	return strings.TrimPrefix(o.URL, "http://"), strings.TrimPrefix(b.URL, "http://")
}
