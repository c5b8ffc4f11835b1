package bench

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestProfileTag(t *testing.T) {
	py := &Workload{Cmd: []string{"python3", "-c", "import numpy"}}
	all := &Workload{Cmd: []string{"python3", "-c", "read all"}}
	split := &Workload{Cmd: []string{"python3 -c", "import numpy"}}
	ready := &Workload{Cmd: py.Cmd, ReadyLine: regexp.MustCompile("ready")}
	tags := map[string]string{}
	for what, tag := range map[string]string{
		"base":            profileTag("aaaa", py),
		"other binary":    profileTag("bbbb", py),
		"other command":   profileTag("aaaa", all),
		"other arguments": profileTag("aaaa", split),
		"ready line":      profileTag("aaaa", ready),
	} {
		if prev, ok := tags[tag]; ok {
			t.Errorf("%s and %s share the tag %s: one would reuse the other's profile", what, prev, tag)
		}
		tags[tag] = what
		if _, err := name.NewTag("127.0.0.1:5000/bench/python:"+tag, name.StrictValidation); err != nil {
			t.Errorf("%s: tag %q: %v", what, tag, err)
		}
	}
	if profileTag("aaaa", py) != profileTag("aaaa", &Workload{Cmd: slices.Clone(py.Cmd)}) {
		t.Error("profileTag is not stable: the recording would never be reused")
	}
}

func TestRecordArgs(t *testing.T) {
	w := &Workload{Cmd: []string{"python3", "-c", "import torch"}, ReadyLine: regexp.MustCompile("up")}
	got := recordArgs("/bin/lazyfs", "/tmp/c", "reg/x:prof", w)
	want := []string{"/bin/lazyfs", "record", "--insecure", "--cache-dir", "/tmp/c", "--profile-dir=", "--no-profile",
		"--ready-line", "up", "reg/x:prof", "--", "python3", "-c", "import torch"}
	if !slices.Equal(got, want) {
		t.Errorf("recordArgs =\n %q\nwant\n %q", got, want)
	}
}

func TestMountArgs(t *testing.T) {
	got := mountArgs("/c", "/s", "/p", true, "reg/x:lazy", "/mnt")
	want := []string{"mount", "--foreground", "--notify-fd", "3", "--cache-dir", "/c", "--state-dir", "/s", "--profile-dir", "/p", "--insecure", "reg/x:lazy", "/mnt"}
	if !slices.Equal(got, want) {
		t.Errorf("mountArgs =\n %q\nwant\n %q", got, want)
	}
	// A binary without --profile-dir gets no such flag.
	if got := mountArgs("/c", "/s", "", false, "r", "/m"); slices.Contains(got, "--profile-dir") || slices.Contains(got, "--insecure") {
		t.Errorf("mountArgs without a profile dir, secure = %q", got)
	}
}

func TestHelpHasFlag(t *testing.T) {
	help := `Flags:
      --cache-dir string         block cache directory
      --no-profile               prefetch no start-up profile
  -o, --output string            write the profile to this file
      --profile-dir string       start-up profiles learned on this node (default "/var/lib/lazyfs/profiles")
`
	for flag, want := range map[string]bool{"profile-dir": true, "output": true, "no-profile": true, "profile": false, "cache": false, "fill": false} {
		if got := helpHasFlag(help, flag); got != want {
			t.Errorf("helpHasFlag(%q) = %v, want %v", flag, got, want)
		}
	}
}

func TestProfileModes(t *testing.T) {
	for name, want := range map[string]bool{"mount": false, "mount+profile": true, "mount-warm": false, "lazy": false, "lazy+profile": true, "warm": false, "full": false} {
		m, err := ModeByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := usesProfile(m); got != want {
			t.Errorf("usesProfile(%s) = %v, want %v", name, got, want)
		}
	}
}

// TestProfiledCopy checks what keeps the no-profile modes honest and the
// recording cached: the profiled copy has its own digest and the same
// layers, copying again is a no-op, and a referrer on the copy (what
// lazyfs record pushes) is seen on the copy only.
func TestProfiledCopy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	t.Cleanup(func() { reg.Close() })
	ctx := context.Background()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	lazy := reg.Host() + "/bench/python:lazy-aaaa"
	lr, _ := name.ParseReference(lazy, name.Insecure)
	if err := remote.Write(lr, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	lazyDigest, _ := img.Digest()

	d, err := profiledCopy(ctx, lazy, reg.Host()+"/bench/python:prof-python", "python")
	if err != nil {
		t.Fatal(err)
	}
	if d.DigestStr() == lazyDigest.String() {
		t.Fatal("the profiled copy has the converted image's digest: its profile would reach the no-profile modes")
	}
	cp, err := remoteImageInsecure(ctx, d.String())
	if err != nil {
		t.Fatal(err)
	}
	if a, b := mustLayers(t, img), mustLayers(t, cp); !slices.Equal(a, b) {
		t.Errorf("copy layers %v, want %v", b, a)
	}
	other, err := profiledCopy(ctx, lazy, reg.Host()+"/bench/python:prof-readall", "readall")
	if err != nil {
		t.Fatal(err)
	}
	if other.DigestStr() == d.DigestStr() {
		t.Error("two workloads of one image share a digest: their profiles would replace each other")
	}
	// A lazyfs build that converts to the same bytes records its own.
	rebuilt, err := profiledCopy(ctx, lazy, reg.Host()+"/bench/python:prof-python-new", "python-new")
	if err != nil {
		t.Fatal(err)
	}
	if rebuilt.DigestStr() == d.DigestStr() {
		t.Error("two keys share a digest: a new lazyfs build would reuse the old build's profile")
	}
	again, err := profiledCopy(ctx, lazy, reg.Host()+"/bench/python:prof-python", "python")
	if err != nil || again != d {
		t.Errorf("copying again = %v, %v; want %v", again, err, d)
	}

	if ok, err := hasReferrer(ctx, d); err != nil || ok {
		t.Fatalf("hasReferrer before recording = %v, %v", ok, err)
	}
	// What lazyfs record pushes: an artifact whose subject is the copy.
	desc, err := remote.Head(d, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	art = mutate.ConfigMediaType(art, "application/vnd.example.profile")
	art = mutate.Subject(art, v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}).(v1.Image)
	artDigest, _ := art.Digest()
	if err := remote.Write(d.Context().Digest(artDigest.String()), art, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	if ok, err := hasReferrer(ctx, d); err != nil || !ok {
		t.Errorf("hasReferrer after recording = %v, %v; want true (the recording would run again every time)", ok, err)
	}
	if ok, err := hasReferrer(ctx, lr.Context().Digest(lazyDigest.String())); err != nil || ok {
		t.Errorf("hasReferrer on the converted image = %v, %v; want false", ok, err)
	}
	if ok, err := hasReferrer(ctx, other); err != nil || ok {
		t.Errorf("hasReferrer on the other workload's copy = %v, %v; want false", ok, err)
	}
}

func mustLayers(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// TestRecordCached runs Images.Record with stand-in lazyfs binaries: one
// without record (nothing recorded, no error), one whose record fails
// (the error comes back), and, once the copy has a referrer, the cached
// path (record not run again).
func TestRecordCached(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	t.Cleanup(func() { reg.Close() })
	ctx := context.Background()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	refs := ImageRefs{Lazy: reg.Host() + "/bench/python:lazy-aaaa"}
	lr, _ := name.ParseReference(refs.Lazy, name.Insecure)
	if err := remote.Write(lr, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	w := &Workload{Name: "python", Cmd: []string{"python3", "-c", "import numpy"}}
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}

	noRecord := &Images{Lazyfs: script("old", "exit 1\n")}
	if got, err := noRecord.Record(ctx, w, refs); got != "" || err != nil {
		t.Errorf("Record without a record command = %q, %v; want nothing", got, err)
	}

	calls := filepath.Join(dir, "calls")
	failing := &Images{Lazyfs: script("new", `[ "$2" = --help ] && exit 0
echo "$@" >> `+calls+`
echo recording failed >&2
exit 1
`)}
	if _, err := failing.Record(ctx, w, refs); err == nil || !strings.Contains(err.Error(), "recording failed") {
		t.Fatalf("Record with a failing lazyfs record = %v; want its error", err)
	}
	b, _ := os.ReadFile(calls)
	if !strings.Contains(string(b), "record --insecure") || !strings.Contains(string(b), "-- python3 -c import numpy") {
		t.Errorf("lazyfs was called with %q", b)
	}

	// What a successful record leaves: a referrer on the profiled copy.
	tool, err := fileHash(failing.Lazyfs)
	if err != nil {
		t.Fatal(err)
	}
	tag := profileTag(tool, w)
	d, err := profiledCopy(ctx, refs.Lazy, reg.Host()+"/bench/python:"+tag, tag)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(d, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.Subject(mutate.MediaType(empty.Image, types.OCIManifestSchema1), v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}).(v1.Image)
	ad, _ := art.Digest()
	if err := remote.Write(d.Context().Digest(ad.String()), art, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	os.Remove(calls)
	got, err := failing.Record(ctx, w, refs)
	if err != nil || got != reg.Host()+"/bench/python:"+tag {
		t.Errorf("Record with the profile in place = %q, %v; want %s", got, err, tag)
	}
	if b, err := os.ReadFile(calls); err == nil {
		t.Errorf("lazyfs record ran again with the profile in place: %q", b)
	}
}
