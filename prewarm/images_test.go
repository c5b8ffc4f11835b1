package prewarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// fakeWarmer records what it was asked to warm; it fails while failing > 0.
type fakeWarmer struct {
	mu      sync.Mutex
	refs    []string
	failing int
}

func (f *fakeWarmer) Warm(ctx context.Context, ref string) (WarmResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing > 0 {
		f.failing--
		return WarmResult{}, errors.New("cache owner unavailable")
	}
	f.refs = append(f.refs, ref)
	return WarmResult{Digest: ref[strings.LastIndex(ref, "@")+1:], Chunks: 3, Bytes: 3 << 20}, nil
}

func (f *fakeWarmer) warmed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.refs...)
}

func pushRandom(t *testing.T, ref string) v1.Hash {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
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

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestImageKeeperWarmsAndFollowsTag(t *testing.T) {
	host := registrytest.New(t).Host
	ref := host + "/ml/torch:latest"
	d1 := pushRandom(t, ref)

	w := &fakeWarmer{failing: 2}
	mt := NewMetrics()
	k := NewImageKeeper(ImageKeeperConfig{Refs: []string{ref}, Warmer: w, Interval: 10 * time.Millisecond,
		Backoff: time.Millisecond, Metrics: mt})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Two failures, backoff, then the first warm.
	want1 := host + "/ml/torch@" + d1.String()
	waitFor(t, "first warm", func() bool { return len(w.warmed()) >= 1 })
	if got := w.warmed()[0]; got != want1 {
		t.Fatalf("warmed %s, want %s", got, want1)
	}
	if v := metricValue(t, mt, "lazyfs_prewarm_image_warms_total", map[string]string{"ref": ref, "result": "error"}); v != 2 {
		t.Fatalf("error count %v, want 2", v)
	}
	// Unchanged tag: rechecked, not re-warmed.
	time.Sleep(50 * time.Millisecond)
	if n := len(w.warmed()); n != 1 {
		t.Fatalf("unchanged tag warmed %d times", n)
	}
	// Move the tag.
	d2 := pushRandom(t, ref)
	want2 := host + "/ml/torch@" + d2.String()
	waitFor(t, "warm after the tag moved", func() bool { return len(w.warmed()) >= 2 })
	if got := w.warmed()[1]; got != want2 {
		t.Fatalf("warmed %s after the move, want %s", got, want2)
	}
	st := k.Status()
	if len(st) != 1 || st[0].Digest != d2.String() || st[0].Warms != 2 || st[0].LastError != "" || st[0].Chunks != 3 {
		t.Fatalf("status %+v", st)
	}
}

func TestImageKeeperResolveErrorBacksOff(t *testing.T) {
	ref := registrytest.New(t).Host + "/missing:1"
	w := &fakeWarmer{}
	k := NewImageKeeper(ImageKeeperConfig{Refs: []string{ref}, Warmer: w, Interval: time.Millisecond, Backoff: time.Hour})
	if err := k.Check(context.Background(), ref); err == nil {
		t.Fatal("missing image resolved")
	}
	ctx, cancel := context.WithCancel(context.Background())
	go k.Run(ctx)
	waitFor(t, "failure recorded", func() bool { s := k.Status()[0]; return s.Failures >= 2 && !s.NextCheck.IsZero() })
	st := k.Status()[0]
	cancel()
	if st.LastError == "" || time.Until(st.NextCheck) < time.Minute {
		t.Fatalf("after a failure: %+v, want a long backoff", st)
	}
	if len(w.warmed()) != 0 {
		t.Fatal("warmed a missing image")
	}
}

func TestImageKeeperWithoutWarmer(t *testing.T) {
	ref := registrytest.New(t).Host + "/a:1"
	d := pushRandom(t, ref)
	k := NewImageKeeper(ImageKeeperConfig{Refs: []string{ref}})
	if err := k.Check(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	st := k.Status()[0]
	if st.Digest != d.String() || st.LastError != ErrNoWarmer.Error() || st.WarmedAt != nil {
		t.Fatalf("status %+v", st)
	}
}

func TestHTTPWarmer(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "cache.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/v1/warm" {
			http.Error(w, "no", 404)
			return
		}
		json.NewDecoder(r.Body).Decode(&got)
		if got["ref"] == "bad@sha256:00" {
			http.Error(w, "profile missing", 500)
			return
		}
		fmt.Fprint(w, `{"digest":"sha256:aa","chunks":7,"bytes":1024}`)
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	w := &HTTPWarmer{Socket: sock, Whole: true}
	r, err := w.Warm(context.Background(), "reg/x@sha256:aa")
	if err != nil || r.Chunks != 7 || r.Bytes != 1024 {
		t.Fatalf("%+v %v", r, err)
	}
	if got["whole"] != true || got["ref"] != "reg/x@sha256:aa" {
		t.Fatalf("request %v", got)
	}
	if _, err := w.Warm(context.Background(), "bad@sha256:00"); err == nil || !strings.Contains(err.Error(), "profile missing") {
		t.Fatalf("error %v", err)
	}
}
