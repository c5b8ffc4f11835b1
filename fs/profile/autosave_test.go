package profile_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/profile"
)

// waitStored polls s until image has a stored profile for which ok holds,
// or the test's own deadline passes (no wall-clock assertion).
func waitStored(t *testing.T, s *profile.Store, image digest.Digest, ok func(*profile.Profile) bool) *profile.Profile {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if p, err := s.Load(image); err == nil && ok(p) {
			return p
		}
		select {
		case <-ctx.Done():
			t.Fatal("the recorder's profile was never saved")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestAutosave: a recorder's profile is saved without anyone stopping it
// (what a killed process leaves): after an idle pause, and, when reads
// never pause, at the interval; a recorder that recorded nothing saves
// nothing; after stop nothing more is saved.
func TestAutosave(t *testing.T) {
	img := digest.FromString("image")
	layers := []profile.LayerInfo{{Digest: digest.FromString("l0").String(), Chunks: 100}}
	for name, o := range map[string]profile.AutosaveOptions{
		"idle":     {Idle: 20 * time.Millisecond, Interval: time.Hour},
		"interval": {Idle: time.Hour, Interval: 20 * time.Millisecond},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := profile.NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			rec := profile.NewRecorder(img.String(), layers)
			stop := profile.Autosave(s, img, rec, o, func(err error) { t.Error(err) })
			defer stop()
			rec.Record(0, "bin/app", 0, 3)
			waitStored(t, s, img, func(p *profile.Profile) bool { return p.Chunks() == 3 })
			rec.Record(0, "lib/a.so", 10, 12)
			p := waitStored(t, s, img, func(p *profile.Profile) bool { return p.Chunks() == 5 })
			if !slices.Equal(p.Paths(), []string{"bin/app", "lib/a.so"}) {
				t.Fatalf("saved %v", p.Paths())
			}
			stop()
			rec.Record(0, "late", 50, 51)
			if p, err := s.Load(img); err != nil || p.Chunks() != 5 {
				t.Fatalf("after stop: %v %v, want the 5 chunks saved before it", p, err)
			}
		})
	}
	s, _ := profile.NewStore(t.TempDir())
	stop := profile.Autosave(s, img, profile.NewRecorder(img.String(), layers), profile.AutosaveOptions{Idle: time.Millisecond, Interval: time.Millisecond}, nil)
	time.Sleep(50 * time.Millisecond) // ticks that find nothing recorded
	stop()
	if _, err := s.Load(img); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("a recorder that recorded nothing saved: %v", err)
	}
}
