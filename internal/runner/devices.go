package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
)

// ResolveCDI resolves fully qualified CDI device names (vendor.com/class=name,
// e.g. nvidia.com/gpu=0 or nvidia.com/gpu=all) against the CDI specs in
// specDirs (nil: /etc/cdi and /var/run/cdi, as nvidia-ctk cdi generate
// writes them) and returns their container edits as the parts of an OCI
// runtime spec a run applies (Config.Devices): environment, device nodes,
// mounts and hooks. Names no spec defines are an error that lists them.
func ResolveCDI(specDirs []string, names []string) (*specs.Spec, error) {
	if len(specDirs) == 0 {
		specDirs = cdi.DefaultSpecDirs
	}
	for _, n := range names {
		if _, _, _, err := parser.ParseQualifiedName(n); err != nil {
			return nil, fmt.Errorf("device %q: %w (a CDI name: vendor.com/class=name, such as nvidia.com/gpu=0)", n, err)
		}
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(specDirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI specs in %s: %w", strings.Join(specDirs, ", "), err)
	}
	spec := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}
	unresolved, err := cache.InjectDevices(spec, names...)
	if err != nil {
		if len(unresolved) > 0 {
			err = fmt.Errorf("no CDI spec in %s defines %s", strings.Join(specDirs, ", "), strings.Join(unresolved, ", "))
			var bad []string
			for path, errs := range cache.GetErrors() {
				bad = append(bad, fmt.Sprintf("%s: %v", path, errors.Join(errs...)))
			}
			if len(bad) > 0 {
				slices.Sort(bad)
				err = fmt.Errorf("%w (specs that could not be read: %s)", err, strings.Join(bad, "; "))
			}
			return nil, err
		}
		return nil, fmt.Errorf("devices %s: %w", strings.Join(names, ", "), err)
	}
	return spec, nil
}

// maxHookTimeout bounds a device hook without a timeout of its own.
const maxHookTimeout = 30 * time.Second

// applyDevices creates d's device nodes and mounts in root (the run's
// merged root, its /dev already a tmpfs), as runc would: nodes made with
// mknod, mounts bind-mounted from the host, each destination resolved
// inside root.
func applyDevices(root string, d *specs.Spec, mount func(src, dst, fstype string, flags uintptr, data string) error) error {
	if d.Linux != nil {
		for _, n := range d.Linux.Devices {
			if err := makeNode(root, n); err != nil {
				return err
			}
		}
	}
	for _, m := range d.Mounts {
		if err := bindMount(root, m, mount); err != nil {
			return err
		}
	}
	return nil
}

func makeNode(root string, n specs.LinuxDevice) error {
	if !filepath.IsAbs(n.Path) {
		return fmt.Errorf("%w: device node %q: not an absolute path", ErrSetup, n.Path)
	}
	p := filepath.Join(root, resolveIn(root, n.Path))
	var mode uint32
	switch n.Type {
	case "c", "u":
		mode = unix.S_IFCHR
	case "b":
		mode = unix.S_IFBLK
	case "p":
		mode = unix.S_IFIFO
	default:
		return fmt.Errorf("%w: device node %s: type %q (want c, b, u or p)", ErrSetup, n.Path, n.Type)
	}
	perm := uint32(0o666)
	if n.FileMode != nil {
		perm = uint32(n.FileMode.Perm())
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("%w: device node %s: %v", ErrSetup, n.Path, err)
	}
	_ = os.Remove(p) // the image's own entry, if any
	if err := unix.Mknod(p, mode|perm, int(unix.Mkdev(uint32(n.Major), uint32(n.Minor)))); err != nil {
		return fmt.Errorf("%w: device node %s (%d:%d): %v", ErrSetup, n.Path, n.Major, n.Minor, err)
	}
	if err := unix.Chmod(p, perm); err != nil { // mknod applies the umask
		return fmt.Errorf("%w: device node %s: %v", ErrSetup, n.Path, err)
	}
	if n.UID != nil || n.GID != nil {
		uid, gid := -1, -1
		if n.UID != nil {
			uid = int(*n.UID)
		}
		if n.GID != nil {
			gid = int(*n.GID)
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("%w: device node %s: %v", ErrSetup, n.Path, err)
		}
	}
	return nil
}

// mountFlags are the mount options bindMount turns into flags; any other
// option goes to the file system as data.
var mountFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
	"bind": unix.MS_BIND, "rbind": unix.MS_BIND | unix.MS_REC,
	"rw": 0, "suid": 0, "dev": 0, "exec": 0, "private": 0, "rprivate": 0,
}

func bindMount(root string, m specs.Mount, mount func(src, dst, fstype string, flags uintptr, data string) error) error {
	if !filepath.IsAbs(m.Destination) {
		return fmt.Errorf("%w: device mount %q: not an absolute path", ErrSetup, m.Destination)
	}
	var flags uintptr
	var data []string
	for _, o := range m.Options {
		if f, ok := mountFlags[o]; ok {
			flags |= f
		} else {
			data = append(data, o)
		}
	}
	if m.Type == "bind" {
		flags |= unix.MS_BIND
	}
	dst := filepath.Join(root, resolveIn(root, m.Destination))
	// The target is a file or a directory, as the source is.
	isDir := true
	if flags&unix.MS_BIND != 0 {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("%w: device mount %s: %v", ErrSetup, m.Destination, err)
		}
		isDir = fi.IsDir()
	}
	if isDir {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("%w: device mount %s: %v", ErrSetup, m.Destination, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("%w: device mount %s: %v", ErrSetup, m.Destination, err)
		}
		if _, err := os.Lstat(dst); err != nil {
			if err := os.WriteFile(dst, nil, 0o644); err != nil {
				return fmt.Errorf("%w: device mount %s: %v", ErrSetup, m.Destination, err)
			}
		}
	}
	if flags&unix.MS_BIND == 0 {
		return mount(m.Source, dst, m.Type, flags, strings.Join(data, ","))
	}
	// A bind mount takes its flags only when remounted.
	if err := mount(m.Source, dst, "", flags&(unix.MS_BIND|unix.MS_REC), ""); err != nil {
		return err
	}
	if rest := flags &^ (unix.MS_BIND | unix.MS_REC); rest != 0 {
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|rest, ""); err != nil {
			return fmt.Errorf("%w: remount %s %v: %v", ErrSetup, m.Destination, m.Options, err)
		}
	}
	return nil
}

// ociState is the state a hook reads on its stdin (OCI runtime spec,
// "State").
type ociState struct {
	Version string `json:"ociVersion"`
	ID      string `json:"id"`
	Status  string `json:"status"`
	Pid     int    `json:"pid,omitempty"`
	Bundle  string `json:"bundle"`
}

// writeBundle writes the config.json of the run's OCI bundle that hooks
// read (nvidia-ctk's find the container's root in it) into dir.
func writeBundle(dir, root string, c Config, env []string, wd string, d *specs.Spec) error {
	spec := specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: root},
		Process: &specs.Process{Args: c.Args, Env: env, Cwd: wd},
		Mounts:  d.Mounts,
		Linux:   d.Linux,
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644)
}

// runHooks runs hooks in order with the run's state on stdin, each within
// its own timeout (at most maxHookTimeout without one), and returns the
// first failure with the hook's output.
func runHooks(ctx context.Context, kind string, hooks []specs.Hook, st ociState) error {
	state, err := json.Marshal(st)
	if err != nil {
		return err
	}
	for _, h := range hooks {
		timeout := maxHookTimeout
		if h.Timeout != nil && *h.Timeout > 0 {
			timeout = time.Duration(*h.Timeout) * time.Second
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		cmd := exec.CommandContext(hctx, h.Path)
		if len(h.Args) > 0 {
			cmd.Args = h.Args
		}
		cmd.Env = h.Env
		cmd.Stdin = bytes.NewReader(state)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = time.Second
		err := cmd.Run()
		cancel()
		if err != nil {
			return fmt.Errorf("%w: %s hook %s: %v: %s", ErrSetup, kind, strings.Join(cmd.Args, " "), err, strings.TrimSpace(lastBytes(out.Bytes(), 2048)))
		}
	}
	return nil
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// mergeEnv returns env with add's entries set, replacing those of the same
// name.
func mergeEnv(env, add []string) []string {
	out := slices.Clone(env)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(e string) bool { ek, _, _ := strings.Cut(e, "="); return ek == k })
		out = append(out, kv)
	}
	return out
}
