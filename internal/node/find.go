package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"
)

// Servers says where to look for mount servers: the daemon's control
// socket, and standalone servers' state files.
type Servers struct {
	Control  string // "" or NoDaemon: no daemon
	NoDaemon bool
	StateDir string
	Timeout  time.Duration // per server (default 10 s)
}

func (s Servers) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 10 * time.Second
	}
	return s.Timeout
}

// ServedMount is a MountInfo and the server that serves it.
type ServedMount struct {
	MountInfo
	// Daemon is true for the daemon's mounts, false for standalone servers'.
	Daemon bool   `json:"daemon"`
	Socket string `json:"socket"`
}

// Find returns a client of the server that serves dir.
func (s Servers) Find(ctx context.Context, dir string) (*Client, error) {
	dir, err := cleanDir(dir)
	if err != nil {
		return nil, err
	}
	if !s.NoDaemon && s.Control != "" {
		c := NewClient(s.Control, s.timeout())
		if ms, err := c.List(ctx); err == nil {
			for _, m := range ms {
				if m.Dir == dir {
					return c, nil
				}
			}
		}
	}
	st, err := ReadMountState(s.StateDir, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a lazyfs mount: no daemon or standalone server serves it (lazyfs ls lists the mounts)", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: its mount state is unreadable (%w): remove the mount with lazyfs umount %s", dir, err, dir)
	}
	if !st.Process.Alive() {
		return nil, fmt.Errorf("%s: its server (pid %d) is gone; clean up with: lazyfs umount %s", dir, st.Process.PID, dir)
	}
	return NewClient(st.Socket, s.timeout()), nil
}

// List returns every mount of the daemon and of the standalone servers,
// sorted by directory. Servers that do not answer are reported in the
// error (joined), the others still listed.
func (s Servers) List(ctx context.Context) ([]ServedMount, error) {
	var out []ServedMount
	var errs []error
	if !s.NoDaemon && s.Control != "" {
		if _, err := os.Stat(s.Control); err == nil {
			c := NewClient(s.Control, s.timeout())
			ms, err := c.List(ctx)
			if err != nil {
				errs = append(errs, fmt.Errorf("daemon: %w", err))
			}
			for _, m := range ms {
				out = append(out, ServedMount{MountInfo: m, Daemon: true, Socket: s.Control})
			}
		}
	}
	states, err := ListMountStates(s.StateDir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, st := range states {
		ms, err := NewClient(st.Socket, s.timeout()).List(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("server of %s (pid %d): %w", st.Dir, st.Process.PID, err))
			continue
		}
		for _, m := range ms {
			out = append(out, ServedMount{MountInfo: m, Socket: st.Socket})
		}
	}
	// Mounts nobody here serves: left by a killed server (unmount them
	// with lazyfs umount), or served from another process we cannot see.
	seen := map[string]bool{}
	for _, m := range out {
		seen[m.Dir] = true
	}
	if dirs, err := LazyfsMounts(); err == nil {
		for _, d := range dirs {
			if !seen[d] {
				seen[d] = true
				out = append(out, ServedMount{MountInfo: MountInfo{Dir: d, Kind: KindUnserved}})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out, errors.Join(errs...)
}
