package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// MkdirPrivate creates dir (and parents) and makes sure dir itself is a
// real directory (not a symlink) owned by us with mode 0700: state,
// sockets and logs inside it are readable by nobody else.
func MkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	if st, ok := fi.Sys().(*unix.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: owned by uid %d, not by us (uid %d): refusing to keep state there", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode()&os.ModeSticky != 0 || fi.Mode().Perm()&0o002 != 0 {
		// A shared directory (/tmp): never narrow it, never keep state in it.
		return fmt.Errorf("%s: a shared, world-writable directory: use a private directory of its own", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSONPrivate writes v as JSON to path atomically (temp file and
// rename), mode 0600, creating its directory 0700.
func WriteJSONPrivate(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := MkdirPrivate(filepath.Dir(path)); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// IsLazyfsMount reports whether dir is a lazyfs FUSE mount point in this
// mount namespace (fstype fuse.lazyfs in /proc/self/mountinfo), served or
// stale. Other filesystems never count, so an unmount cannot take down a
// filesystem that is not ours.
func IsLazyfsMount(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	return lazyfsMountIn(b, dir), nil
}

// LazyfsMounts returns the mount points of every lazyfs FUSE mount in this
// mount namespace (at most 65536).
func LazyfsMounts() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && len(out) < 1<<16 {
		f := strings.Fields(sc.Text())
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" && f[i+1] == "fuse.lazyfs" && len(f) > 4 {
				out = append(out, unescapeMount(f[4]))
				break
			}
		}
	}
	return out, nil
}

func lazyfsMountIn(mountinfo []byte, dir string) bool {
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || unescapeMount(f[4]) != dir {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" && f[i+1] == "fuse.lazyfs" {
				return true
			}
		}
	}
	return false
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// DetachMount unmounts the mount at dir, lazily (MNT_DETACH) when it is
// busy or its server is gone.
func DetachMount(dir string) error {
	err := unix.Unmount(dir, 0)
	if err == nil || errors.Is(err, unix.EINVAL) {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}
