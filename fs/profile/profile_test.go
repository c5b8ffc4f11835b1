package profile_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/profile"
)

func layerDigest(i int) string {
	return digest.FromString(fmt.Sprint("layer", i)).String()
}

func sample() *profile.Profile {
	return &profile.Profile{
		Image:  digest.FromString("image").String(),
		Layers: []string{layerDigest(0), layerDigest(1)},
		Spans: []profile.Span{
			{Layer: 1, Path: "usr/bin/python3", Chunk: 4, N: 3},
			{Layer: 0, Path: "etc/ld.so.cache", Chunk: 0, N: 1},
		},
	}
}

func TestMarshalParseRoundTrip(t *testing.T) {
	p := sample()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := profile.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	p.MediaType, p.Version = profile.MediaType, profile.Version
	if d := cmp.Diff(p, got); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}
	if got.Chunks() != 4 {
		t.Fatalf("Chunks = %d, want 4", got.Chunks())
	}
}

func TestParseRejects(t *testing.T) {
	good, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	huge := make([]byte, profile.MaxSize+1)
	for i := range huge {
		huge[i] = ' '
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"truncated", good[:len(good)/2], profile.ErrBadProfile},
		{"empty", nil, profile.ErrBadProfile},
		{"garbage", []byte("\x28\xb5\x2f\xfd garbage"), profile.ErrBadProfile},
		{"trailing", append(append([]byte(nil), good...), "{}"...), profile.ErrBadProfile},
		{"oversized", huge, profile.ErrTooLarge},
		{"version 2", bytes.Replace(good, []byte(`"version":1`), []byte(`"version":2`), 1), profile.ErrUnsupportedVersion},
		{"media type", bytes.Replace(good, []byte(`v1+json`), []byte(`v9+json`), 1), profile.ErrBadProfile},
		{"layer index", bytes.Replace(good, []byte(`"l":1`), []byte(`"l":7`), 1), profile.ErrBadProfile},
		{"negative chunk", bytes.Replace(good, []byte(`"c":4`), []byte(`"c":-4`), 1), profile.ErrBadProfile},
		{"zero count", bytes.Replace(good, []byte(`"n":3`), []byte(`"n":0`), 1), profile.ErrBadProfile},
		{"huge count", bytes.Replace(good, []byte(`"n":3`), []byte(`"n":9999999999`), 1), profile.ErrBadProfile},
		{"bad digest", bytes.Replace(good, []byte(`"sha256:`), []byte(`"md5:`), 1), profile.ErrBadProfile},
		{"long path", bytes.Replace(good, []byte(`usr/bin/python3`), []byte(strings.Repeat("a/", profile.MaxPath)), 1), profile.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := profile.Parse(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRecorderOrderAndMerge(t *testing.T) {
	r := profile.NewRecorder("", []profile.LayerInfo{{Digest: layerDigest(0), Chunks: 10}, {Digest: layerDigest(1), Chunks: 10}, {Digest: layerDigest(2), Chunks: 10}})
	r.OnRead(fs.ReadEvent{Layer: 2, Path: "b", FirstChunk: 3, LastChunk: 5})
	r.OnRead(fs.ReadEvent{Layer: 2, Path: "b", FirstChunk: 4, LastChunk: 6}) // 4 seen: extends with 5
	r.OnRead(fs.ReadEvent{Layer: 0, Path: "a", FirstChunk: 0, LastChunk: 1})
	r.OnRead(fs.ReadEvent{Layer: 2, Path: "b", FirstChunk: 3, LastChunk: 6}) // all seen
	r.OnRead(fs.ReadEvent{Layer: 2, Path: "b", FirstChunk: 8, LastChunk: 9})
	r.OnRead(fs.ReadEvent{Layer: 5, Path: "x", FirstChunk: 0, LastChunk: 1})  // no such layer
	r.OnRead(fs.ReadEvent{Layer: 0, Path: "x", FirstChunk: 9, LastChunk: 11}) // beyond the TOC
	p := r.Profile()
	want := &profile.Profile{
		MediaType: profile.MediaType, Version: profile.Version,
		Layers: []string{layerDigest(2), layerDigest(0)}, // layer 1 unused: dropped
		Spans: []profile.Span{
			{Layer: 0, Path: "b", Chunk: 3, N: 3},
			{Layer: 1, Path: "a", Chunk: 0, N: 1},
			{Layer: 0, Path: "b", Chunk: 8, N: 1},
		},
	}
	if d := cmp.Diff(want, p); d != "" {
		t.Fatalf("profile (-want +got):\n%s", d)
	}
	if _, err := p.Marshal(); err != nil {
		t.Fatal(err)
	}
}

func TestStore(t *testing.T) {
	s, err := profile.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := digest.FromString("image")
	if _, err := s.Load(img); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Load of nothing: %v, want ErrNotFound", err)
	}
	p := sample()
	if err := s.Save(img, p); err != nil {
		t.Fatal(err)
	}
	p2 := sample()
	p2.Spans = p2.Spans[:1]
	if err := s.Save(img, p2); err != nil { // replaces
		t.Fatal(err)
	}
	got, err := s.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Spans) != 1 {
		t.Fatalf("Load after replace: %d spans, want 1", len(got.Spans))
	}
	if _, err := s.Load("sha256:../../etc"); err == nil {
		t.Fatal("Load accepted a bad digest")
	}
}

// FuzzParse checks that Parse never panics, that what it accepts is within
// the bounds, and that accepted profiles round-trip.
func FuzzParse(f *testing.F) {
	good, _ := sample().Marshal()
	f.Add(good)
	f.Add(good[:len(good)/3])
	f.Add([]byte(`{"mediaType":"application/vnd.lazyfs.profile.v1+json","version":1,"layers":[],"spans":[]}`))
	f.Add([]byte(`{"version":1,"layers":["sha256:0"],"spans":[{"l":0,"p":"","c":0,"n":1}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := profile.Parse(b)
		if err != nil {
			return
		}
		if len(p.Spans) > profile.MaxSpans || len(p.Layers) > profile.MaxLayers || p.Chunks() > profile.MaxChunks {
			t.Fatalf("accepted an oversized profile")
		}
		for _, s := range p.Spans {
			if s.Layer < 0 || s.Layer >= len(p.Layers) || s.N <= 0 || s.Chunk < 0 {
				t.Fatalf("accepted span %+v", s)
			}
		}
		b2, err := p.Marshal()
		if err != nil {
			t.Fatalf("accepted profile does not marshal: %v", err)
		}
		p2, err := profile.Parse(b2)
		if err != nil {
			t.Fatalf("marshalled profile does not parse: %v", err)
		}
		p.MediaType = profile.MediaType
		if d := cmp.Diff(p, p2); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}
