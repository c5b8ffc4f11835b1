package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyfs/lazyfs/fs/image"
	lremote "github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// TestConvertRecord: convert --record runs the command in the converted
// image, writes its profile into the manifest that DST then names (the
// manifest it was recorded on keeps no tag), inspect shows it, and a cold
// mount of DST prefetches it without asking the registry for referrers. A
// recording that fails leaves DST untagged.
func TestConvertRecord(t *testing.T) {
	needFUSE(t)
	reg := registrytest.New(t)
	src, dst := reg.Ref("bb:1"), reg.Ref("bb:1-lazy")
	pushBusybox(t, src)
	tmp := t.TempDir()
	out, err := run(t, "convert", "--json", "--record", "--cache-dir", "", "--profile-dir", filepath.Join(tmp, "node"), src, dst,
		"--", "sh", "-c", "echo to-stderr; cat /etc/group /srv/data.bin >/dev/null")
	if err != nil {
		t.Fatalf("convert --record: %v\n%s", err, out)
	}
	checkJSONContract(t, out)
	var rep convertJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output (the command's stdout must not be in it): %v\n%s", err, out)
	}
	p := rep.Profile
	if p == nil || p.Files < 3 || p.Chunks < 3 || p.Manifest == p.Recorded || rep.Digest != p.Manifest {
		t.Fatalf("report: %s", out)
	}

	// DST names the manifest carrying the profile, with the same layers as
	// the one recorded on.
	tag, _ := name.NewTag(dst)
	desc, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != p.Manifest {
		t.Fatalf("%s names %s, want the manifest carrying the profile %s", dst, desc.Digest, p.Manifest)
	}
	img, _ := desc.Image()
	m, _ := img.Manifest()
	if m.Annotations[toc.AnnotationProfileDigest] != p.Blob || m.Annotations[toc.AnnotationProfileSize] != strconv.FormatInt(p.Size, 10) {
		t.Fatalf("manifest annotations %v, want the profile blob %s", m.Annotations, p.Blob)
	}
	rd, err := remote.Image(tag.Context().Digest(p.Recorded))
	if err != nil {
		t.Fatal(err)
	}
	rm, _ := rd.Manifest()
	if len(rm.Layers) != len(m.Layers) || rm.Layers[0].Digest != m.Layers[0].Digest {
		t.Fatal("the manifest carrying the profile has other layers than the one it was recorded on")
	}
	if got := inspect(t, dst); got.ProfileIn != "manifest" || got.Profile != p.Blob || got.ProfileFiles != p.Files || got.ProfileChunks != p.Chunks {
		t.Fatalf("inspect: %+v, want the manifest's profile %s", got, p.Blob)
	}

	// A cold mount of DST on a node that learned nothing prefetches it.
	lookups := reg.Referrers.Load()
	report := filepath.Join(tmp, "report.json")
	if _, err := run(t, "run", "--cache-dir", "", "--profile-dir", filepath.Join(tmp, "fresh"), "--report", report, dst, "--", "cat", "/etc/passwd"); err != nil {
		t.Fatal(err)
	}
	var rr runReport
	b, _ := os.ReadFile(report)
	if err := json.Unmarshal(b, &rr); err != nil {
		t.Fatal(err)
	}
	if rr.ProfileSource != "registry" || rr.Prefetch == nil || rr.Prefetch.ProfileChunks != int64(p.Chunks) {
		t.Fatalf("cold run of %s: %s, want its manifest's %d profile chunks prefetched", dst, b, p.Chunks)
	}
	if got := reg.Referrers.Load() - lookups; got != 0 {
		t.Fatalf("the cold run asked the registry for referrers %d times: the manifest's profile comes first", got)
	}

	// --profile-dir "": the node learns nothing (not into the default
	// directory either), and the registry's profile is still prefetched.
	before, _ := os.ReadDir(defaultProfileDir)
	if _, err := run(t, "run", "--cache-dir", "", "--profile-dir", "", "--report", report, dst, "--", "cat", "/etc/passwd"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(report)
	rr = runReport{}
	if err := json.Unmarshal(b, &rr); err != nil {
		t.Fatal(err)
	}
	if rr.ProfileSource != "registry" || rr.Prefetch == nil || rr.Prefetch.ProfileChunks != int64(p.Chunks) {
		t.Fatalf("cold run of %s with --profile-dir \"\": %s, want its manifest's %d profile chunks prefetched", dst, b, p.Chunks)
	}
	if after, _ := os.ReadDir(defaultProfileDir); len(after) != len(before) {
		t.Fatalf("run --profile-dir \"\" stored a profile in %s: %d entries, %d before", defaultProfileDir, len(after), len(before))
	}

	// Through a daemon (no fill): the mount of DST prefetches the whole
	// profile, after which the recorded files read without a blob request.
	n, err := node.New(context.Background(), node.Config{Root: filepath.Join(tmp, "root"), CacheDir: node.MemoryCache, CacheSize: 1 << 30,
		Fetcher: lremote.New(), Profiles: node.ProfileConfig{NoFill: true, Registry: true}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(tmp, "run", "control.sock")
	ln, err := node.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); node.ServeListener(ctx, ln, n.Handler()) }()
	t.Cleanup(func() { cancel(); <-served; n.Close() })
	mnt := filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	lookups = reg.Referrers.Load()
	if out, err := run(t, "mount", "--control", sock, dst, mnt); err != nil {
		t.Fatalf("mount: %q %v", out, err)
	}
	defer run(t, "umount", "--control", sock, mnt)
	var st image.Stats
	deadline, cancelWait := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelWait()
	for st.Prefetch == nil || st.Prefetch.Phase != "done" {
		out, err := run(t, "stats", "--json", "--control", sock, mnt)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		select {
		case <-deadline.Done():
			t.Fatalf("the profile prefetch never finished: %s", out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if pf := st.Prefetch; st.ProfileSource != "registry" || pf.ProfileChunks != int64(p.Chunks) || pf.ProfileLocal != pf.ProfileChunks || pf.Ignored != 0 {
		t.Fatalf("mount of %s: profile %q %+v, want its manifest's %d chunks, all local", dst, st.ProfileSource, pf, p.Chunks)
	}
	if got := reg.Referrers.Load() - lookups; got != 0 {
		t.Fatalf("the mount asked the registry for referrers %d times", got)
	}
	blobs := reg.Blobs.Load()
	for _, f := range []string{"etc/group", "srv/data.bin"} {
		if _, err := os.ReadFile(filepath.Join(mnt, f)); err != nil {
			t.Fatal(err)
		}
	}
	if got := reg.Blobs.Load() - blobs; got != 0 {
		t.Fatalf("reading the recorded files after the prefetch made %d blob requests, want 0", got)
	}

	// --no-profile, through the daemon and standalone: no profile
	// prefetched, neither the registry's nor one learned.
	state := filepath.Join(tmp, "state")
	for _, where := range [][]string{{"--control", sock}, {"--no-daemon", "--cache-dir", "", "--state-dir", state}} {
		mnt := filepath.Join(tmp, "noprofile")
		os.Mkdir(mnt, 0o755)
		if out, err := run(t, append(append([]string{"mount", "--no-profile"}, where...), dst, mnt)...); err != nil {
			t.Fatalf("mount --no-profile %v: %q %v", where, out, err)
		}
		statsArgs := append([]string{"stats", "--json"}, where[:2]...)
		if where[0] == "--no-daemon" {
			statsArgs = []string{"stats", "--json", "--state-dir", state}
		}
		out, err := run(t, append(statsArgs, mnt)...)
		run(t, append(append([]string{"umount"}, statsArgs[2:]...), mnt)...)
		if err != nil {
			t.Fatal(err)
		}
		var st image.Stats
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		if st.ProfileSource != "" || st.Prefetch != nil && st.Prefetch.ProfileChunks != 0 {
			t.Fatalf("mount --no-profile %v of %s: profile %q %+v, want none", where, dst, st.ProfileSource, st.Prefetch)
		}
	}

	// A recording that fails tags nothing.
	dst2 := reg.Ref("bb:2-lazy")
	if _, err := run(t, "convert", "--record", "--cache-dir", "", "--profile-dir", "", src, dst2, "--", "/no/such/command"); err == nil {
		t.Fatal("convert --record of a command that cannot run: no error")
	}
	if _, err := remote.Head(tag.Context().Tag("2-lazy")); err == nil {
		t.Fatalf("%s was tagged although the recording failed", dst2)
	}
	// Record flags without --record are an error.
	if _, err := run(t, "convert", "--ready-line", "x", src, dst2); err == nil {
		t.Fatal("--ready-line without --record: no error")
	}
}
