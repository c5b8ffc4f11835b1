//go:build linux

package prewarm

import "syscall"

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
