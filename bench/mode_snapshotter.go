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
	if err := checkPull(env); err != nil {
		return err
	}
	if m.Profile {
		if !HasCommand(env.Lazyfs, "record") {
			return skipf("%s has no record command, so images carry no start-up profile", env.Lazyfs)
		}
	}
	return nil
}

// checkPull skips a remote-snapshotter mode whose lazyfs binary has no
// pull command, which passes containerd the remote-snapshot labels.
func checkPull(env *Env) error {
	if !HasCommand(env.Lazyfs, "pull") {
		return skipf("%s has no pull command (needed to pass containerd the remote-snapshot labels)", env.Lazyfs)
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

// pullArgs is how the harness asks lazyfs to pull through containerd into
// a remote snapshotter.
func pullArgs(lazyfs, ctdSock, snapshotter, ref string, insecure bool) []string {
	a := []string{lazyfs, "pull", "--address", ctdSock, "--namespace", containerdNamespace, "--snapshotter", snapshotter}
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

// startSnapshotter starts a proxy snapshotter daemon, its output in
// logPath, and waits until it listens on sock. stop stops it (and waits up
// to 10 s for it to exit, then kills it); unmounting what it left mounted
// is the caller's part.
func startSnapshotter(ctx context.Context, env *Env, bin string, args []string, logPath, sock string) (pid int, stop func(), err error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() { stopProcess(cmd.Process.Pid, false, done, 10*time.Second) }
	err = waitFor(ctx, filepath.Base(bin)+" "+sock, env.timeout(), 20*time.Millisecond, func() error {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			return permanent(fmt.Errorf("exited: %s", lastLines(string(b), 5)))
		default:
		}
		_, err := os.Stat(sock)
		return err
	})
	if err != nil {
		stop()
		return 0, nil, err
	}
	return cmd.Process.Pid, stop, nil
}

// startProxyTrial starts a proxy snapshotter daemon (bin args, listening
// on sock, its log in dir) and a containerd that has it as snapshotter
// name, and returns the trial that pulls ref into it with lazyfs pull. On
// an error it leaves nothing running, mounted or on disk.
func startProxyTrial(ctx context.Context, env *Env, t Target, dir, sockDir, name, ref, sock, bin string, args []string) (*ctrTrial, error) {
	pid, stopSnap, err := startSnapshotter(ctx, env, bin, args, filepath.Join(dir, name+"-snapshotter.log"), sock)
	if err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(sockDir)
		return nil, err
	}
	ctd, err := startContainerd(ctx, dir, sockDir, []proxySnapshotter{{name, sock}}, env.timeout())
	if err != nil {
		stopSnap()
		unmountUnder(dir)
		os.RemoveAll(dir)
		os.RemoveAll(sockDir)
		return nil, err
	}
	return &ctrTrial{env: env, t: t, dir: dir, sockDir: sockDir, ctd: ctd, ref: ref, snap: name,
		pull: pullArgs(env.Lazyfs, ctd.sock, name, ref, env.Insecure), extra: []int{pid}, onClose: stopSnap}, nil
}

// Start implements Mode.
func (m SnapshotterMode) Start(ctx context.Context, env *Env, t Target) (Trial, error) {
	bin, err := snapshotterBinary(env)
	if err != nil {
		return nil, err
	}
	ref, err := t.lazyRef(m.Profile)
	if err != nil {
		return nil, err
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
	tr, err := startProxyTrial(ctx, env, t, dir, sockDir, "lazyfs", ref, sock, bin, snapshotterArgs(dir, sockDir, hostsDir))
	if err != nil {
		return nil, err
	}
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

// StargzMode runs the workload through containerd with stargz-snapshotter
// (containerd-stargz-grpc, on PATH), the lazy-pulling snapshotter lazyfs is
// most often compared with, on the workload's eStargz copy
// (ImageRefs.Stargz): `lazyfs pull --snapshotter stargz` (which passes the
// CRI remote-snapshot labels stargz-snapshotter reads as well; ctr-remote
// rpull would pass the same reference and digests), containers create,
// tasks start. The eStargz copy has no prioritized files, so
// stargz-snapshotter prefetches nothing: the counterpart of lazy. Profile
// runs the copy whose layers put the files of the workload's start-up
// profile first (ImageRefs.StargzProfiled), which stargz-snapshotter
// prefetches at mount: the counterpart of lazy+profile, and of an image
// optimized by ctr-remote. Its background fetch stays on, as it is by
// default. Each trial's stargz-snapshotter has its own root and no cache
// from earlier samples.
type StargzMode struct{ Profile bool }

var _ Mode = StargzMode{}

// Name implements Mode.
func (m StargzMode) Name() string {
	if m.Profile {
		return "stargz+profile"
	}
	return "stargz"
}

// Check implements Mode.
func (m StargzMode) Check(env *Env) error {
	if err := (FullMode{}).Check(env); err != nil {
		return err
	}
	if _, err := exec.LookPath("containerd-stargz-grpc"); err != nil {
		return skipf("no containerd-stargz-grpc on PATH (stargz-snapshotter)")
	}
	if err := checkPull(env); err != nil {
		return err
	}
	if m.Profile && !HasCommand(env.Lazyfs, "record") {
		return skipf("%s has no record command, so there is no start-up profile to prioritize", env.Lazyfs)
	}
	return nil
}

// stargzConfig is containerd-stargz-grpc's configuration for a trial: the
// registry of ref over plain HTTP when insecure, everything else as
// stargz-snapshotter's defaults have it.
func stargzConfig(ref string, insecure bool) string {
	if !insecure {
		return ""
	}
	host, _, _ := strings.Cut(ref, "/")
	return fmt.Sprintf("[[resolver.host.%q.mirrors]]\n  host = %q\n  insecure = true\n", host, host)
}

// Start implements Mode.
func (m StargzMode) Start(ctx context.Context, env *Env, t Target) (Trial, error) {
	bin, err := exec.LookPath("containerd-stargz-grpc")
	if err != nil {
		return nil, err
	}
	ref := t.Refs.Stargz
	if m.Profile {
		ref = t.Refs.StargzProfiled
	}
	if ref == "" {
		return nil, fmt.Errorf("workload %s: no eStargz copy of image %s for %s (see the run's notes)", t.Workload.Name, t.Workload.Image, m.Name())
	}
	dir, sockDir, err := env.nextDir(m.Name())
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "stargz.toml")
	if err := os.WriteFile(cfg, []byte(stargzConfig(ref, env.Insecure)), 0o644); err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "stargz.sock")
	args := []string{"--address", sock, "--root", filepath.Join(dir, "stargz"), "--config", cfg, "--log-level", "info"}
	return startProxyTrial(ctx, env, t, dir, sockDir, "stargz", ref, sock, bin, args)
}
