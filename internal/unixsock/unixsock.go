// Package unixsock creates the unix sockets of lazyfs's daemons (the
// snapshotter's gRPC and control sockets, the node's control API, the GPU
// pre-warm API) one way: born 0600, in a directory only root can enter.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// umaskMu serialises the process-wide umask change around a bind.
var umaskMu sync.Mutex

// Listen listens on a unix socket at path. The socket is created mode 0600
// (the umask is 0177 while it is bound, so it is never reachable by others,
// not even between bind and a chmod), inside a directory that is created
// mode 0700 if missing. An existing directory that others can enter is
// refused, naming the fix. A stale socket (nobody answering) is replaced;
// a live one is an error, so two daemons never share a socket.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("socket %s: directory %s has mode %04o; want 0700 (chmod 700 %s, or choose another path)", path, dir, st.Mode().Perm(), dir)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: in use by another process (another daemon listening)", path)
		}
		os.Remove(path)
	}
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}
