package snapshotter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"

	"github.com/lazyfs/lazyfs/snapshotter"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount overlayfs")
	}
}

// TestSnapshotterSuite runs containerd's own snapshotter conformance suite
// against the overlay path. The suite is told "overlayfs" because that name
// selects overlayfs's documented limits (renaming a lower directory needs
// redirect_dir).
func TestSnapshotterSuite(t *testing.T) {
	needRoot(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := snapshotter.New(ctx, root)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}

// TestSnapshotterSuiteWithFileSystem runs the suite again with a lazy
// filesystem configured: the remote machinery (parent checks) must leave
// the overlay path unchanged.
func TestSnapshotterSuiteWithFileSystem(t *testing.T) {
	needRoot(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		lfs := &bindFS{layers: map[string]string{}, mounted: map[string]bool{}}
		s, err := snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}

// bindFS is a FileSystem that serves a layer by bind-mounting a prepared
// directory read-only: a real mount, so that the snapshotter's
// commit/overlay/restore/remove logic runs against the kernel without FUSE.
// The FUSE-backed FileSystem (internal/node) is exercised end to end in the
// containerd test.
type bindFS struct {
	layers map[string]string // layer digest -> directory
	fail   map[string]error  // layer digest -> Mount error
	block  chan struct{}     // when set, Mount waits for it to close
	host   string            // when set, Mount serves only image references on this host
	dead   string            // when set, Mount of a reference on this host waits for its context (packets dropped)

	tried []string // image references given to Mount, in order

	mu      sync.Mutex
	mounted map[string]bool
	mounts  int
	lowers  map[string]string // mount point -> LabelLowerDirs it was given
	order   []string          // mount points, in the order they were mounted
}

func (b *bindFS) Mount(ctx context.Context, mp string, labels map[string]string) error {
	d := labels[snapshotter.LabelLayerDigest]
	ref := labels[snapshotter.LabelImageRef]
	b.mu.Lock()
	b.tried = append(b.tried, ref)
	b.mu.Unlock()
	if h, _, _ := strings.Cut(ref, "/"); b.dead != "" && h == b.dead {
		<-ctx.Done()
		return fmt.Errorf("resolve %s: dial tcp %s: %w", ref, h, ctx.Err())
	}
	if h, _, _ := strings.Cut(ref, "/"); b.host != "" && h != b.host {
		return fmt.Errorf("resolve %s: no registry at %s", ref, h)
	}
	if err := b.fail[d]; err != nil {
		return err
	}
	if b.block != nil {
		select {
		case <-b.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	src, ok := b.layers[d]
	if !ok {
		return fmt.Errorf("layer %s: %w", d, errNotLazy)
	}
	if err := syscall.Mount(src, mp, "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	if err := syscall.Mount("", mp, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		syscall.Unmount(mp, 0)
		return err
	}
	b.mu.Lock()
	b.mounted[mp] = true
	b.mounts++
	if b.lowers != nil {
		b.lowers[mp] = labels[snapshotter.LabelLowerDirs]
	}
	b.order = append(b.order, mp)
	b.mu.Unlock()
	return nil
}

func (b *bindFS) Check(ctx context.Context, mp string, labels map[string]string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted[mp] {
		return fmt.Errorf("%s: not mounted by this process", mp)
	}
	return nil
}

func (b *bindFS) Unmount(ctx context.Context, mp string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mounted[mp] {
		return fmt.Errorf("%s: not mounted by this process", mp)
	}
	delete(b.mounted, mp)
	return syscall.Unmount(mp, 0)
}

// forget simulates a daemon that died: its mounts are detached and it knows
// none of them.
func (b *bindFS) forget(t *testing.T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for mp := range b.mounted {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
	}
	b.mounted = map[string]bool{}
}

type reasonErr string

func (e reasonErr) Error() string          { return "not lazy: " + string(e) }
func (e reasonErr) FallbackReason() string { return string(e) }

var errNotLazy = reasonErr("not_chunked")

func layerLabels(ref, digest, target string) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		snapshotter.LabelTargetRef:   target,
		snapshotter.LabelImageRef:    ref,
		snapshotter.LabelLayerDigest: digest,
		snapshotter.LabelImageLayers: digest,
	})
}

func mountAndRead(t *testing.T, ms []mount.Mount, file string) string {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatalf("mount %+v: %v", ms, err)
	}
	defer mount.UnmountAll(dir, 0)
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRemoteSnapshotLifecycle(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("lazy layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lfs := &bindFS{
		layers:  map[string]string{"sha256:aaaa": src},
		fail:    map[string]error{"sha256:bad": fmt.Errorf("layer sha256:bad: toc: %w", reasonErr("toc_invalid"))},
		mounted: map[string]bool{},
	}
	root := t.TempDir()
	m := snapshotter.NewMetrics()
	s, err := snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs), snapshotter.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); lfs.forget(t) })

	// A layer of a pull: mounted lazily, committed, ErrAlreadyExists.
	_, err = s.Prepare(ctx, "extract-1", "", layerLabels("reg/img:1", "sha256:aaaa", "layer-a"))
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Prepare of a lazy layer: %v, want ErrAlreadyExists", err)
	}
	info, err := s.Stat(ctx, "layer-a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Labels[snapshotter.LabelRemote] == "" || info.Labels[snapshotter.LabelLayerDigest] != "sha256:aaaa" {
		t.Fatalf("remote snapshot info: %+v", info)
	}
	if _, err := s.Stat(ctx, "extract-1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("active key still there after the remote commit: %v", err)
	}
	if got := m.RemoteLayers(); got != 1 {
		t.Fatalf("remote layers counted: %v", got)
	}

	// A container over it: overlayfs with the lazy mount as lower.
	ms, err := s.Prepare(ctx, "ctr-1", "layer-a")
	if err != nil {
		t.Fatal(err)
	}
	if got := mountAndRead(t, ms, "hello"); got != "lazy layer\n" {
		t.Fatalf("container reads %q", got)
	}

	// Fallbacks are counted with their reason and leave an active snapshot.
	for _, c := range []struct {
		opt    snapshots.Opt
		reason string
	}{
		{layerLabels("reg/img:1", "sha256:bad", "layer-bad"), "toc_invalid"},
		{layerLabels("reg/img:1", "sha256:plain", "layer-plain"), "not_chunked"},
		{snapshots.WithLabels(map[string]string{snapshotter.LabelTargetRef: "layer-nolabels"}), snapshotter.ReasonNoLabels},
	} {
		key := "extract-" + c.reason
		ms, err := s.Prepare(ctx, key, "", c.opt)
		if err != nil || len(ms) != 1 {
			t.Fatalf("fallback Prepare (%s): %v %v", c.reason, ms, err)
		}
		if got := m.Fallbacks(c.reason); got != 1 {
			t.Fatalf("fallbacks{reason=%s} = %v, want 1", c.reason, got)
		}
		if err := s.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}

	// Restart after the daemon died: the mount is gone, New restores it,
	// and a new container reads the layer.
	mp := lfs.forgetOne(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := snapshotter.NewMetrics()
	s, err = snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs), snapshotter.WithMetrics(m2))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Restored():
	case <-time.After(30 * time.Second):
		t.Fatal("restore pass not done within 30s")
	}
	if ok, _ := mountinfo.Mounted(mp); !ok {
		t.Fatalf("remote snapshot not mounted again at %s after restart", mp)
	}
	ms, err = s.Prepare(ctx, "ctr-2", "layer-a")
	if err != nil {
		t.Fatal(err)
	}
	if got := mountAndRead(t, ms, "hello"); got != "lazy layer\n" {
		t.Fatalf("container after restart reads %q", got)
	}

	// A mount lost while running is restored when a container needs it.
	lfs.forgetOne(t)
	ms, err = s.Mounts(ctx, "ctr-2")
	if err != nil {
		t.Fatal(err)
	}
	if got := mountAndRead(t, ms, "hello"); got != "lazy layer\n" {
		t.Fatalf("container after a lost mount reads %q", got)
	}

	// And when a new container is prepared on top of it.
	lfs.forgetOne(t)
	ms, err = s.Prepare(ctx, "ctr-3", "layer-a")
	if err != nil {
		t.Fatalf("Prepare over a lost lazy mount: %v", err)
	}
	if got := mountAndRead(t, ms, "hello"); got != "lazy layer\n" {
		t.Fatalf("new container over a lost mount reads %q", got)
	}

	// Remove frees everything: no mount, no directory.
	for _, k := range []string{"ctr-1", "ctr-2", "ctr-3", "layer-a"} {
		if err := s.Remove(ctx, k); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	if ok, _ := mountinfo.Mounted(mp); ok {
		t.Fatalf("%s still mounted after Remove", mp)
	}
	if _, err := os.Stat(filepath.Dir(mp)); !os.IsNotExist(err) {
		t.Fatalf("snapshot directory left after Remove: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "snapshots"))
	if len(entries) != 0 {
		t.Fatalf("snapshots left: %v", entries)
	}
}

// forgetOne detaches the single mount bindFS holds and returns its path.
func (b *bindFS) forgetOne(t *testing.T) string {
	t.Helper()
	b.mu.Lock()
	var mp string
	for k := range b.mounted {
		mp = k
	}
	b.mu.Unlock()
	if mp == "" {
		t.Fatal("nothing mounted")
	}
	b.forget(t)
	return mp
}

// TestConcurrentPrepareOfOneLayer: two pulls of the same layer at once end
// with one remote snapshot and one mount.
func TestConcurrentPrepareOfOneLayer(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	src := t.TempDir()
	lfs := &bindFS{layers: map[string]string{"sha256:aaaa": src}, mounted: map[string]bool{}}
	s, err := snapshotter.New(ctx, t.TempDir(), snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); lfs.forget(t) })
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Prepare(ctx, fmt.Sprintf("extract-%d", i), "", layerLabels("r", "sha256:aaaa", "layer-a"))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Fatalf("Prepare %d: %v", i, err)
		}
	}
	lfs.mu.Lock()
	n := len(lfs.mounted)
	lfs.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d mounts left for one layer, want 1", n)
	}
	var names []string
	s.Walk(ctx, func(ctx context.Context, i snapshots.Info) error { names = append(names, i.Name); return nil })
	if len(names) != 1 || names[0] != "layer-a" {
		t.Fatalf("snapshots: %v", names)
	}
}

// TestRestoreDoesNotBlockStart: after a restart, New serves at once even
// when a lazy mount cannot be restored yet (registry down); the restore
// finishes in the background.
func TestRestoreDoesNotBlockStart(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	lfs := &bindFS{layers: map[string]string{"sha256:aaaa": t.TempDir()}, mounted: map[string]bool{}}
	root := t.TempDir()
	s, err := snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "extract-1", "", layerLabels("r", "sha256:aaaa", "layer-a")); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatal(err)
	}
	s.Close()
	lfs.forget(t)

	lfs.block = make(chan struct{})
	s, err = snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); lfs.forget(t) })
	select {
	case <-s.Restored():
		t.Fatal("restore finished while the lazy filesystem was blocked")
	default:
	}
	if _, err := s.Prepare(ctx, "plain", ""); err != nil {
		t.Fatalf("Prepare during the restore: %v", err)
	}
	close(lfs.block)
	select {
	case <-s.Restored():
	case <-time.After(30 * time.Second):
		t.Fatal("restore not done within 30s of unblocking")
	}
	lfs.mu.Lock()
	n := len(lfs.mounted)
	lfs.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d mounts after the restore, want 1", n)
	}
}

// TestCloseStopsRestore: Close does not wait for a restore that cannot finish.
func TestCloseStopsRestore(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	lfs := &bindFS{layers: map[string]string{"sha256:aaaa": t.TempDir()}, mounted: map[string]bool{}}
	root := t.TempDir()
	s, err := snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prepare(ctx, "extract-1", "", layerLabels("r", "sha256:aaaa", "layer-a")); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatal(err)
	}
	s.Close()
	lfs.forget(t)
	lfs.block = make(chan struct{}) // never closed
	s, err = snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for a blocked restore")
	}
}

// portLocator locates every layer as ref (a bare host, as containerd's
// distribution-source label gives it) and offers alts as its alternates.
type portLocator struct {
	ref  string
	alts []string
}

func (l portLocator) Locate(ctx context.Context, chainID string) (string, string, error) {
	return l.ref, "sha256:" + strings.TrimPrefix(chainID, "layer-"), nil
}

func (l portLocator) Alternates(ctx context.Context, ref string) []string { return l.alts }

// TestLocatedRefAlternates: a layer located without labels is mounted from
// the first of the locator's alternates that serves it (the registry's port
// guessed), its snapshot keeps that reference, the next layer of the same
// host tries the host that served first, and when no alternate serves,
// the layer falls back with an error naming every attempt.
func TestLocatedRefAlternates(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	lfs := &bindFS{
		layers:  map[string]string{"sha256:aaaa": t.TempDir(), "sha256:bbbb": t.TempDir(), "sha256:cccc": t.TempDir(), "sha256:eeee": t.TempDir()},
		host:    "reg.test:5000",
		mounted: map[string]bool{},
	}
	const rest = "/app@sha256:0123"
	loc := portLocator{ref: "reg.test" + rest, alts: []string{"reg.test:6000" + rest, "reg.test" + rest, "reg.test:5000" + rest}}
	m := snapshotter.NewMetrics()
	s, err := snapshotter.New(ctx, t.TempDir(), snapshotter.WithFileSystem(lfs), snapshotter.WithLocator(loc), snapshotter.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); lfs.forget(t) })
	prepare := func(target string) error {
		_, err := s.Prepare(ctx, "extract-"+target, "", snapshots.WithLabels(map[string]string{snapshotter.LabelTargetRef: target}))
		return err
	}

	if err := prepare("layer-aaaa"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Prepare of a located layer: %v, want ErrAlreadyExists", err)
	}
	if !slices.Equal(lfs.tried, loc.alts) {
		t.Fatalf("references tried: %q, want %q", lfs.tried, loc.alts)
	}
	info, err := s.Stat(ctx, "layer-aaaa")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Labels[snapshotter.LabelImageRef]; got != "reg.test:5000"+rest {
		t.Fatalf("snapshot's image reference %q, want the one that served", got)
	}

	lfs.tried = nil
	if err := prepare("layer-bbbb"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Prepare of the second located layer: %v", err)
	}
	if want := []string{"reg.test:5000" + rest}; !slices.Equal(lfs.tried, want) {
		t.Fatalf("second layer tried %q, want %q (the host that served first)", lfs.tried, want)
	}
	if got := m.RemoteLayers(); got != 2 {
		t.Fatalf("remote layers %v, want 2", got)
	}

	// No alternate serves: one fallback, every attempt in the log.
	var logs strings.Builder
	lfs.host = "elsewhere"
	s2, err := snapshotter.New(ctx, t.TempDir(), snapshotter.WithFileSystem(lfs), snapshotter.WithLocator(loc),
		snapshotter.WithMetrics(snapshotter.NewMetrics()), snapshotter.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ms, err := s2.Prepare(ctx, "extract-c", "", snapshots.WithLabels(map[string]string{snapshotter.LabelTargetRef: "layer-cccc"}))
	if err != nil || len(ms) != 1 {
		t.Fatalf("Prepare when no alternate serves: %v %v, want an active snapshot to unpack into", ms, err)
	}
	for _, r := range loc.alts {
		if !strings.Contains(logs.String(), "as "+r+": ") {
			t.Errorf("fallback log does not name the attempt as %s:\n%s", r, logs.String())
		}
	}

	// A registry that answers, and refuses: no more guesses.
	lfs.host, lfs.tried = "reg.test:6000", nil
	lfs.fail = map[string]error{"sha256:dddd": reasonErr("registry_auth")}
	m3 := snapshotter.NewMetrics()
	s3, err := snapshotter.New(ctx, t.TempDir(), snapshotter.WithFileSystem(lfs), snapshotter.WithLocator(loc), snapshotter.WithMetrics(m3))
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if _, err := s3.Prepare(ctx, "extract-d", "", snapshots.WithLabels(map[string]string{snapshotter.LabelTargetRef: "layer-dddd"})); err != nil {
		t.Fatal(err)
	}
	if want := loc.alts[:1]; !slices.Equal(lfs.tried, want) || m3.Fallbacks("registry_auth") != 1 {
		t.Fatalf("after a refusal tried %q (fallbacks registry_auth: %v), want %q and 1", lfs.tried, m3.Fallbacks("registry_auth"), want)
	}

	// A guess at a host that drops packets ends with its share of the
	// mount timeout, and the next guess gets the rest.
	lfs.host, lfs.dead, lfs.tried, lfs.fail = "", "reg.test:6000", nil, nil
	m4 := snapshotter.NewMetrics()
	s4, err := snapshotter.New(ctx, t.TempDir(), snapshotter.WithFileSystem(lfs), snapshotter.WithLocator(loc), snapshotter.WithMetrics(m4),
		snapshotter.WithMountTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s4.Close()
	if err := func() error {
		_, err := s4.Prepare(ctx, "extract-e", "", snapshots.WithLabels(map[string]string{snapshotter.LabelTargetRef: "layer-eeee"}))
		return err
	}(); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Prepare after a guess at a dead host: %v, want the next guess mounted (ErrAlreadyExists)", err)
	}
	if want := loc.alts[:2]; !slices.Equal(lfs.tried, want) || m4.RemoteLayers() != 1 {
		t.Fatalf("tried %q (remote layers %v), want %q and 1", lfs.tried, m4.RemoteLayers(), want)
	}
}

// TestLowerDirsGiven: each lazy layer's Mount is given the directories of
// the snapshots below it, the nearest first (LabelLowerDirs), which are
// never kept in the snapshot's labels; after a restart, and when a
// container needs lost mounts again, they are mounted again bottom-up with
// the same lowers.
func TestLowerDirsGiven(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	lfs := &bindFS{layers: map[string]string{}, mounted: map[string]bool{}, lowers: map[string]string{}}
	digests := []string{"sha256:aaaa", "sha256:bbbb", "sha256:cccc"}
	for _, d := range digests {
		lfs.layers[d] = t.TempDir()
	}
	root := t.TempDir()
	s, err := snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); lfs.forget(t) })
	parent := ""
	var mps []string // mount points, bottom first
	for i, d := range digests {
		target := "layer-" + d[7:8]
		if _, err := s.Prepare(ctx, "extract-"+target, parent, layerLabels("reg/img:1", d, target)); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Fatalf("Prepare %s: %v", target, err)
		}
		mps = append(mps, lfs.order[i])
		info, err := s.Stat(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := info.Labels[snapshotter.LabelLowerDirs]; ok {
			t.Fatalf("%s keeps %s=%q in its labels", target, snapshotter.LabelLowerDirs, v)
		}
		parent = target
	}
	want := map[string]string{mps[0]: "", mps[1]: mps[0], mps[2]: mps[1] + ":" + mps[0]}
	check := func(when string) {
		t.Helper()
		lfs.mu.Lock()
		defer lfs.mu.Unlock()
		for mp, w := range want {
			if got := lfs.lowers[mp]; got != w {
				t.Errorf("%s: mount %s given lowers %q, want %q", when, mp, got, w)
			}
		}
		if n := len(lfs.order); n < 3 || !slices.Equal(lfs.order[n-3:], mps) {
			t.Errorf("%s: mounted in the order %v, want %v last", when, lfs.order, mps)
		}
	}
	check("pull")

	// A restart after the daemon lost every mount: restored bottom-up.
	lfs.forget(t)
	clear(lfs.lowers)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = snapshotter.New(ctx, root, snapshotter.WithFileSystem(lfs)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Restored():
	case <-time.After(30 * time.Second):
		t.Fatal("restore pass not done within 30s")
	}
	check("restart")

	// Mounts lost while running: a container's Prepare mounts them again,
	// bottom-up.
	lfs.forget(t)
	clear(lfs.lowers)
	if _, err := s.Prepare(ctx, "ctr", parent); err != nil {
		t.Fatal(err)
	}
	check("container")
}
