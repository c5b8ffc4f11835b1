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
			st, ok := procState(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
			if ok && st != 'T' && st != 't' { // !ok: the thread exited
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
	st, ok := procState(fmt.Sprintf("/proc/%d/stat", pid))
	return ok && st == 'Z'
}

// procState returns the state letter of a /proc stat file: the field after
// the command name, which is in parentheses and may hold anything.
func procState(path string) (byte, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, false
	}
	return b[i+2], true
}
