package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// CheckMountDir checks that dir can be mounted on before anything is
// fetched: it must exist, be a directory, and be empty unless force (a
// mount hides what is there).
func CheckMountDir(dir string, force bool) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mount point %s does not exist: create it first (mkdir -p %s)", dir, dir)
	case err != nil:
		return fmt.Errorf("mount point %s: %w", dir, err)
	case !st.IsDir():
		return fmt.Errorf("mount point %s is a file, not a directory: pass a directory", dir)
	}
	if force {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err != nil {
			return fmt.Errorf("mount point %s: %w", dir, err)
		}
		return fmt.Errorf("mount point %s is not empty: the mount would hide its files; pick an empty directory or pass --force", dir)
	}
	return nil
}

// capSysAdmin is CAP_SYS_ADMIN's bit in /proc/self/status's CapEff.
const capSysAdmin = 21

// NeedRoot returns an error naming what needs root unless this process runs
// as root or holds CAP_SYS_ADMIN (a FUSE mount needs one of them).
func NeedRoot(what string) error {
	if os.Geteuid() == 0 || hasCap(capSysAdmin) {
		return nil
	}
	return fmt.Errorf("%s needs root (or CAP_SYS_ADMIN) to mount FUSE: run it as root", what)
}

func hasCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}
