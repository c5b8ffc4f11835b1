package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// buildLazyfs builds cmd/lazyfs into a temporary directory.
func buildLazyfs(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lazyfs")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/lazyfs")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/lazyfs: %v\n%s", err, out)
	}
	return bin
}

// TestRunHelloMount is the harness end to end: a busybox image built in
// process, pushed to a registry in its own network namespace behind a
// 200 Mbit/s tbf link, converted with lazyfs convert, then cold starts in
// mount mode (and full mode when containerd is here), with every count of a
// sample filled in and nothing left behind.
func TestRunHelloMount(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end; -short")
	}
	needLink(t) // root, ip, tc: skips otherwise
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	if _, err := findBusybox(); err != nil {
		t.Skip(err)
	}
	lazyfs := buildLazyfs(t)
	modes := []Mode{MountMode{}}
	if (FullMode{}).Check(nil) == nil {
		modes = append([]Mode{FullMode{}}, modes...)
	}
	w, err := BuiltinWorkload("hello")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress []string
	rep, err := Run(ctx, Config{
		Workloads: []*Workload{w}, Modes: modes, Samples: 2,
		Profile: Profile{Name: "200mbit", RateBitsPerSecond: 200e6}, CacheDir: filepath.Join(tmp, "cache"), TempDir: tmp,
		Lazyfs: lazyfs, Registry: "inprocess", Timeout: time.Minute, Logf: t.Logf,
		Progress: func(done, total int, label string) { progress = append(progress, label) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + 2*len(modes); len(progress) != want {
		t.Errorf("progress reported %d samples, want %d: %v", len(progress), want, progress)
	}
	if rep.Link.Kind != "veth+tbf" || rep.SchemaVersion != SchemaVersion || len(rep.Workloads) != 1 {
		t.Fatalf("report: %+v", rep)
	}
	for _, m := range rep.Workloads[0].Modes {
		if len(m.Samples) != 2 {
			t.Fatalf("%s: %d samples, want 2", m.Mode, len(m.Samples))
		}
		for _, s := range m.Samples {
			t.Logf("%s round %d: %+v", m.Mode, s.Round, s)
			if s.Error != "" {
				t.Fatalf("%s round %d: %s", m.Mode, s.Round, s.Error)
			}
			if s.ReadySeconds <= 0 || s.PullSeconds <= 0 || s.RunSeconds <= 0 {
				t.Errorf("%s: phases not measured: %+v", m.Mode, s)
			}
			// Every sample starts cold, so each fetches the image's bytes
			// again, across the link, and the counts agree.
			if s.Requests < 3 || s.ResponseBytes < 500<<10 {
				t.Errorf("%s: %d requests, %d response bytes: not a cold start", m.Mode, s.Requests, s.ResponseBytes)
			}
			if s.LinkBytesReceived < s.ResponseBytes {
				t.Errorf("%s: link saw %d bytes, less than the registry's %d", m.Mode, s.LinkBytesReceived, s.ResponseBytes)
			}
			if s.DaemonPeakRSSBytes <= 0 {
				t.Errorf("%s: daemon RSS not measured", m.Mode)
			}
			// A mount sample carries the mount's own counters: it fetched.
			if m.Mode == (MountMode{}).Name() && (s.Mount == nil || s.Mount.FetchedChunks == 0) {
				t.Errorf("%s: mount stats %+v, want fetched chunks", m.Mode, s.Mount)
			}
		}
		if m.Summary == nil || m.Summary.ReadySeconds.N != 2 {
			t.Errorf("%s: summary %+v", m.Mode, m.Summary)
		}
	}
	// The workload really ran: its output reached us.
	if out := runOnce(t, ctx, lazyfs, tmp); !strings.Contains(out, "hello from lazyfs bench") {
		t.Errorf("workload output %q", out)
	}
	// Nothing left behind: no mounts under the temp dir, no work dir.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), tmp) {
		t.Errorf("mounts left under %s", tmp)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "lazyfs-bench-*")); len(left) > 0 {
		t.Errorf("work directories left: %v", left)
	}
}

// runOnce runs one mount trial by hand (registry on loopback) and returns
// the workload's output.
func runOnce(t *testing.T, ctx context.Context, lazyfs, tmp string) string {
	t.Helper()
	ln, err := netListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	defer reg.Close()
	im := &Images{CacheDir: filepath.Join(tmp, "cache"), Lazyfs: lazyfs}
	refs, err := im.Prepare(ctx, "hello", reg)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := BuiltinWorkload("hello")
	sockDir, err := os.MkdirTemp(shortTempBase(), "lzbtest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	env := &Env{WorkDir: t.TempDir(), SockDir: sockDir, Lazyfs: lazyfs, Insecure: true, Timeout: time.Minute}
	tr, err := MountMode{}.Start(ctx, env, Target{Workload: w, Refs: refs})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var ph Phases
	if err := tr.Run(ctx, &ph); err != nil {
		t.Fatal(err)
	}
	return ph.Output
}

// TestStargzMode runs the hello workload through stargz-snapshotter: the
// image converted to eStargz, pulled through containerd into the stargz
// snapshotter, and run by runc; then stargz+profile, on the copy whose
// layers put the files of hello's recorded start-up profile first. While
// a trial holds the container, the image's layers must be served by
// stargz-snapshotter's FUSE mounts under the trial's directory (a lazy
// pull, not its fallback of unpacking the layers whole); after Close
// nothing is left mounted.
func TestStargzMode(t *testing.T) {
	if testing.Short() {
		t.Skip("end to end; -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	if _, err := findBusybox(); err != nil {
		t.Skip(err)
	}
	lazyfs := buildLazyfs(t)
	tmp := t.TempDir()
	env := &Env{WorkDir: filepath.Join(tmp, "work"), Lazyfs: lazyfs, Insecure: true, Timeout: time.Minute}
	if err := (StargzMode{Profile: true}).Check(env); err != nil {
		t.Skip(err) // make test builds containerd-stargz-grpc
	}
	ln, err := netListen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	im := &Images{CacheDir: filepath.Join(tmp, "cache"), Lazyfs: lazyfs, Logf: t.Logf}
	w, _ := BuiltinWorkload("hello")
	refs, err := im.Prepare(ctx, "hello", reg)
	if err != nil {
		t.Fatal(err)
	}
	if refs, err = im.Estargz(ctx, refs); err != nil {
		t.Fatal(err)
	}
	if refs.Profiled, err = im.Record(ctx, w, refs); err != nil || refs.Profiled == "" {
		t.Fatalf("record: %q, %v", refs.Profiled, err)
	}
	if refs, err = im.EstargzProfiled(ctx, w, refs); err != nil {
		t.Fatal(err)
	}
	// hello runs busybox: its layer's eStargz puts it before the landmark.
	pimg, err := remoteImageInsecure(ctx, refs.StargzProfiled)
	if err != nil {
		t.Fatal(err)
	}
	players, _ := pimg.Layers()
	r := openEstargz(t, players[0])
	mark, ok := r.Lookup(estargz.PrefetchLandmark)
	bb, ok2 := r.Lookup("bin/busybox")
	if !ok || !ok2 || bb.Offset >= mark.Offset {
		t.Errorf("%s: busybox (%v) not prioritized before the landmark (%v)", refs.StargzProfiled, ok2, ok)
	}
	sockDir, err := os.MkdirTemp(shortTempBase(), "lzbtest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	env.SockDir = sockDir
	for _, m := range []StargzMode{{}, {Profile: true}} {
		tr, err := m.Start(ctx, env, Target{Workload: w, Refs: refs})
		if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		var ph Phases
		err = tr.Run(ctx, &ph)
		fuseMounts := 0
		if mi, merr := os.ReadFile("/proc/self/mountinfo"); merr == nil {
			for _, l := range strings.Split(string(mi), "\n") {
				if strings.Contains(l, env.WorkDir) && strings.Contains(l, " - fuse") {
					fuseMounts++
				}
			}
		}
		if cerr := tr.Close(); cerr != nil {
			t.Errorf("%s: close: %v", m.Name(), cerr)
		}
		if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		if !strings.Contains(ph.Output, "hello from lazyfs bench") {
			t.Errorf("%s: workload output %q", m.Name(), ph.Output)
		}
		if ph.Pull <= 0 || ph.Run <= 0 {
			t.Errorf("%s: phases not measured: %+v", m.Name(), ph)
		}
		if fuseMounts == 0 {
			t.Errorf("%s: no stargz FUSE mount under %s while the container ran: the layers were not pulled lazily", m.Name(), env.WorkDir)
		}
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), env.WorkDir) {
			t.Errorf("%s: mounts left under %s", m.Name(), env.WorkDir)
		}
	}
}
