// Package runner runs a command in a mounted image as a container runtime
// would, for `lazyfs run` and `lazyfs record`: in a private mount namespace,
// with the image (read-only, e.g. a lazy mount) as the lower layer of a
// writable overlay, /proc, /sys, a minimal /dev of the host's harmless
// device nodes (a lazy mount is nodev, so the image's own nodes cannot be
// opened), and the image config's environment, working directory and user.
// Everything it mounts lives only in that namespace and is gone when the
// run ends. It needs root and Linux.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Errors of this package.
var (
	// ErrSetup means the run's namespace, overlay or mounts could not be set up.
	ErrSetup = errors.New("cannot set up the run")
	// ErrNotFound means the command is not in the image.
	ErrNotFound = errors.New("command not found in the image")
)

// DefaultPath is the PATH of a run whose image sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config describes one run.
type Config struct {
	// Root is the image's root directory (the overlay's read-only lower layer).
	Root string
	// Args is the command and its arguments; a name without "/" is looked
	// up in the PATH of Env.
	Args []string
	// Env, WorkDir and User come from the image config ("uid", "uid:gid",
	// "name" or "name:group", names resolved in the image's /etc/passwd and
	// /etc/group). Defaults: PATH=DefaultPath, "/", root.
	Env     []string
	WorkDir string
	User    string
	// Timeout ends the run (SIGTERM, then SIGKILL after KillGrace); 0: none.
	Timeout time.Duration
	// ReadyLine ends the run as soon as the command prints a line on stdout
	// that matches it, as a server does when it is ready.
	ReadyLine *regexp.Regexp
	// KillGrace is how long a process gets between SIGTERM and SIGKILL
	// (default 2 s).
	KillGrace time.Duration
	// ScratchSize bounds the overlay's writable layer, a tmpfs (default 1 GiB).
	ScratchSize int64
	// Devices are device edits to apply, as ResolveCDI returns them for
	// CDI devices such as GPUs: environment (set over Env), device nodes
	// (made in the run's /dev), mounts (bound from the host) and hooks
	// (run before the command starts, with the OCI state on stdin and a
	// bundle whose config.json gives the run's root, as a runtime runs a
	// CDI spec's createContainer hooks). nil: none.
	Devices *specs.Spec
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// Result is how a run ended.
type Result struct {
	// ExitCode is the command's exit status (128+signal if it was killed).
	ExitCode int
	// Ready reports that ReadyLine matched; the run was ended after it.
	Ready bool
	// TimedOut reports that Timeout ended the run.
	TimedOut bool
	// Duration is the time from the start of the command to its end (or to
	// the ready line).
	Duration time.Duration
}

// devices are the host nodes bound into the run's /dev.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// Run runs c.Args in the image at c.Root and returns how it ended. It
// returns an error only if the run could not be set up or started; ctx
// ending stops the command like Timeout.
func Run(ctx context.Context, c Config) (*Result, error) {
	if len(c.Args) == 0 {
		return nil, fmt.Errorf("%w: no command", ErrSetup)
	}
	if strings.ContainsAny(c.Root, ",:") {
		return nil, fmt.Errorf("%w: root %q: overlayfs cannot take ',' or ':' in a path", ErrSetup, c.Root)
	}
	if c.KillGrace <= 0 {
		c.KillGrace = 2 * time.Second
	}
	if c.ScratchSize <= 0 {
		c.ScratchSize = 1 << 30
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	scratch, err := os.MkdirTemp("", "lazyfs-run-*")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSetup, err)
	}
	defer os.Remove(scratch)
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		// The namespace belongs to this thread only: it is never unlocked,
		// so the thread (and with it the namespace) ends with the goroutine.
		runtime.LockOSThread()
		res, err := runInNamespace(ctx, c, scratch)
		done <- outcome{res, err}
	}()
	o := <-done
	return o.res, o.err
}

func runInNamespace(ctx context.Context, c Config, scratch string) (_ *Result, err error) {
	// Return the thread to the original namespace at the end, so the run's
	// namespace dies with its processes: a locked goroutine's thread is not
	// always terminated (the main thread is parked instead), and a parked
	// thread would pin the namespace, its copies of every mount (the lazy
	// mount included) and so the FUSE servers behind them.
	orig, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSetup, err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("%w: unshare mount namespace: %v", ErrSetup, err)
	}
	defer func() {
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNS); serr != nil && err == nil {
			err = fmt.Errorf("%w: return to the original mount namespace: %v", ErrSetup, serr)
		}
	}()
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("%w: make / private: %v", ErrSetup, err)
	}
	var mounted []string
	defer func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			_ = unix.Unmount(mounted[i], unix.MNT_DETACH)
		}
	}()
	mount := func(src, dst, fstype string, flags uintptr, data string) error {
		if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
			return fmt.Errorf("%w: mount %s on %s: %v", ErrSetup, fstype+src, dst, err)
		}
		mounted = append(mounted, dst)
		return nil
	}
	if err := mount("lazyfs-run", scratch, "tmpfs", 0, "mode=0700,size="+strconv.FormatInt(c.ScratchSize, 10)); err != nil {
		return nil, err
	}
	upper, work, merged := filepath.Join(scratch, "upper"), filepath.Join(scratch, "work"), filepath.Join(scratch, "root")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSetup, err)
		}
	}
	if err := mount("overlay", merged, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", c.Root, upper, work)); err != nil {
		return nil, err
	}
	if err := setupSpecial(merged, mount); err != nil {
		return nil, err
	}
	if err := setupNetworkFiles(merged); err != nil {
		return nil, err
	}
	if c.Devices != nil {
		if err := applyDevices(merged, c.Devices, mount); err != nil {
			return nil, err
		}
	}
	cred, err := lookupUser(merged, c.User)
	if err != nil {
		return nil, err
	}
	env := withDefaults(c.Env, cred)
	if c.Devices != nil && c.Devices.Process != nil {
		env = mergeEnv(env, c.Devices.Process.Env)
	}
	prog, err := lookPath(merged, c.Args[0], getenv(env, "PATH"))
	if err != nil {
		return nil, err
	}
	wd := c.WorkDir
	if wd == "" {
		wd = "/"
	}
	if !path.IsAbs(wd) {
		wd = "/" + wd
	}
	// The image's working directory may not exist (runtimes create it).
	_ = os.MkdirAll(filepath.Join(merged, filepath.Clean(wd)), 0o755)

	var hooks *specs.Hooks
	if c.Devices != nil {
		hooks = c.Devices.Hooks
	}
	spec, err := json.Marshal(initSpec{Root: merged, Dir: wd, Path: prog, UID: cred.Uid, GID: cred.Gid, Args: c.Args, Env: env, Wait: hooks != nil})
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe", Args: append([]string{"lazyfs-run-init"}, c.Args...),
		Env:   []string{initEnv + "=" + string(spec)},
		Stdin: c.Stdin, Stderr: c.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
		WaitDelay:   c.KillGrace,
	}
	ready := make(chan struct{})
	var stdout *lineWatcher
	if c.ReadyLine != nil {
		stdout = &lineWatcher{w: c.Stdout, re: c.ReadyLine, ready: ready}
		cmd.Stdout = stdout
	} else {
		cmd.Stdout = c.Stdout
	}
	// With hooks, the helper waits (before its chroot) until they ran: they
	// get its pid, as a runtime's hooks get the container's.
	var release *os.File
	if hooks != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSetup, err)
		}
		defer w.Close()
		cmd.ExtraFiles, release = []*os.File{r}, w
		defer r.Close()
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start %s: %v", ErrSetup, c.Args[0], err)
	}
	pgid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var st ociState
	if hooks != nil {
		st, err = startHooks(ctx, scratch, merged, c, env, wd, pgid)
		if err != nil {
			release.Close()
			_ = unix.Kill(-pgid, unix.SIGKILL)
			<-exited
			return nil, err
		}
		if _, err := release.Write([]byte{1}); err != nil {
			_ = unix.Kill(-pgid, unix.SIGKILL)
			<-exited
			return nil, fmt.Errorf("%w: start %s after its hooks: %v", ErrSetup, c.Args[0], err)
		}
		release.Close()
		start = time.Now()
		st.Status = "running"
		if err := runHooks(ctx, "poststart", hooks.Poststart, st); err != nil {
			fmt.Fprintf(c.Stderr, "lazyfs run: %v\n", err)
		}
		defer func() {
			st.Status = "stopped"
			if err := runHooks(context.WithoutCancel(ctx), "poststop", hooks.Poststop, st); err != nil {
				fmt.Fprintf(c.Stderr, "lazyfs run: %v\n", err)
			}
		}()
	}

	var timeout <-chan time.Time
	if c.Timeout > 0 {
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	res := &Result{}
	var werr error
	ended := false
	select {
	case werr = <-exited:
		ended = true
	case <-ready:
		res.Ready = true
	case <-timeout:
		res.TimedOut = true
	case <-ctx.Done():
	}
	if res.Ready {
		res.Duration = time.Since(start)
	}
	if !ended {
		// Ended by us: SIGTERM the process group, SIGKILL after the grace.
		_ = unix.Kill(-pgid, unix.SIGTERM)
		t := time.NewTimer(c.KillGrace)
		select {
		case werr = <-exited:
			t.Stop()
		case <-t.C:
			_ = unix.Kill(-pgid, unix.SIGKILL)
			werr = <-exited
		}
	}
	// Whatever the command left behind in its group goes too.
	_ = unix.Kill(-pgid, unix.SIGKILL)
	if !res.Ready {
		res.Duration = time.Since(start)
	}
	res.ExitCode = exitCode(cmd.ProcessState, werr)
	return res, nil
}

// startHooks writes the run's bundle and runs the hooks that come before
// the command: prestart, createRuntime, createContainer and startContainer,
// in that order, all in the run's mount namespace before the helper
// (pid) chroots. It returns the state the later hooks get.
func startHooks(ctx context.Context, scratch, root string, c Config, env []string, wd string, pid int) (ociState, error) {
	bundle := filepath.Join(scratch, "bundle")
	st := ociState{Version: specs.Version, ID: fmt.Sprintf("lazyfs-run-%d", pid), Status: "created", Pid: pid, Bundle: bundle}
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return st, fmt.Errorf("%w: %v", ErrSetup, err)
	}
	if err := writeBundle(bundle, root, c, env, wd, c.Devices); err != nil {
		return st, fmt.Errorf("%w: bundle: %v", ErrSetup, err)
	}
	h := c.Devices.Hooks
	//lint:ignore SA1019 prestart hooks are deprecated but CDI specs may still carry them, and runtimes run them
	prestart := h.Prestart
	for _, k := range []struct {
		kind  string
		hooks []specs.Hook
	}{{"prestart", prestart}, {"createRuntime", h.CreateRuntime}, {"createContainer", h.CreateContainer}, {"startContainer", h.StartContainer}} {
		if err := runHooks(ctx, k.kind, k.hooks, st); err != nil {
			return st, err
		}
	}
	return st, nil
}

// networkFiles are the host's files a run sees in place of the image's, as
// a container runtime gives a container on the host's network: name
// resolution (an image's resolv.conf is often empty, or a symlink into a
// /run it does not have), the host table, the host's name.
var networkFiles = []string{"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"}

// maxNetworkFile bounds a host file copied by setupNetworkFiles.
const maxNetworkFile = 1 << 20

// setupNetworkFiles copies the host's networkFiles into root, the run's
// writable overlay (the image is not touched). The image's own entry is
// replaced, never written through: a symlink of the image would resolve on
// the host. A file the host lacks leaves the image's as it is.
func setupNetworkFiles(root string) error {
	for _, p := range networkFiles {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() > maxNetworkFile {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		dst := filepath.Join(root, resolveIn(root, p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			continue // the image's /etc is not a directory: leave it be
		}
		if fi, err := os.Lstat(dst); err == nil {
			if fi.IsDir() {
				continue
			}
			if !fi.Mode().IsRegular() {
				if err := os.Remove(dst); err != nil {
					return fmt.Errorf("%w: replace %s: %v", ErrSetup, p, err)
				}
			}
		}
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrSetup, p, err)
		}
		_, werr := f.Write(data)
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return fmt.Errorf("%w: %s: %v", ErrSetup, p, werr)
		}
	}
	return nil
}

// setupSpecial mounts /proc, /sys (read-only) and a minimal /dev in root.
func setupSpecial(root string, mount func(src, dst, fstype string, flags uintptr, data string) error) error {
	for _, d := range []string{"proc", "sys", "dev"} {
		p := filepath.Join(root, d)
		if fi, err := os.Lstat(p); err == nil && !fi.IsDir() {
			return fmt.Errorf("%w: /%s in the image is not a directory", ErrSetup, d)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrSetup, err)
		}
	}
	if err := mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mount("sysfs", filepath.Join(root, "sys"), "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	dev := filepath.Join(root, "dev")
	if err := mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=65536"); err != nil {
		return err
	}
	for _, d := range devices {
		p := filepath.Join(dev, d)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return fmt.Errorf("%w: %v", ErrSetup, err)
		}
		if err := mount("/dev/"+d, p, "", unix.MS_BIND, ""); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrSetup, err)
		}
	}
	if err := mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=67108864"); err != nil {
		return err
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("%w: %v", ErrSetup, err)
		}
	}
	return nil
}

// lineWatcher copies a command's stdout and closes ready at the first line
// that matches re.
type lineWatcher struct {
	w     io.Writer
	re    *regexp.Regexp
	ready chan struct{}
	once  sync.Once
	buf   []byte
}

const maxLine = 64 << 10

func (l *lineWatcher) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	l.buf = append(l.buf, p...)
	for {
		i := strings.IndexByte(string(l.buf), '\n')
		if i < 0 {
			break
		}
		l.check(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > maxLine { // a huge line: check what we have, then forget it
		l.check(l.buf)
		l.buf = l.buf[:0]
	}
	return n, err
}

func (l *lineWatcher) check(line []byte) {
	if l.re.Match(line) {
		l.once.Do(func() { close(l.ready) })
	}
}

func exitCode(ps *os.ProcessState, err error) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func getenv(env []string, k string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], k+"="); ok {
			return v
		}
	}
	return ""
}

// withDefaults adds PATH and HOME when the image config has none.
func withDefaults(env []string, cred *syscall.Credential) []string {
	out := append([]string(nil), env...)
	if getenv(out, "PATH") == "" {
		out = append(out, "PATH="+DefaultPath)
	}
	if getenv(out, "HOME") == "" {
		home := "/"
		if cred.Uid == 0 {
			home = "/root"
		}
		out = append(out, "HOME="+home)
	}
	return out
}

// lookPath finds name in the image's PATH (entries relative to the image root).
func lookPath(root, name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	if pathEnv == "" {
		pathEnv = DefaultPath
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if !path.IsAbs(dir) {
			continue
		}
		p := path.Join(dir, name)
		if fi, err := os.Lstat(filepath.Join(root, resolveIn(root, p))); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s (PATH %s)", ErrNotFound, name, pathEnv)
}

// resolveIn resolves the directories of p (absolute, in the image) inside
// root, following symlinks as the image sees them (e.g. /bin -> usr/bin),
// at most 40 of them; the last element is not followed.
func resolveIn(root, p string) string {
	dir, file := path.Split(p)
	cur := "/"
	hops := 0
	parts := strings.Split(strings.Trim(dir, "/"), "/")
	for len(parts) > 0 {
		e := parts[0]
		parts = parts[1:]
		if e == "" || e == "." {
			continue
		}
		if e == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, e)
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil || hops >= 40 {
			cur = next
			continue
		}
		hops++
		if path.IsAbs(target) {
			cur = "/"
		}
		parts = append(strings.Split(strings.Trim(target, "/"), "/"), parts...)
	}
	return path.Join(cur, file)
}
