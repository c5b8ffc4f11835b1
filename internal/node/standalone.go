package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
)

// DefaultStateDir is where standalone mount servers record their state
// (a 0700 directory; files 0600).
const DefaultStateDir = "/run/lazyfs"

// MountState is what a standalone mount server records so that umount,
// stats and ls find it: its identity (not just a PID), its mount point,
// image, control socket and log.
type MountState struct {
	Process ProcessID `json:"process"`
	Dir     string    `json:"dir"`
	Ref     string    `json:"ref"`
	Socket  string    `json:"socket"`
	Log     string    `json:"log"`
}

// maxStateFile bounds a state file read back.
const maxStateFile = 1 << 20

// StatePaths returns the state file, control socket and log paths of the
// standalone mount server of dir.
func StatePaths(stateDir, dir string) (state, sock, log string) {
	sum := sha256.Sum256([]byte(dir))
	base := filepath.Join(stateDir, "mounts", hex.EncodeToString(sum[:8]))
	return base + ".json", base + ".sock", base + ".log"
}

// ReadMountState reads the state recorded for dir (os.ErrNotExist if none).
func ReadMountState(stateDir, dir string) (*MountState, error) {
	path, _, _ := StatePaths(stateDir, dir)
	return readStateFile(path)
}

func readStateFile(path string) (*MountState, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st MountState
	if err := json.NewDecoder(io.LimitReader(f, maxStateFile)).Decode(&st); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return &st, nil
}

// maxStateFiles bounds how many state files ListMountStates reads.
const maxStateFiles = 4096

// ListMountStates returns the state of every standalone mount server
// recorded in stateDir whose process is still alive (stale files are skipped).
func ListMountStates(stateDir string) ([]MountState, error) {
	ents, err := os.ReadDir(filepath.Join(stateDir, "mounts"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []MountState
	for i, e := range ents {
		if i >= maxStateFiles {
			break
		}
		if !strings.HasSuffix(e.Name(), ".json") || !e.Type().IsRegular() {
			continue
		}
		st, err := readStateFile(filepath.Join(stateDir, "mounts", e.Name()))
		if err != nil || !st.Process.Alive() {
			continue
		}
		out = append(out, *st)
	}
	return out, nil
}

// StandaloneConfig configures ServeStandalone.
type StandaloneConfig struct {
	Node     Config
	Ref, Dir string
	Image    ImageOptions
	// StateDir holds the state file and control socket (default DefaultStateDir).
	StateDir string
	// Ready, if set, is called once the mount is ready, with its stats.
	Ready func(image.Stats)
}

// ServeStandalone is a mount server without a daemon: a private Node with
// one merged image mount at Dir, its control API on a per-mount socket
// (so umount, stats and ls work as with the daemon), and a state file
// naming this process. It returns when the mount is unmounted (from
// outside, or over the socket), or after ctx is done and the mount is
// unmounted: if files in the mount are still open then, the mount is
// detached (its directory is free at once) and served until the last is
// closed, so readers never see a dead mount.
func ServeStandalone(ctx context.Context, c StandaloneConfig) (err error) {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	log := c.Node.Logger
	if log == nil {
		log = discard()
		c.Node.Logger = log
	}
	statePath, sockPath, logPath := StatePaths(c.StateDir, c.Dir)
	if err := MkdirPrivate(filepath.Dir(statePath)); err != nil {
		return err
	}
	if c.Node.Root == "" {
		c.Node.Root = strings.TrimSuffix(statePath, ".json") + ".d"
		defer os.RemoveAll(c.Node.Root)
	}
	n, err := New(ctx, c.Node)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := n.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	m, err := n.MountImage(ctx, c.Ref, c.Dir, c.Image)
	if err != nil {
		return err
	}
	ln, err := Listen(sockPath)
	if err != nil {
		n.Unmount(context.Background(), c.Dir)
		return err
	}
	sctx, stopServing := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); ServeListener(sctx, ln, n.Handler()) }()
	defer func() { stopServing(); <-served }()
	self, err := SelfProcess()
	if err != nil {
		return err
	}
	st := MountState{Process: self, Dir: c.Dir, Ref: c.Ref, Socket: sockPath, Log: logPath}
	if err := WriteJSONPrivate(statePath, st); err != nil {
		n.Unmount(context.Background(), c.Dir)
		return err
	}
	defer removeStateIfOurs(statePath, self)
	log.Info("mounted", "image", c.Ref, "dir", c.Dir, "ready", m.Ready(), "layers", len(m.Image().Layers))
	if c.Ready != nil {
		c.Ready(m.Stats())
	}
	select {
	case <-m.Done():
		log.Info("unmounted", "dir", c.Dir)
		return nil
	case <-ctx.Done():
	}
	log.Info("signalled: unmounting", "dir", c.Dir)
	uctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Unmount(uctx, c.Dir); err != nil && !errors.Is(err, ErrNotMounted) {
		return fmt.Errorf("unmount %s: %w", c.Dir, err)
	}
	select {
	case <-m.Done():
		return nil
	default:
		log.Warn("files are still open in the mount: detached it; serving them until they are closed", "dir", c.Dir)
		<-m.Done()
		log.Info("last open file closed; exiting", "dir", c.Dir)
		return nil
	}
}

// removeStateIfOurs removes the state file unless another server has
// replaced it since.
func removeStateIfOurs(path string, self ProcessID) {
	if st, err := readStateFile(path); err == nil && st.Process == self {
		os.Remove(path)
	}
}

// Notifier reports a spawned server's readiness to its parent over an
// inherited pipe ("ready JSON" or "error MESSAGE", one line).
type Notifier struct{ f *os.File }

// NewNotifier wraps the inherited fd (a negative fd: a no-op Notifier).
func NewNotifier(fd int) *Notifier {
	if fd < 0 {
		return &Notifier{}
	}
	return &Notifier{f: os.NewFile(uintptr(fd), "notify")}
}

// Ready reports the mount ready, then closes the pipe.
func (n *Notifier) Ready(st image.Stats) {
	if n.f == nil {
		return
	}
	b, _ := json.Marshal(st)
	fmt.Fprintf(n.f, "ready %s\n", b)
	n.f.Close()
	n.f = nil
}

// Fail reports err (if not yet ready), then closes the pipe.
func (n *Notifier) Fail(err error) {
	if n.f == nil {
		return
	}
	fmt.Fprintf(n.f, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	n.f.Close()
	n.f = nil
}

// SpawnConfig configures Spawn.
type SpawnConfig struct {
	// Exe and Args start the server; it gets the pipe as fd 3 and must
	// report on it with a Notifier.
	Exe  string
	Args []string
	// Log receives the server's stdout and stderr (created 0600, appended).
	Log string
	// Timeout bounds the wait for readiness (default 10 minutes: --pull of
	// a large image).
	Timeout time.Duration
}

// Spawn starts a mount server in its own session and waits until it
// reports the mount ready (its pid and stats) or failed. When ctx ends
// first (Ctrl-C), it stops the server (SIGTERM, SIGKILL after 5s), removes
// the log it created, and returns ctx's error.
// spawnStopGrace is how long an interrupted Spawn waits for the child to
// stop after SIGTERM before killing it.
const spawnStopGrace = 5 * time.Second

func Spawn(ctx context.Context, c SpawnConfig) (int, image.Stats, error) {
	var st image.Stats
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if err := MkdirPrivate(filepath.Dir(c.Log)); err != nil {
		return 0, st, err
	}
	_, statErr := os.Lstat(c.Log)
	newLog := errors.Is(statErr, os.ErrNotExist)
	logf, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, st, err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, st, err
	}
	defer pr.Close()
	child := exec.Command(c.Exe, c.Args...)
	child.Stdout, child.Stderr, child.Stdin = logf, logf, nil
	child.ExtraFiles = []*os.File{pw}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		pw.Close()
		return 0, st, fmt.Errorf("start mount server: %w", err)
	}
	pw.Close()
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	type line struct {
		s   string
		err error
	}
	lines := make(chan line, 1)
	go func() {
		s, err := bufio.NewReader(io.LimitReader(pr, 1<<20)).ReadString('\n')
		lines <- line{s, err}
	}()
	var l line
	t := time.NewTimer(c.Timeout)
	defer t.Stop()
	select {
	case l = <-lines:
	case <-t.C:
		child.Process.Kill()
		<-done
		return 0, st, fmt.Errorf("mount server not ready after %v (killed; log %s)", c.Timeout, c.Log)
	case <-ctx.Done():
		// Interrupted (Ctrl-C): stop the child as a signal stops a
		// foreground server, so it unmounts whatever it had mounted and
		// removes its state; kill it if it does not stop.
		child.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(spawnStopGrace):
			child.Process.Kill()
			<-done
		}
		if newLog {
			os.Remove(c.Log)
		}
		return 0, st, ctx.Err()
	}
	if msg, ok := strings.CutPrefix(l.s, "ready "); ok {
		if err := json.Unmarshal([]byte(msg), &st); err != nil {
			return 0, st, fmt.Errorf("mount server: %w", err)
		}
		pid := child.Process.Pid
		// The child lives on in its own session; the Wait goroutine ends
		// with this process.
		return pid, st, nil
	}
	if msg, ok := strings.CutPrefix(l.s, "error "); ok {
		<-done
		return 0, st, errors.New(strings.TrimSpace(msg))
	}
	err = <-done
	tail, _ := os.ReadFile(c.Log)
	return 0, st, fmt.Errorf("mount server exited before the mount was ready (%v, %v): %s", err, l.err, lastLines(string(tail), 10))
}

func lastLines(s string, n int) string {
	if len(s) > 64<<10 {
		s = s[len(s)-64<<10:]
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
