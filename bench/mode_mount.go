package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// MountMode starts a workload from `lazyfs mount` and a chroot, without a
// container runtime: pull is until the mount is ready, create is a private
// mount namespace with /proc and /dev mounted into the image, run is the
// chrooted command until ready. Warm first fills the block cache with one
// untimed run of the same workload (then unmounts and drops the page
// cache): a node whose cache already holds what the workload reads.
// Profile mounts the workload's profiled copy (ImageRefs.Profiled), so the
// mount prefetches the start-up profile recorded in the registry.
//
// Every trial gives the mount a fresh, empty --profile-dir of its own
// (when the binary has the flag): a mount learns the first-read order of
// what it serves and prefetches it at the next mount of the image, so a
// node-wide profile directory would hand one sample's profile to the
// next. Without Profile the mounted image has no profile in the registry
// either: mount measures no profile at all. Warm's untimed run and its
// timed run share the trial's directory, as on a node.
type MountMode struct{ Warm, Profile bool }

var _ Mode = MountMode{}

// Name implements Mode.
func (m MountMode) Name() string {
	switch {
	case m.Warm:
		return "mount-warm"
	case m.Profile:
		return "mount+profile"
	}
	return "mount"
}

// Check implements Mode.
func (m MountMode) Check(env *Env) error {
	if os.Geteuid() != 0 {
		return skipf("needs root (FUSE mount, chroot)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return skipf("no /dev/fuse")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return skipf("no unshare (util-linux)")
	}
	if _, err := os.Stat(env.Lazyfs); err != nil {
		return skipf("no lazyfs binary at %s (make build)", env.Lazyfs)
	}
	if m.Profile && !HasCommand(env.Lazyfs, "record") {
		return skipf("%s has no record command, so images carry no start-up profile", env.Lazyfs)
	}
	return nil
}

// Start implements Mode.
func (m MountMode) Start(ctx context.Context, env *Env, t Target) (Trial, error) {
	ref, err := t.lazyRef(m.Profile)
	if err != nil {
		return nil, err
	}
	dir, sockDir, err := env.nextDir(m.Name())
	if err != nil {
		return nil, err
	}
	tr := &mountTrial{env: env, t: t, ref: ref, dir: dir, sockDir: sockDir, profileDir: env.hasFlag("mount", "profile-dir")}
	if m.Warm {
		var ph Phases
		if err := tr.Run(ctx, &ph); err != nil {
			tr.Close()
			return nil, fmt.Errorf("warming run: %w", err)
		}
		if err := tr.stopServer(); err != nil {
			tr.Close()
			return nil, err
		}
	}
	return tr, nil
}

type mountTrial struct {
	env *Env
	t   Target
	ref string // the image mounted: t.Refs.Lazy or t.Refs.Profiled
	dir string
	// profileDir says the binary's mount has --profile-dir: the trial
	// passes one of its own.
	profileDir bool
	// sockDir holds the mount's state directory: its stats socket's path
	// must be short.
	sockDir string
	server  *exec.Cmd
	done    chan struct{}
}

func (tr *mountTrial) mnt() string { return filepath.Join(tr.dir, "rootfs") }

// Run implements Trial.
func (tr *mountTrial) Run(ctx context.Context, ph *Phases) error {
	mnt := tr.mnt()
	// lazyfs mount --foreground expects its state directory to exist.
	for _, d := range []string{mnt, filepath.Join(tr.sockDir, "state", "mounts")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(filepath.Join(tr.dir, "mount.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	profiles := ""
	if tr.profileDir {
		profiles = filepath.Join(tr.dir, "profiles")
		if err := os.MkdirAll(profiles, 0o755); err != nil {
			return err
		}
	}
	args := mountArgs(filepath.Join(tr.dir, "cache"), filepath.Join(tr.sockDir, "state"), profiles, tr.env.Insecure, tr.ref, mnt)
	srv := exec.Command(tr.env.Lazyfs, args...)
	srv.Stdout, srv.Stderr = logf, logf
	srv.ExtraFiles = []*os.File{pw}
	srv.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	if err := srv.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start lazyfs mount %s: %w", tr.ref, err)
	}
	pw.Close()
	tr.server, tr.done = srv, make(chan struct{})
	go func() { _ = srv.Wait(); close(tr.done) }()
	line := make(chan string, 1)
	go func() { s, _ := bufio.NewReader(pr).ReadString('\n'); line <- s }()
	select {
	case s := <-line:
		if !strings.HasPrefix(s, "ready ") {
			<-tr.done
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("lazyfs mount %s: not ready: %s %s", tr.ref, strings.TrimSpace(s), lastLines(string(b), 5))
		}
	case <-time.After(tr.env.timeout()):
		return fmt.Errorf("lazyfs mount %s: not ready after %v", tr.ref, tr.env.timeout())
	case <-ctx.Done():
		return ctx.Err()
	}
	ph.Pull = time.Since(start)

	mr, mw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer mr.Close()
	script := `r=$1; shift
if [ -d "$r/proc" ]; then mount -t proc proc "$r/proc" || exit 97; fi
if [ -d "$r/dev" ]; then mount --rbind /dev "$r/dev" || exit 97; fi
echo created >&3; exec 3>&-
exec chroot "$r" "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", mnt}, tr.t.Workload.Cmd...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
	cmd.ExtraFiles = []*os.File{mw}
	create, run, out, err := runToReady(ctx, tr.t.Workload, cmd, mr, mw, tr.env.timeout())
	ph.Create, ph.Run, ph.Output = create, run, out
	return err
}

// mountArgs is how the harness runs lazyfs mount: in the foreground,
// reporting readiness on fd 3, with the trial's block cache and state
// directory, and profileDir ("": the flag is not passed, for binaries
// without it) as the node's profile store.
func mountArgs(cacheDir, stateDir, profileDir string, insecure bool, ref, mnt string) []string {
	args := []string{"mount", "--foreground", "--notify-fd", "3", "--cache-dir", cacheDir, "--state-dir", stateDir}
	if profileDir != "" {
		args = append(args, "--profile-dir", profileDir)
	}
	if insecure {
		args = append(args, "--insecure")
	}
	return append(args, ref, mnt)
}

// MountStats implements mountStatser: lazyfs stats of the trial's mount.
func (tr *mountTrial) MountStats(ctx context.Context) (*MountStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tr.env.Lazyfs, "stats", "--json", "--no-daemon",
		"--state-dir", filepath.Join(tr.sockDir, "state"), tr.mnt()).Output()
	if err != nil {
		return nil, fmt.Errorf("lazyfs stats %s: %w", tr.mnt(), err)
	}
	var st struct {
		FS MountStats `json:"fs"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("lazyfs stats %s: %w", tr.mnt(), err)
	}
	return &st.FS, nil
}

// Daemons implements Trial.
func (tr *mountTrial) Daemons() []int {
	if tr.server == nil || tr.server.Process == nil {
		return nil
	}
	return []int{tr.server.Process.Pid}
}

func (tr *mountTrial) stopServer() error {
	if tr.server != nil {
		stopProcess(tr.server.Process.Pid, false, tr.done, 10*time.Second)
		tr.server = nil
	}
	if err := unmountUnder(tr.dir); err != nil {
		return err
	}
	return DropCaches()
}

// Close implements Trial.
func (tr *mountTrial) Close() error {
	if tr.server != nil {
		stopProcess(tr.server.Process.Pid, false, tr.done, 10*time.Second)
	}
	err := unmountUnder(tr.dir)
	if rerr := os.RemoveAll(tr.dir); err == nil {
		err = rerr
	}
	os.RemoveAll(tr.sockDir)
	return err
}
