package profile_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyfs/lazyfs/fs/profile"
)

func TestPushPullKeepsImageDigest(t *testing.T) {
	for _, referrers := range []bool{true, false} {
		name := "referrers API"
		if !referrers {
			name = "tag fallback"
		}
		t.Run(name, func(t *testing.T) { testPushPull(t, referrers) })
	}
}

func testPushPull(t *testing.T, referrers bool) {
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(referrers)))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	before, err := remote.Head(ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := profile.Pull(ctx, ref.Context(), before.Digest); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Pull before push: %v, want ErrNotFound", err)
	}

	p1 := sample()
	if _, err := profile.Push(ctx, ref.Context(), *before, p1); err != nil {
		t.Fatal(err)
	}
	p2 := sample()
	p2.Spans = append(p2.Spans, profile.Span{Layer: 0, Path: "again", Chunk: 9, N: 2})
	h2, err := profile.Push(ctx, ref.Context(), *before, p2) // recording again replaces it
	if err != nil {
		t.Fatal(err)
	}

	// Again: with the tag fallback, the index lists no deleted referrer
	// (registries refuse an index naming a missing manifest), so a third
	// push still appends to it.
	p3 := sample()
	p3.Spans = append(p3.Spans, profile.Span{Layer: 0, Path: "again", Chunk: 9, N: 2})
	h3, err := profile.Push(ctx, ref.Context(), *before, p3)
	if err != nil {
		t.Fatalf("third push: %v", err)
	}
	if _, err := remote.Get(ref.Context().Digest(h2.String())); err == nil {
		t.Fatalf("the replaced profile %s is still in the registry", h2)
	}
	h2 = h3

	after, err := remote.Head(ref)
	if err != nil {
		t.Fatal(err)
	}
	if after.Digest != before.Digest {
		t.Fatalf("image digest changed: %s -> %s", before.Digest, after.Digest)
	}
	got, desc, err := profile.Pull(ctx, ref.Context(), after.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != h2 {
		t.Fatalf("Pull returned artifact %s, want the newest %s", desc.Digest, h2)
	}
	if len(got.Spans) != 3 || got.Spans[2].Path != "again" {
		t.Fatalf("Pull returned %+v, want the second profile", got.Spans)
	}
	// The artifact names the image as its subject, for any OCI 1.1 client.
	idx, err := remote.Referrers(ref.Context().Digest(before.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	found := false
	for _, d := range im.Manifests {
		found = found || d.Digest == h2
	}
	if !found {
		t.Fatalf("referrers of the image do not list the profile %s: %+v", h2, im.Manifests)
	}
	if referrers && len(im.Manifests) != 1 {
		t.Fatalf("the replaced profile is still listed: %+v", im.Manifests)
	}
	// Another image in the repository has no profile.
	other, _ := random.Image(512, 1)
	od, _ := other.Digest()
	if _, _, err := profile.Pull(ctx, ref.Context(), od); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Pull of an image without profile: %v", err)
	}
}
