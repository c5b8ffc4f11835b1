package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// UnmountConfig configures UnmountDir.
type UnmountConfig struct {
	// StateDir is where standalone servers record their state (default DefaultStateDir).
	StateDir string
	// Control is the daemon's control socket (default DefaultControlSocket; "" with NoDaemon).
	Control  string
	NoDaemon bool
	// Timeout bounds the wait for a standalone server to stop (default 10 s).
	Timeout time.Duration
}

// ErrServerAlive means a mount was unmounted (or detached) but its server
// is still running: files in it are still open, or the mount lives on in
// another mount namespace. UnmountDir never reports success then.
var ErrServerAlive = errors.New("mount server still running")

// UnmountDir unmounts the lazyfs mount at dir, wherever it is served: by
// the daemon (asked over its control socket), by a standalone server
// (asked over its socket, SIGTERM if it does not answer, then waited
// for), or by nobody (a stale mount, detached). A state file whose
// process is gone or is now another process (PID reuse) is removed and
// that process never signalled. It returns a one-line report.
func UnmountDir(ctx context.Context, dir string, c UnmountConfig) (string, error) {
	dir, err := cleanDir(dir)
	if err != nil {
		return "", err
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Control == "" && !c.NoDaemon {
		c.Control = DefaultControlSocket
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if !c.NoDaemon {
		cl := NewClient(c.Control, c.Timeout)
		if ms, err := cl.List(ctx); err == nil {
			for _, m := range ms {
				if m.Dir == dir {
					note, err := cl.UnmountNote(ctx, dir)
					if err != nil {
						return "", fmt.Errorf("unmount %s (daemon at %s): %w", dir, c.Control, err)
					}
					return withNote(fmt.Sprintf("unmounted %s (served by the daemon)", dir), note), nil
				}
			}
		}
	}
	statePath, sock, _ := StatePaths(c.StateDir, dir)
	st, serr := ReadMountState(c.StateDir, dir)
	mounted, _ := IsLazyfsMount(dir)
	if serr != nil && !errors.Is(serr, os.ErrNotExist) {
		// A corrupt state file names nobody we could trust.
		os.Remove(statePath)
		st = nil
	}
	if st == nil && !mounted {
		return "", fmt.Errorf("%s is not a lazyfs mount", dir)
	}
	report := "unmounted " + dir
	if st != nil {
		if st.Process.Alive() {
			note, err := stopServer(ctx, st, dir, c.Timeout)
			if err != nil {
				return "", err
			}
			report = withNote(report, note)
		} else {
			report += fmt.Sprintf(" (its server, pid %d, was gone; the pid is not signalled)", st.Process.PID)
			os.Remove(statePath)
			os.Remove(sock)
		}
	}
	if mounted, _ := IsLazyfsMount(dir); mounted {
		if err := DetachMount(dir); err != nil {
			return "", err
		}
		if st == nil {
			report += " (a stale mount without a server)"
		}
	}
	return report, nil
}

// stopServer asks the standalone server st to unmount dir and waits until
// its process is gone.
func stopServer(ctx context.Context, st *MountState, dir string, timeout time.Duration) (string, error) {
	cl := NewClient(st.Socket, timeout)
	note, err := cl.UnmountNote(ctx, dir)
	switch {
	case err == nil:
	case errors.Is(err, ErrNotMounted):
		// Unmounted already; the server is on its way out.
	default:
		// Not answering: ask with a signal (only that very process).
		if serr := st.Process.Signal(unix.SIGTERM); serr != nil && st.Process.Alive() {
			return "", fmt.Errorf("unmount %s: server pid %d: %v; signal: %w", dir, st.Process.PID, err, serr)
		}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for st.Process.Alive() {
		select {
		case <-tick.C:
		case <-deadline.C:
			where := "files in it are still open (the mount is detached, and served until they are closed)"
			if m, _ := IsLazyfsMount(dir); m {
				where = "the mount is still there"
			}
			return "", fmt.Errorf("unmount %s: %w: pid %d after %v: %s, or the mount lives on in another mount namespace; "+
				"it exits when those are gone (or kill %d to end it now)", dir, ErrServerAlive, st.Process.PID, timeout, where, st.Process.PID)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return note, nil
}

func withNote(report, note string) string {
	if note == "" {
		return report
	}
	return report + " (" + note + ")"
}
