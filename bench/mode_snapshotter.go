package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// SnapshotterMode runs a workload through containerd with the lazyfs
// snapshotter: `lazyfs pull` (which passes containerd the remote-snapshot
// labels), containers create, tasks start. Profile pulls the workload's
// profiled copy (ImageRefs.Profiled, the start-up profile recorded by
// lazyfs record attached in the registry) instead of the converted image,
// which carries none; whether the snapshotter prefetches it is the
// snapshotter's business, and the sample's bytes and requests show it.
// Warm fills the snapshotter's block cache with one untimed run first, as
// pre-warming would. Each trial's snapshotter has its own root, so nothing
// it learns about an image outlives the sample.
//
// It runs only when lazyfs-snapshotter sits next to the lazyfs binary (or
// on PATH) and lazyfs has a pull command (and, for Profile, record); the
// flags it passes them are in snapshotterArgs and pullArgs, the one place
// to adjust as they land.
type SnapshotterMode struct{ Profile, Warm bool }

var _ Mode = SnapshotterMode{}

// Name implements Mode.
func (m SnapshotterMode) Name() string {
	switch {
	case m.Warm:
		return "warm"
	case m.Profile:
		return "lazy+profile"
	}
	return "lazy"
}

func snapshotterBinary(env *Env) (string, error) {
	p := filepath.Join(filepath.Dir(env.Lazyfs), "lazyfs-snapshotter")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return exec.LookPath("lazyfs-snapshotter")
}

// Check implements Mode.
func (m SnapshotterMode) Check(env *Env) error {
	if err := (FullMode{}).Check(env); err != nil {
		return err
	}
	if _, err := snapshotterBinary(env); err != nil {
		return skipf("no lazyfs-snapshotter next to %s or on PATH (the snapshotter is not in this build)", env.Lazyfs)
	}
	if exec.Command(env.Lazyfs, "pull", "--help").Run() != nil {
		return skipf("%s has no pull command (needed to pass containerd the remote-snapshot labels)", env.Lazyfs)
	}
	if m.Profile {
		if !HasCommand(env.Lazyfs, "record") {
			return skipf("%s has no record command, so images carry no start-up profile", env.Lazyfs)
		}
	}
	return nil
}

// snapshotterArgs is how the harness starts lazyfs-snapshotter (flags as
// in the snapshotter's docs/containerd.md; a node's /etc/lazyfs/config.toml,
// if any, is read, and these flags win over it): its sockets in a 0700 directory, its root, block
// cache and mirrors (hostsDir) below the trial's directory, no metrics
// listener.
func snapshotterArgs(dir, sockDir, hostsDir string) []string {
	return []string{
		"--address", filepath.Join(sockDir, "snapshotter.sock"),
		"--control-address", filepath.Join(sockDir, "control.sock"),
		"--root", filepath.Join(dir, "snapshotter"),
		"--hosts-dir", hostsDir,
		"--metrics-address", "",
	}
}

// pullArgs is how the harness asks lazyfs to pull through containerd.
func pullArgs(lazyfs, ctdSock, ref string, insecure bool) []string {
	a := []string{lazyfs, "pull", "--address", ctdSock, "--namespace", containerdNamespace, "--snapshotter", "lazyfs"}
	if insecure {
		a = append(a, "--plain-http")
	}
	return append(a, ref)
}

// writeHostsDir writes a containerd-style hosts directory that reaches the
// registry of ref over plain HTTP.
func writeHostsDir(dir, ref string) error {
	host, _, _ := strings.Cut(ref, "/")
	d := filepath.Join(dir, host)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+host, "http://"+host)
	return os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(conf), 0o644)
}

// Start implements Mode.
func (m SnapshotterMode) Start(ctx context.Context, env *Env, t Target) (Trial, error) {
	bin, err := snapshotterBinary(env)
	if err != nil {
		return nil, err
	}
	ref := t.Refs.Lazy
	if m.Profile {
		if ref = t.Refs.Profiled; ref == "" {
			return nil, fmt.Errorf("workload %s: no recorded start-up profile (see the run's notes)", t.Workload.Name)
		}
	}
	dir, sockDir, err := env.nextDir(m.Name())
	if err != nil {
		return nil, err
	}
	hostsDir := filepath.Join(dir, "hosts")
	if err := writeHostsDir(hostsDir, ref); err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "snapshotter.sock")
	logf, err := os.Create(filepath.Join(dir, "snapshotter.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	snap := exec.Command(bin, snapshotterArgs(dir, sockDir, hostsDir)...)
	snap.Stdout, snap.Stderr = logf, logf
	snap.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := snap.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = snap.Wait(); close(done) }()
	stopSnap := func() { stopProcess(snap.Process.Pid, false, done, 10*time.Second) }
	err = waitFor(ctx, "lazyfs-snapshotter "+sock, env.timeout(), 20*time.Millisecond, func() error {
		select {
		case <-done:
			b, _ := os.ReadFile(logf.Name())
			return permanent(fmt.Errorf("exited: %s", lastLines(string(b), 5)))
		default:
		}
		_, err := os.Stat(sock)
		return err
	})
	if err != nil {
		stopSnap()
		os.RemoveAll(dir)
		os.RemoveAll(sockDir)
		return nil, err
	}
	ctd, err := startContainerd(ctx, dir, sockDir, []proxySnapshotter{{"lazyfs", sock}}, env.timeout())
	if err != nil {
		stopSnap()
		unmountUnder(dir)
		os.RemoveAll(dir)
		os.RemoveAll(sockDir)
		return nil, err
	}
	tr := &ctrTrial{env: env, t: t, dir: dir, sockDir: sockDir, ctd: ctd, ref: ref, snap: "lazyfs",
		pull: pullArgs(env.Lazyfs, ctd.sock, ref, env.Insecure), extra: []int{snap.Process.Pid}, onClose: stopSnap}
	if m.Warm {
		var ph Phases
		if err := tr.Run(ctx, &ph); err != nil {
			tr.Close()
			return nil, fmt.Errorf("warming run: %w", err)
		}
		// Keep the snapshotter (and its cache); drop containerd's image,
		// container and snapshots, and the page cache.
		tr.ctd.removeContainer(tr.id)
		tr.id = ""
		_, _ = tr.ctd.ctr(ctx, "images", "rm", "--sync", ref)
		if err := DropCaches(); err != nil {
			tr.Close()
			return nil, err
		}
	}
	return tr, nil
}

// StargzMode would run the workload with stargz-snapshotter; it runs only
// when containerd-stargz-grpc and ctr-remote are on PATH.
type StargzMode struct{}

var _ Mode = StargzMode{}

// Name implements Mode.
func (StargzMode) Name() string { return "stargz" }

// Check implements Mode.
func (StargzMode) Check(*Env) error {
	for _, b := range []string{"containerd-stargz-grpc", "ctr-remote"} {
		if _, err := exec.LookPath(b); err != nil {
			return skipf("no %s on PATH", b)
		}
	}
	return skipf("containerd-stargz-grpc and ctr-remote found, but the stargz mode is not implemented in this harness yet")
}

// Start implements Mode.
func (StargzMode) Start(context.Context, *Env, Target) (Trial, error) {
	return nil, skipf("stargz mode not implemented")
}
