package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// containerdNamespace is the containerd namespace the harness works in.
const containerdNamespace = "lazyfs-bench"

// containerd is a private containerd daemon: root, state, sockets and opt
// directory all under one directory, the CRI plugin off.
type containerd struct {
	dir  string
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

// proxySnapshotter is a proxy snapshotter plugin entry for the config.
type proxySnapshotter struct{ name, address string }

// startContainerd writes the config and starts containerd, then waits until
// it answers.
// Its sockets go in sockDir.
func startContainerd(ctx context.Context, dir, sockDir string, proxies []proxySnapshotter, timeout time.Duration) (*containerd, error) {
	c := &containerd{dir: dir, sock: filepath.Join(sockDir, "containerd.sock"), done: make(chan struct{})}
	var b strings.Builder
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n", filepath.Join(dir, "root"), filepath.Join(dir, "state"))
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n", c.sock, c.sock+".ttrpc")
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(dir, "opt"))
	for _, p := range proxies {
		fmt.Fprintf(&b, "[proxy_plugins.%s]\n  type = \"snapshot\"\n  address = %q\n", p.name, p.address)
	}
	cfg := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command("containerd", "--config", cfg)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	err = waitFor(ctx, "containerd "+c.sock, timeout, 50*time.Millisecond, func() error {
		select {
		case <-c.done:
			b, _ := os.ReadFile(logf.Name())
			return permanent(fmt.Errorf("exited: %s", lastLines(string(b), 5)))
		default:
		}
		_, err := c.ctr(ctx, "version")
		return err
	})
	if err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// ctr runs a ctr command against this daemon, in the bench namespace.
func (c *containerd) ctr(ctx context.Context, args ...string) (*os.ProcessState, error) {
	cmd := c.ctrCmd(ctx, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return cmd.ProcessState, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
	}
	return cmd.ProcessState, nil
}

func (c *containerd) ctrCmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ctr", append([]string{"--address", c.sock, "--namespace", containerdNamespace}, args...)...)
}

func (c *containerd) pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// removeContainer kills and deletes a container's task and the container.
func (c *containerd) removeContainer(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = c.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
	_ = waitFor(ctx, "task "+id, 10*time.Second, 50*time.Millisecond, func() error {
		_, err := c.ctr(ctx, "tasks", "delete", "--force", id)
		if err != nil && strings.Contains(err.Error(), "not found") {
			return nil
		}
		return err
	})
	_, _ = c.ctr(ctx, "containers", "delete", id)
}

// stop stops containerd and any shim it left, then unmounts what is left
// below its directory.
func (c *containerd) stop() error {
	if c.cmd != nil && c.cmd.Process != nil {
		stopProcess(c.cmd.Process.Pid, false, c.done, 10*time.Second)
	}
	for _, pid := range processesWithArg(c.sock) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return unmountUnder(c.dir)
}

// processesWithArg lists processes that have arg in their command line:
// the shims of this harness's own containerd (its socket path is unique).
func processesWithArg(arg string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// ctrTrial runs a workload through containerd: pull (pullArgs, a ctr or
// other client command line), containers create, tasks start.
type ctrTrial struct {
	env     *Env
	t       Target
	dir     string
	sockDir string
	ctd     *containerd
	ref     string
	snap    string   // snapshotter name
	pull    []string // pull command; nil: ctr images pull
	id      string
	extra   []int  // further daemon pids (a snapshotter)
	onClose func() // stops further daemons
}

func (tr *ctrTrial) Run(ctx context.Context, ph *Phases) error {
	ctx, cancel := context.WithTimeout(ctx, tr.env.timeout())
	defer cancel()
	start := time.Now()
	pull := tr.pull
	var cmd *exec.Cmd
	if pull == nil {
		args := []string{"images", "pull", "--snapshotter", tr.snap}
		if tr.env.Insecure {
			args = append(args, "--plain-http")
		}
		cmd = tr.ctd.ctrCmd(ctx, append(args, tr.ref)...)
	} else {
		cmd = exec.CommandContext(ctx, pull[0], pull[1:]...)
	}
	out, err := cmd.CombinedOutput()
	ph.ClientCPU += cpuOf(cmd.ProcessState)
	if err != nil {
		return fmt.Errorf("pull %s: %w: %s", tr.ref, err, lastLines(string(out), 5))
	}
	ph.Pull = time.Since(start)

	start = time.Now()
	tr.id = fmt.Sprintf("bench-%d-%d", os.Getpid(), tr.env.seq)
	ps, err := tr.ctd.ctr(ctx, append([]string{"containers", "create", "--snapshotter", tr.snap, "--", tr.ref, tr.id}, tr.t.Workload.Cmd...)...)
	ph.ClientCPU += cpuOf(ps)
	if err != nil {
		tr.id = ""
		return err
	}
	ph.Create = time.Since(start)

	run := tr.ctd.ctrCmd(context.WithoutCancel(ctx), "tasks", "start", tr.id)
	_, ph.Run, ph.Output, err = runToReady(ctx, tr.t.Workload, run, nil, nil, tr.env.timeout())
	return err
}

func (tr *ctrTrial) Daemons() []int {
	return append([]int{tr.ctd.pid()}, tr.extra...)
}

func (tr *ctrTrial) Close() error {
	if tr.ctd != nil {
		if tr.id != "" {
			tr.ctd.removeContainer(tr.id)
		}
		tr.ctd.stop()
	}
	if tr.onClose != nil {
		tr.onClose()
	}
	err := unmountUnder(tr.dir)
	if rerr := os.RemoveAll(tr.dir); err == nil {
		err = rerr
	}
	os.RemoveAll(tr.sockDir)
	return err
}

// FullMode is today's path: containerd pulls the plain (gzip) image whole,
// unpacks it into overlayfs snapshots, and runc runs the workload.
type FullMode struct{}

var _ Mode = FullMode{}

// Name implements Mode.
func (FullMode) Name() string { return "full" }

// Check implements Mode.
func (FullMode) Check(*Env) error {
	if os.Geteuid() != 0 {
		return skipf("needs root (containerd)")
	}
	for _, b := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			return skipf("no %s on PATH (apt-get install containerd runc)", b)
		}
	}
	return nil
}

// Start implements Mode.
func (m FullMode) Start(ctx context.Context, env *Env, t Target) (Trial, error) {
	dir, sockDir, err := env.nextDir(m.Name())
	if err != nil {
		return nil, err
	}
	ctd, err := startContainerd(ctx, dir, sockDir, nil, env.timeout())
	if err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(sockDir)
		return nil, err
	}
	return &ctrTrial{env: env, t: t, dir: dir, sockDir: sockDir, ctd: ctd, ref: t.Refs.Plain, snap: "overlayfs"}, nil
}
