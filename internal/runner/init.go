package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"
)

// initEnv carries a helper's instructions (initSpec as JSON) to the
// re-executed binary. The command is not started directly from the process
// that serves the image over FUSE: exec'ing a binary that lives on the FUSE
// mount from a vfork child of the serving process deadlocks (the vforking
// thread holds its Go P while the kernel waits for the FUSE READ of the
// binary, which a stop-the-world cannot preempt). The run forks a copy of
// its own binary (on the host) instead, which chroots, drops privileges and
// execs the command as a process of its own.
const initEnv = "_LAZYFS_RUNNER_INIT"

type initSpec struct {
	Root string   `json:"root"`
	Dir  string   `json:"dir"`
	Path string   `json:"path"`
	UID  uint32   `json:"uid"`
	GID  uint32   `json:"gid"`
	Args []string `json:"args"`
	Env  []string `json:"env"`
	// Wait: read a byte from fd 3 before going on (Run's hooks run
	// meanwhile); EOF without it means the run was abandoned.
	Wait bool `json:"wait,omitempty"`
}

// init runs the helper when this binary was re-executed by Run: it never
// returns then.
func init() {
	spec := os.Getenv(initEnv)
	if spec == "" {
		return
	}
	var s initSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fail("bad helper spec: %v", err)
	}
	if s.Wait {
		f := os.NewFile(3, "release")
		var b [1]byte
		if n, _ := f.Read(b[:]); n != 1 {
			os.Exit(127) // the run failed before the command could start
		}
		f.Close()
	}
	if err := syscall.Chroot(s.Root); err != nil {
		fail("chroot %s: %v", s.Root, err)
	}
	if err := syscall.Chdir("/"); err != nil {
		fail("chdir /: %v", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		fail("setgroups: %v", err)
	}
	if err := syscall.Setgid(int(s.GID)); err != nil {
		fail("setgid %d: %v", s.GID, err)
	}
	if err := syscall.Setuid(int(s.UID)); err != nil {
		fail("setuid %d: %v", s.UID, err)
	}
	if err := syscall.Chdir(s.Dir); err != nil {
		fail("working directory %s: %v", s.Dir, err)
	}
	err := syscall.Exec(s.Path, s.Args, s.Env)
	fail("exec %s: %v", s.Path, err)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "lazyfs run: "+format+"\n", args...)
	os.Exit(127)
}
