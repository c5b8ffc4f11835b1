package prewarm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultWorkerDir is where worker sockets live unless configured: a
// directory only root can enter, never $TMPDIR (issue 9).
const DefaultWorkerDir = "/run/lazyfs/workers"

// ErrInsecureDir means a directory the daemon would put worker sockets in
// is not safe: a symlink, not a directory, owned by someone else, or open
// to others.
var ErrInsecureDir = errors.New("insecure directory")

// SecureDir makes sure dir exists as a real directory owned by the daemon's
// effective uid with mode 0700, creating it (and missing parents, 0755) if
// needed. An existing dir is never repaired: a symlink, a non-directory,
// a foreign owner, or any group/other permission bit is refused with
// ErrInsecureDir, and so is a parent that others may write to without the
// sticky bit (they could swap the directory). No symlink is followed: the
// final check opens dir with O_NOFOLLOW and inspects what it opened.
func SecureDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("worker dir %s: not an absolute path: %w", dir, ErrInsecureDir)
	}
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("worker dir %s: %w", dir, err)
	}
	if err := checkAncestors(parent); err != nil {
		return fmt.Errorf("worker dir %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("worker dir %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("worker dir %s: a symlink or not a directory: %w", dir, ErrInsecureDir)
		}
		return fmt.Errorf("worker dir %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("worker dir %s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("worker dir %s: owned by uid %d, not %d: %w", dir, st.Uid, os.Geteuid(), ErrInsecureDir)
	}
	if st.Mode&0o077 != 0 {
		return fmt.Errorf("worker dir %s: mode %04o, want 0700: %w", dir, st.Mode&0o7777, ErrInsecureDir)
	}
	return nil
}

// checkAncestors refuses a path with a directory others could replace
// entries of: writable by group/other without the sticky bit, or owned by
// neither root nor us. Symlinked ancestors are allowed (/var/run → /run)
// but the check applies to what they point at.
func checkAncestors(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	for p := real; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
			return fmt.Errorf("parent %s owned by uid %d: %w", p, st.Uid, ErrInsecureDir)
		}
		if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
			return fmt.Errorf("parent %s is writable by others (mode %04o): %w", p, st.Mode&0o7777, ErrInsecureDir)
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// listenWorkerSocket creates the worker's listening socket at path (inside
// a SecureDir) and returns it as a file to pass to the child; the daemon
// keeps no listener of its own. A stale file at path is removed first.
func listenWorkerSocket(path string) (*os.File, error) {
	if err := SecureDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("worker socket %s: %w", path, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("worker socket %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("worker socket %s: %w", path, err)
	}
	f, err := l.File()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("worker socket %s: %w", path, err)
	}
	return f, nil
}

// checkSocket verifies, without following symlinks, that path is a socket
// in a secure directory: what a claim hands out must be the daemon's own.
func checkSocket(path string) error {
	if err := SecureDir(filepath.Dir(path)); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("worker socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("worker socket %s: not a socket (%v): %w", path, fi.Mode().Type(), ErrInsecureDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("worker socket %s: owned by uid %d: %w", path, st.Uid, ErrInsecureDir)
	}
	return nil
}

// DefaultEnvAllow is the environment a holder or worker inherits from the
// daemon unless configured otherwise: names, or prefixes ending in "*".
// Everything else (credentials above all) stays in the daemon.
var DefaultEnvAllow = []string{"PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
	"CUDA_*", "NVIDIA_*", "PYTHONPATH", "PYTHONHOME"}

// filterEnv keeps the entries of env whose name matches allow.
func filterEnv(env, allow []string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		for _, a := range allow {
			if p, ok := strings.CutSuffix(a, "*"); ok && strings.HasPrefix(name, p) || a == name {
				out = append(out, kv)
				break
			}
		}
	}
	return out
}
