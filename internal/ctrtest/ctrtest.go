// Package ctrtest starts a private containerd (Debian's 1.6, or any on PATH)
// for tests: its root, state, sockets and opt directory live under a test's
// temporary directory, the CRI plugin is off, and proxy snapshotters can be
// plugged in. It is the one fixture for "a real containerd" in lazyfs's tests.
package ctrtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Skip skips t unless it runs as root with containerd, ctr and runc installed.
func Skip(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts containerd; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	for _, bin := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install containerd runc)", bin)
		}
	}
}

// Containerd is a running private containerd.
type Containerd struct {
	Dir       string // its private directory (config, root, state, log)
	Address   string // gRPC socket
	Namespace string // namespace Ctr uses
	cmd       *exec.Cmd
}

// CtrTimeout bounds one ctr command.
const CtrTimeout = 2 * time.Minute

// Start starts containerd with a proxy snapshotter for each name → socket in
// proxies, waits until it answers (deadline 30 s), and stops it in t.Cleanup.
// The namespace is unique to this process so that parallel runs on one
// machine do not meet.
func Start(t testing.TB, proxies map[string]string) *Containerd {
	t.Helper()
	return StartWith(t, Options{Proxies: proxies})
}

// Options configures StartWith.
type Options struct {
	// Proxies maps proxy snapshotter names to their sockets.
	Proxies map[string]string
	// CRI, when not empty, keeps the CRI plugin enabled and is appended to
	// the config (e.g. its [plugins."io.containerd.grpc.v1.cri"] tables).
	CRI string
}

// StartWith is Start with more choices.
func StartWith(t testing.TB, o Options) *Containerd {
	t.Helper()
	proxies := o.Proxies
	dir, err := os.MkdirTemp("", "ctrtest-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:       dir,
		Address:   filepath.Join(dir, "containerd.sock"),
		Namespace: fmt.Sprintf("lazyfs-test-%d", os.Getpid()),
	}
	var b strings.Builder
	disabled := `["io.containerd.grpc.v1.cri"]`
	if o.CRI != "" {
		disabled = "[]"
	}
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\ndisabled_plugins = %s\n[grpc]\n  address = %q\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled, c.Address, filepath.Join(dir, "opt"))
	// As docs/examples/containerd-config.toml: the exports line and the
	// transfer service's unpack_config are for containerd 2.x (its ctr
	// image pull, and CRI when it uses the transfer service); this checks
	// that 1.6 takes them.
	for name, sock := range proxies {
		fmt.Fprintf(&b, "[proxy_plugins.%s]\n  type = \"snapshot\"\n  address = %q\n  exports = { enable_remote_snapshot_annotations = \"true\" }\n", name, sock)
	}
	for name := range proxies {
		fmt.Fprintf(&b, "[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux\"\n  snapshotter = %q\n", name)
	}
	if len(proxies) > 0 {
		b.WriteString("[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux\"\n  snapshotter = \"overlayfs\"\n")
	}
	b.WriteString(o.CRI)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command("containerd", "--config", cfg)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { c.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			c.cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("containerd log (tail):\n%s", tail(string(log), 4000))
			}
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.Ctr("version")
		if err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd exited: %s", tail(string(log), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer within 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

// Ctr runs ctr against this containerd in its namespace, bounded by
// CtrTimeout, and returns its standard output (a container's output, for
// ctr run); its standard error, where containerd 2.x's ctr also prints
// warnings, is in the error only.
func (c *Containerd) Ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CtrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, tail(string(out)+stderr.String(), 2000))
	}
	return string(out), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
