//go:build !linux

package prewarm

import (
	"context"
	"os"
	"syscall"
)

func childSysProcAttr(bool) *syscall.SysProcAttr { return &syscall.SysProcAttr{} }

func setCredential(*syscall.SysProcAttr, *syscall.Credential) {}

func killGroup(pid int, sig syscall.Signal) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Signal(sig)
	}
}

func waitStopped(context.Context, int) error { return nil }

func zombie(int) bool { return false }
