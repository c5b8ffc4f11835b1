package prewarm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Child kinds.
const (
	kindHolder = "holder"
	kindWorker = "worker"
)

// childSpec describes a holder or warm-worker process to start.
type childSpec struct {
	kind   string
	uuid   string
	argv   []string
	env    []string
	socket string // worker socket path, "" for holders
	// envAllow filters the daemon's environment (DefaultEnvAllow if nil);
	// env is added after it.
	envAllow []string
	// cred, when set, runs the child as this uid/gid (no supplementary
	// groups).
	cred *syscall.Credential
	// started, when set, is called with the pid right after the start,
	// before READY (so the daemon knows the process is its own).
	started func(pid int)
}

// EnvWorkerFD names the variable that tells a worker which inherited file
// descriptor is its listening socket (always 3). The daemon binds the
// socket itself in its root-only directory, so a worker that runs as
// another uid can still serve it; LAZYFS_WORKER_SOCKET is the path claimers
// connect to.
const EnvWorkerFD = "LAZYFS_WORKER_FD"

// child is one running holder or warm worker. It is owned by the Manager
// until handed over to a claimer.
type child struct {
	spec    childSpec
	cmd     *exec.Cmd
	pid     int
	ready   HolderReady
	stdin   io.WriteCloser
	done    chan struct{} // closed once the process was reaped
	exitErr error         // valid after done

	stopping   atomic.Bool // set before an intentional kill
	handedOver atomic.Bool

	stderrMu sync.Mutex
	stderr   []byte // tail of stderr
}

const stderrTail = 4096

func (c *child) Write(p []byte) (int, error) {
	c.stderrMu.Lock()
	defer c.stderrMu.Unlock()
	c.stderr = append(c.stderr, p...)
	if len(c.stderr) > stderrTail {
		c.stderr = c.stderr[len(c.stderr)-stderrTail:]
	}
	return len(p), nil
}

func (c *child) stderrTail() string {
	c.stderrMu.Lock()
	defer c.stderrMu.Unlock()
	return strings.TrimSpace(string(c.stderr))
}

// startChild starts the process and waits until it prints its READY line,
// fails, exits, or timeout passes. On any failure the process is killed and
// reaped before startChild returns.
func startChild(ctx context.Context, spec childSpec, timeout time.Duration, log *slog.Logger) (*child, error) {
	if len(spec.argv) == 0 {
		return nil, fmt.Errorf("gpu %s: %s: empty command: %w", spec.uuid, spec.kind, ErrHolder)
	}
	c := &child{spec: spec, done: make(chan struct{})}
	cmd := exec.Command(spec.argv[0], spec.argv[1:]...)
	allow := spec.envAllow
	if allow == nil {
		allow = DefaultEnvAllow
	}
	cmd.Env = append(filterEnv(os.Environ(), allow), spec.env...)
	cmd.SysProcAttr = childSysProcAttr(spec.kind != kindWorker) // handed-over per-GPU workers outlive the daemon
	if spec.cred != nil {
		setCredential(cmd.SysProcAttr, spec.cred)
	}
	if spec.socket != "" {
		f, err := listenWorkerSocket(spec.socket)
		if err != nil {
			return nil, fmt.Errorf("gpu %s: %s: %w", spec.uuid, spec.kind, err)
		}
		defer f.Close() // the child has its own copy once started
		cmd.ExtraFiles = []*os.File{f}
		cmd.Env = append(cmd.Env, EnvWorkerFD+"=3")
	}
	cmd.Stderr = c
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		if spec.socket != "" {
			os.Remove(spec.socket)
		}
		return nil, fmt.Errorf("gpu %s: start %s %q: %v: %w", spec.uuid, spec.kind, spec.argv[0], err, ErrHolder)
	}
	c.cmd, c.pid = cmd, cmd.Process.Pid
	if spec.started != nil {
		spec.started(c.pid)
	}
	type result struct {
		r   HolderReady
		err error
	}
	readyc := make(chan result, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		br := bufio.NewReader(stdout)
		r, err := readReady(br)
		readyc <- result{r, err}
		// Keep draining so a chatty child never blocks on a full pipe.
		for {
			line, err := br.ReadString('\n')
			if line != "" && log != nil {
				log.Debug("child output", "gpu", spec.uuid, "kind", spec.kind, "pid", c.pid, "line", strings.TrimSpace(line))
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		<-readerDone
		c.exitErr = cmd.Wait()
		if spec.socket != "" {
			os.Remove(spec.socket)
		}
		close(c.done)
	}()

	fail := func(err error) (*child, error) {
		c.kill()
		<-c.done
		msg := err.Error()
		if t := c.stderrTail(); t != "" {
			msg += ": stderr: " + lastLine(t)
		}
		return nil, fmt.Errorf("gpu %s: %s pid %d: %s: %w", spec.uuid, spec.kind, c.pid, msg, ErrHolder)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-readyc:
		if r.err != nil {
			return fail(r.err)
		}
		c.ready = r.r
		if c.ready.PID == 0 {
			c.ready.PID = c.pid
		}
		return c, nil
	case <-c.done:
		return fail(fmt.Errorf("exited before ready: %v", c.exitErr))
	case <-timer.C:
		return fail(fmt.Errorf("not ready after %v", timeout))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// kill sends SIGKILL to the child's process group.
func (c *child) kill() {
	c.stopping.Store(true)
	killGroup(c.pid, syscall.SIGKILL)
}

// stop kills the child and returns how long it took until it was reaped,
// which is when the driver has torn its context down.
func (c *child) stop() time.Duration {
	t0 := time.Now()
	c.kill()
	<-c.done
	return time.Since(t0)
}

// terminate asks politely (SIGTERM to the group), then kills after wait.
func (c *child) terminate(wait time.Duration) time.Duration {
	t0 := time.Now()
	c.stopping.Store(true)
	killGroup(c.pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(wait):
		c.kill()
		<-c.done
	}
	return time.Since(t0)
}

// exitedOnItsOwn reports whether the child's process has already ended
// (reaped, or a zombie) though done is not closed yet, and then waits up
// to wait for the reaper to close it: the child was not stopped by us.
func (c *child) exitedOnItsOwn(wait time.Duration) bool {
	if syscall.Kill(c.pid, 0) == nil && !zombie(c.pid) {
		return false
	}
	select {
	case <-c.done:
	case <-time.After(wait):
	}
	return true
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
