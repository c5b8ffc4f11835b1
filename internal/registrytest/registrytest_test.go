package registrytest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func TestRegistry(t *testing.T) {
	r := New(t)
	img, _ := random.Image(1024, 2)
	d := Push(t, r.Ref("a:1"), img)
	got, err := remote.Get(mustRef(t, r.Ref("a:1")))
	if err != nil || got.Digest != d {
		t.Fatalf("pulled %v, %v; pushed %v", got, err, d)
	}
	if r.Manifests.Load() == 0 {
		t.Error("manifest requests not counted")
	}

	ro := New(t, ReadOnly())
	err = remote.Write(mustRef(t, ro.Ref("a:1")), img)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("push to a read-only registry: %v", err)
	}
}

func TestSilent(t *testing.T) {
	h := Silent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := remote.Get(mustRef(t, h.Host+"/a:1"), remote.WithContext(ctx)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a silent registry answered: %v", err)
	}
	select {
	case <-h.Connected:
	default:
		t.Error("Connected not closed after a client connected")
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
