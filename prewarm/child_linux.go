//go:build linux

package prewarm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// childSysProcAttr puts the child in its own process group (so a worker's
// own children die with it) and, for holders, asks the kernel to kill it if
// the daemon dies.
func childSysProcAttr(dieWithParent bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if dieWithParent {
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}

func killGroup(pid int, sig syscall.Signal) {
	if pid <= 0 {
		return
	}
	if err := syscall.Kill(-pid, sig); err != nil {
		syscall.Kill(pid, sig)
	}
}

func setCredential(a *syscall.SysProcAttr, c *syscall.Credential) { a.Credential = c }

// waitStopped waits until every thread of process pid is stopped (a
// SIGSTOP takes effect when each thread next runs, not when kill returns),
// the process is gone, or ctx ends.
func waitStopped(ctx context.Context, pid int) error {
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return nil // gone: nothing left to answer
		}
		stopped := true
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
			if err != nil {
				continue // the thread exited
			}
			// State is the field after the command name, which is in
			// parentheses and may hold anything.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				stopped = false
				break
			}
		}
		if stopped {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pid %d: not stopped yet: %w", pid, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// zombie reports whether process pid has exited and awaits its reaping.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}
