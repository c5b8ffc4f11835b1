package node

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// DefaultLogLimit bounds a mount server's log file; one previous file
// (PATH.1) is kept, so a mount's logs never take more than twice this.
const DefaultLogLimit = 4 << 20

// Log is a size-bounded log file (mode 0600): when a write would take it
// past its limit, the file is renamed to PATH.1 (replacing the previous
// one) and a new file is started. With RedirectStdio the process's stdout
// and stderr follow the current file, so panics and stray prints are
// bounded too. A Log is safe for concurrent use.
type Log struct {
	path  string
	limit int64
	stdio bool

	mu   sync.Mutex
	f    *os.File
	size int64
}

// OpenLog opens (appending) the log at path, limit bytes per file
// (≤ 0: DefaultLogLimit). With stdio, fds 1 and 2 are pointed at it.
func OpenLog(path string, limit int64, stdio bool) (*Log, error) {
	if limit <= 0 {
		limit = DefaultLogLimit
	}
	l := &Log{path: path, limit: limit, stdio: stdio}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("log %s: %w", l.path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("log %s: %w", l.path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if l.stdio {
		for _, fd := range []int{1, 2} {
			if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
				f.Close()
				return fmt.Errorf("log %s: redirect fd %d: %w", l.path, fd, err)
			}
		}
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first when p would not fit.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size+int64(len(p)) > l.limit && l.size > 0 {
		if err := os.Rename(l.path, l.path+".1"); err == nil {
			if err := l.open(); err != nil {
				return 0, err
			}
		}
	}
	total := len(p)
	if int64(len(p)) > l.limit {
		p = p[:l.limit] // one line larger than the whole budget is cut
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	if err != nil {
		return n, err
	}
	return total, nil
}

// Close closes the current file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
