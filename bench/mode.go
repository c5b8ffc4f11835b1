package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Mode is one way of starting a workload cold. Adding a mode is one value
// that satisfies this interface, listed in Modes.
type Mode interface {
	// Name is the mode's name in flags, tables and JSON.
	Name() string
	// Check returns nil when the mode can run here, or an error saying
	// what is missing; the run then skips the mode with that note.
	Check(env *Env) error
	// Start wipes the mode's state (content store, snapshots, block cache),
	// starts its daemons afresh and returns a trial ready for one cold
	// start of the target. Nothing it does is timed.
	Start(ctx context.Context, env *Env, t Target) (Trial, error)
}

// Trial is one prepared cold start.
type Trial interface {
	// Run starts the workload and returns when it is ready, filling in
	// the phases as they pass.
	Run(ctx context.Context, ph *Phases) error
	// Daemons are the pids whose CPU time and peak RSS the sample reports.
	Daemons() []int
	// Close stops everything the trial started and removes its state.
	Close() error
}

// mountStatser is a Trial that can report its mount's own counters.
type mountStatser interface {
	MountStats(ctx context.Context) (*MountStats, error)
}

// Env is what every mode of a run shares.
type Env struct {
	// WorkDir is this run's temporary directory; a trial's files go below it.
	WorkDir string
	// Lazyfs is the lazyfs binary; tools next to it (lazyfs-snapshotter)
	// are found there too.
	Lazyfs string
	// Insecure is set when the registry speaks plain HTTP.
	Insecure bool
	// SockDir is a directory with a short path for the trials' unix
	// sockets (a socket path has at most 107 bytes); "" uses WorkDir.
	SockDir string
	// Timeout bounds every wait of a trial (default 10 minutes).
	Timeout time.Duration
	seq     int
	help    map[string]string // lazyfs SUB --help output, by SUB
}

// hasFlag reports whether the lazyfs binary's subcommand sub has --flag
// (its help output, asked once per run, lists it).
func (e *Env) hasFlag(sub, flag string) bool {
	h, ok := e.help[sub]
	if !ok {
		out, _ := exec.Command(e.Lazyfs, sub, "--help").Output()
		h = string(out)
		if e.help == nil {
			e.help = map[string]string{}
		}
		e.help[sub] = h
	}
	return helpHasFlag(h, flag)
}

// helpHasFlag finds --flag in a cobra help text.
func helpHasFlag(help, flag string) bool {
	for _, line := range strings.Split(help, "\n") {
		for _, f := range strings.Fields(line) {
			if strings.TrimSuffix(f, ",") == "--"+flag {
				return true
			}
		}
	}
	return false
}

// nextDir returns a fresh directory below WorkDir for a trial's files and
// one (mode 0700) below SockDir for its sockets and mount state.
func (e *Env) nextDir(prefix string) (dir, sockDir string, err error) {
	e.seq++
	dir = filepath.Join(e.WorkDir, fmt.Sprintf("%s-%d", prefix, e.seq))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	base := e.SockDir
	if base == "" {
		base = e.WorkDir
	}
	sockDir = filepath.Join(base, fmt.Sprintf("s%d", e.seq))
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return "", "", err
	}
	return dir, sockDir, nil
}

func (e *Env) timeout() time.Duration {
	if e.Timeout > 0 {
		return e.Timeout
	}
	return 10 * time.Minute
}

// Target is a workload with its image's references in the bench registry.
type Target struct {
	Workload *Workload
	Refs     ImageRefs
}

// lazyRef is the converted image a lazyfs mode starts: the profiled copy
// when profile is set.
func (t Target) lazyRef(profile bool) (string, error) {
	if !profile {
		return t.Refs.Lazy, nil
	}
	if t.Refs.Profiled == "" {
		return "", fmt.Errorf("workload %s: no recorded start-up profile (see the run's notes)", t.Workload.Name)
	}
	return t.Refs.Profiled, nil
}

// Phases split a sample's time to ready.
type Phases struct {
	// Pull is the image pull (full: fetch and unpack; mount: until the
	// mount is ready).
	Pull time.Duration
	// Create is setting up the container (snapshot, container record, or
	// the mount namespace of a chroot).
	Create time.Duration
	// Run is from starting the process to ready.
	Run time.Duration
	// ClientCPU is the CPU time of client commands (ctr, lazyfs pull).
	ClientCPU time.Duration
	// Output is the tail of the workload's output.
	Output string
}

// SkipError says why a mode cannot run here.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return e.Reason }

func skipf(format string, args ...any) error { return &SkipError{Reason: fmt.Sprintf(format, args...)} }

// Modes returns the known modes by name, in their default order.
func Modes() []Mode {
	return []Mode{FullMode{}, MountMode{}, MountMode{Profile: true}, MountMode{Warm: true}, SnapshotterMode{Profile: false}, SnapshotterMode{Profile: true}, SnapshotterMode{Warm: true}, StargzMode{}, StargzMode{Profile: true}}
}

// usesProfile reports whether a mode starts from the workload's recorded
// start-up profile (ImageRefs.Profiled), which the run then records.
func usesProfile(m Mode) bool {
	switch m := m.(type) {
	case MountMode:
		return m.Profile
	case SnapshotterMode:
		return m.Profile
	case StargzMode:
		return m.Profile
	}
	return false
}

// ModeByName finds a mode.
func ModeByName(name string) (Mode, error) {
	var names []string
	for _, m := range Modes() {
		if m.Name() == name {
			return m, nil
		}
		names = append(names, m.Name())
	}
	return nil, fmt.Errorf("mode %q: unknown (known: %s)", name, strings.Join(names, ", "))
}

// runToReady starts cmd and waits until it is ready: its stdout matched
// the workload's ready line (then its process group is killed), or it exited
// 0. marker, if not nil, is the read end of a pipe whose write end
// (markerW, closed here once cmd started) cmd writes a line to when its
// set-up is done: the end of the create phase, measured from start.
func runToReady(ctx context.Context, w *Workload, cmd *exec.Cmd, marker, markerW *os.File, timeout time.Duration) (create, run time.Duration, output string, err error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, "", err
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, "", fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	if markerW != nil {
		markerW.Close()
	}
	created := start
	markerDone := make(chan struct{})
	if marker != nil {
		go func() {
			defer close(markerDone)
			r := bufio.NewReader(marker)
			if _, err := r.ReadString('\n'); err == nil {
				created = time.Now()
			}
		}()
	} else {
		close(markerDone)
	}
	var out tailBuffer
	lineSeen := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := false
		for sc.Scan() {
			out.Write(append(sc.Bytes(), '\n'))
			if !seen && w.ReadyLine != nil && w.ReadyLine.Match(sc.Bytes()) {
				seen = true
				close(lineSeen)
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	exited := make(chan error, 1)
	go func() { <-readDone; exited <- cmd.Wait() }()
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var end time.Time
	select {
	case <-lineSeen:
		end = time.Now()
		kill()
		<-exited
	case err = <-exited:
		end = time.Now()
		if err != nil {
			err = fmt.Errorf("workload %s: %w: %s%s", w.Name, err, out.String(), stderr.String())
		} else if w.ReadyLine != nil {
			err = fmt.Errorf("workload %s: exited without printing a line matching %s: %s", w.Name, w.ReadyLine, out.String())
		}
	case <-timer.C:
		kill()
		<-exited
		if marker != nil {
			marker.Close()
			<-markerDone
		}
		return 0, 0, out.String(), fmt.Errorf("workload %s: not ready after %v: %s%s", w.Name, timeout, out.String(), stderr.String())
	case <-ctx.Done():
		kill()
		<-exited
		if marker != nil {
			marker.Close()
			<-markerDone
		}
		return 0, 0, out.String(), ctx.Err()
	}
	if marker != nil {
		marker.Close()
		<-markerDone
	}
	if created.After(end) {
		created = end
	}
	return created.Sub(start), end.Sub(created), out.String(), err
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = slices.Clone(t.b[len(t.b)-4096:])
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// DropCaches writes back dirty pages and drops the page cache, dentries and
// inodes, so a sample starts with nothing cached in the kernel.
func DropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// unmountUnder lazily unmounts every mount point at or below dir, deepest
// first: the safety net when a trial's daemon left mounts behind.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMount(f[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// stopProcess sends SIGTERM to a process (group, when group) and waits for
// done, then SIGKILL after grace.
func stopProcess(pid int, group bool, done <-chan struct{}, grace time.Duration) {
	target := pid
	if group {
		target = -pid
	}
	_ = syscall.Kill(target, syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(target, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(grace):
	}
}
