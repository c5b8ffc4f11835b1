package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcessID identifies a process by more than its PID, so a PID reused by
// an unrelated process after a crash is never taken for a mount server:
// the kernel's start time (clock ticks since boot, /proc/PID/stat field 22)
// and the command line must match too.
type ProcessID struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Cmdline   string `json:"cmdline"`
}

// SelfProcess returns this process's identity.
func SelfProcess() (ProcessID, error) { return ReadProcess(os.Getpid()) }

// ReadProcess reads the identity of the live process pid.
func ReadProcess(pid int) (ProcessID, error) {
	if pid <= 0 {
		return ProcessID{}, fmt.Errorf("pid %d: invalid", pid)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcessID{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	start, err := parseStartTime(stat)
	if err != nil {
		return ProcessID{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ProcessID{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	if len(cmd) > 64<<10 {
		cmd = cmd[:64<<10]
	}
	return ProcessID{PID: pid, StartTime: start, Cmdline: strings.TrimRight(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})), " ")}, nil
}

// parseStartTime returns field 22 of /proc/PID/stat. The command name
// (field 2) is in parentheses and may itself hold spaces and parentheses,
// so fields are counted after the last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	const field22 = 22 - 3 // f[0] is field 3 (state)
	if len(f) <= field22 {
		return 0, fmt.Errorf("stat: %d fields", len(f)+2)
	}
	return strconv.ParseUint(f[field22], 10, 64)
}

// Alive reports whether the process p names is still running: a process
// with its PID exists, is not a zombie, and has the same start time and
// command line.
func (p ProcessID) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	cur, err := ReadProcess(p.PID)
	if err != nil || cur.StartTime != p.StartTime || cur.Cmdline != p.Cmdline {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && len(stat) > i+2 && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	return true
}

// Signal sends sig to the process only if it is still the one p names.
// It holds a pidfd across the check and the signal, so a PID reused in
// between cannot receive it.
func (p ProcessID) Signal(sig unix.Signal) error {
	if p.PID <= 0 {
		return fmt.Errorf("pid %d: invalid", p.PID)
	}
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		return fmt.Errorf("pid %d: %w", p.PID, os.ErrProcessDone)
	}
	defer unix.Close(fd)
	if !p.Alive() {
		return fmt.Errorf("pid %d: %w (the pid now belongs to another process, or none)", p.PID, os.ErrProcessDone)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return fmt.Errorf("pid %d: %w", p.PID, err)
	}
	return nil
}
