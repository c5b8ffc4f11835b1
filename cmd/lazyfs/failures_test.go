package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// failure is one row of the CLI's failure table: a bad input, the exit
// status it must give, and a stable fragment of its one-line message.
// docs/cli.md lists the exit statuses; hack/cli-errors.sh runs this table.
type failure struct {
	name     string
	args     []string
	code     int
	fragment string
	root     bool // needs root (a FUSE mount would be attempted)
	asNobody bool // run as uid 65534
}

// failureTable is the table; {reg}, {dir}, ... are filled in by
// TestFailureTable.
var failureTable = []failure{
	{"too few arguments", []string{"mount", "{reg}/img:1"}, 64, "usage: lazyfs mount [flags] REF DIR", false, false},
	{"too many arguments", []string{"inspect", "a", "b"}, 64, "usage: lazyfs inspect [flags] REF", false, false},
	{"unknown command", []string{"frob"}, 64, `unknown command "frob" for "lazyfs"; see --help`, false, false},
	{"unknown subcommand", []string{"gpu", "frob"}, 64, `unknown command "frob" for "lazyfs gpu"; usage: lazyfs gpu`, false, false},
	{"unknown flag", []string{"convert", "--bogus", "a", "b"}, 64, "unknown flag: --bogus; usage: lazyfs convert", false, false},
	{"bad size", []string{"mount", "--cache-size", "ten", "a", "{dir}"}, 64, `invalid size "ten"`, false, false},
	{"chunk size 0", []string{"convert", "--chunk-size", "0", "{reg}/img:1", "{reg}/img:lazy"}, 64, "--chunk-size 0: out of range: the chunk size must be 4KiB-64MiB", false, false},
	{"level", []string{"convert", "--level", "25", "{reg}/img:1", "{reg}/img:lazy"}, 64, "--level 25: out of range", false, false},
	{"startup level", []string{"convert", "--startup-level", "0", "{reg}/img:1", "{reg}/img:lazy"}, 64, "--startup-level 0: out of range", false, false},
	{"jobs", []string{"convert", "--jobs", "-1", "{reg}/img:1", "{reg}/img:lazy"}, 64, "--jobs -1: out of range", false, false},
	{"read-ahead", []string{"mount", "--read-ahead", "5000", "{reg}/img:lazy", "{dir}"}, 64, "--read-ahead 5000: out of range", false, false},
	{"device name", []string{"run", "--device", "gpu0", "{reg}/img:1"}, 64, `--device: device "gpu0"`, false, false},
	{"device undefined", []string{"run", "--cdi-spec-dir", "{dir}", "--device", "nvidia.com/gpu=0", "{reg}/img:1"}, 64, "--device: no CDI spec in ", false, false},
	{"read-ahead negative", []string{"mount", "--read-ahead", "-1", "{reg}/img:lazy", "{dir}"}, 64, "or off", false, false},
	{"neighbor window", []string{"mount", "--neighbor-window", "1GiB", "{reg}/img:lazy", "{dir}"}, 64, "--neighbour-window 1GiB: out of range", false, false},
	{"cache size 0", []string{"mount", "--cache-size", "0", "{reg}/img:lazy", "{dir}"}, 64, "--cache-size 0: out of range", false, false},
	{"whole library", []string{"mount", "--whole-library", "65MiB", "{reg}/img:lazy", "{dir}"}, 64, "--whole-library 65MiB: out of range: the largest library fetched whole at open (0 or off: never) must be 0-64MiB", false, false},
	{"run read-ahead", []string{"run", "--read-ahead", "5000", "{reg}/img:lazy"}, 64, "--read-ahead 5000: out of range: the read-ahead in chunks (0 or off: none) must be 0-1024", false, false},
	{"run cache size 0", []string{"run", "--cache-size", "0", "{reg}/img:lazy"}, 64, "--cache-size 0: out of range", false, false},
	{"record cache size 0", []string{"record", "--cache-size", "0", "{reg}/img:lazy"}, 64, "--cache-size 0: out of range", false, false},
	{"run read-ahead -1", []string{"run", "--read-ahead", "-1", "{reg}/img:lazy"}, 64, "want a whole number ≥ 0, or off", false, false},
	{"run neighbour window", []string{"run", "--neighbour-window", "65MiB", "{reg}/img:lazy"}, 64, "--neighbour-window 65MiB: out of range: the neighbour window (0 or off: none) must be 0-64MiB", false, false},
	{"record neighbor window", []string{"record", "--neighbor-window", "1GiB", "{reg}/img:lazy"}, 64, "--neighbour-window 1GiB: out of range", false, false},
	{"record whole library", []string{"record", "--whole-library", "big", "{reg}/img:lazy"}, 64, `invalid size "big"`, false, false},
	{"convert record read-ahead", []string{"convert", "--record", "--read-ahead", "2000", "{reg}/img:1", "{reg}/img:rec"}, 64, "--read-ahead 2000: out of range", false, false},
	{"serve read-ahead", []string{"serve", "--read-ahead", "2000"}, 64, "--read-ahead 2000: out of range: the read-ahead in chunks (0 or off: none) must be 0-1024", false, false},
	{"serve whole library", []string{"serve", "--whole-library", "1GiB"}, 64, "--whole-library 1GiB: out of range", false, false},
	{"serve cache size 0", []string{"serve", "--cache-size", "0"}, 64, "--cache-size 0: out of range", false, false},
	{"fetch deadline 0", []string{"mount", "--fetch-deadline", "0s", "{reg}/img:lazy", "{dir}"}, 64, "--fetch-deadline 0s: out of range: the deadline of one chunk fetch must be 1s-1h0m0s", false, false},
	{"min throughput", []string{"mount", "--min-throughput", "2GiB/s", "{reg}/img:lazy", "{dir}"}, 64, "--min-throughput 2GiB/s: out of range", false, false},
	{"min throughput word", []string{"mount", "--min-throughput", "fast", "{reg}/img:lazy", "{dir}"}, 64, `invalid size "fast"`, false, false},
	{"serve retry attempts 0", []string{"serve", "--retry-attempts", "0"}, 64, "--retry-attempts 0: out of range: the attempts per registry host must be 1-100", false, false},
	{"serve stall timeout", []string{"serve", "--stall-timeout", "1h"}, 64, "--stall-timeout 1h0m0s: out of range", false, false},
	{"missing mount dir", []string{"mount", "{reg}/img:lazy", "{missing}"}, 1, "does not exist: create it first", false, false},
	{"mount dir is a file", []string{"mount", "{reg}/img:lazy", "{file}"}, 1, "is a file, not a directory", false, false},
	{"mount dir not empty", []string{"mount", "{reg}/img:lazy", "{full}"}, 1, "is not empty: the mount would hide its files; pick an empty directory or pass --force", false, false},
	{"not root", []string{"mount", "--no-daemon", "{reg}/img:lazy", "{dir}"}, 1, "lazyfs mount needs root", true, true},
	{"no prewarm daemon", []string{"gpu", "status", "--socket", "{missing}.sock"}, 1, "lazyfs-prewarm is not running at", false, false},
	{"missing tag: inspect", []string{"inspect", "{reg}/img:nope"}, 1, "no such image in the registry (repository or tag unknown)", false, false},
	{"missing repo: inspect", []string{"inspect", "{reg}/nothing:1"}, 1, "no such image in the registry", false, false},
	{"missing tag: convert", []string{"convert", "{reg}/img:nope", "{reg}/img:lazy"}, 1, "no such image in the registry", false, false},
	{"missing tag: mount", []string{"mount", "--no-daemon", "--cache-dir", "", "--state-dir", "{state}", "{reg}/img:nope", "{dir}"}, 1, "no such image in the registry", true, false},
	{"push refused", []string{"convert", "{reg}/img:1", "{ro}/img:lazy"}, 1, "does not accept pushes there (405)", false, false},
	{"stats on a non-mount", []string{"stats", "--state-dir", "{state}", "--no-daemon", "{dir}"}, 1, "is not a lazyfs mount", false, false},
}

// TestFailureTable runs the real binary (this test binary re-executed as
// lazyfs) on every bad input of failureTable and checks the exit status,
// the fragment, and that the message is one line.
func TestFailureTable(t *testing.T) {
	reg := testRegistry(t)
	pushSample(t, reg+"/img:1")
	ro := registrytest.New(t, registrytest.ReadOnly()).Host
	tmp := sharedTemp(t)
	dir := filepath.Join(tmp, "empty")
	full := filepath.Join(tmp, "full")
	file := filepath.Join(tmp, "file")
	state := filepath.Join(tmp, "state")
	for _, d := range []string{dir, full} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(full, "keep"), nil, 0o644)
	os.WriteFile(file, nil, 0o644)
	r := strings.NewReplacer("{reg}", reg, "{ro}", ro, "{dir}", dir, "{full}", full, "{file}", file,
		"{missing}", filepath.Join(tmp, "missing"), "{state}", state)
	for _, f := range failureTable {
		t.Run(f.name, func(t *testing.T) {
			if f.root && os.Geteuid() != 0 {
				t.Skip("needs root (CI runs as root)")
			}
			args := make([]string, len(f.args))
			for i, a := range f.args {
				args[i] = r.Replace(a)
			}
			cmd := exec.Command(exe(t, f.asNobody), args...)
			cmd.Env = append(os.Environ(), "LAZYFS_TEST_MAIN=1", "HOME="+tmp)
			if f.asNobody {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			msg := stderr.String()
			if code != f.code || !strings.Contains(msg, f.fragment) {
				t.Errorf("lazyfs %s: exit %d, %q; want exit %d and %q", strings.Join(args, " "), code, msg, f.code, f.fragment)
			}
			if n := strings.Count(strings.TrimSuffix(msg, "\n"), "\n"); n != 0 || !strings.HasPrefix(msg, "lazyfs: ") {
				t.Errorf("lazyfs %s: message is not one line starting lazyfs: %q", strings.Join(args, " "), msg)
			}
		})
	}
}

// sharedTemp is a temporary directory other users may enter (0755), for
// the rows that run as nobody.
func sharedTemp(t *testing.T) string {
	d, err := os.MkdirTemp("", "lazyfs-cli-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// exe is this test binary, copied where nobody may run it when asNobody.
func exe(t *testing.T, asNobody bool) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !asNobody {
		return self
	}
	d := sharedTemp(t)
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "lazyfs")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInterrupt: SIGINT stops mount and inspect at once while the registry
// never answers: exit 130, "interrupted", and no mount server left behind.
func TestInterrupt(t *testing.T) {
	tmp := sharedTemp(t)
	dir := filepath.Join(tmp, "mnt")
	state := filepath.Join(tmp, "state")
	os.Mkdir(dir, 0o755)
	// {dead} is a registry that accepts connections and never answers.
	cases := [][]string{{"inspect", "{dead}/img:1"}, {"convert", "{dead}/img:1", "{dead}/img:lazy"}}
	if os.Geteuid() == 0 {
		cases = append(cases, []string{"mount", "--no-daemon", "--cache-dir", "", "--state-dir", state, "{dead}/img:1", dir},
			[]string{"mount", "--foreground", "--cache-dir", "", "--state-dir", state, "{dead}/img:1", dir})
	}
	for _, args := range cases {
		hung := registrytest.Silent(t)
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], "{dead}", hung.Host)
		}
		name := args[0]
		if strings.HasPrefix(args[1], "--") {
			name += " " + args[1]
		}
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(exe(t, false), args...)
			cmd.Env = append(os.Environ(), "LAZYFS_TEST_MAIN=1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Interrupt once it waits on the registry.
			select {
			case <-hung.Connected:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("lazyfs never reached the registry")
			}
			cmd.Process.Signal(os.Interrupt)
			// A hang detector, not a speed assertion: before the fix mount
			// ignored SIGINT for 62s and inspect for 14s.
			timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
			err := cmd.Wait()
			timer.Stop()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
				t.Fatalf("lazyfs %s after SIGINT: %v, %q; want exit 130 and interrupted", args[0], err, stderr.String())
			}
			if args[0] == "mount" {
				var left []string
				filepath.WalkDir(state, func(p string, d os.DirEntry, err error) error {
					if err == nil && !d.IsDir() {
						left = append(left, p)
					}
					return nil
				})
				if len(left) != 0 {
					t.Errorf("mount server state left behind: %v", left)
				}
			}
		})
	}
}
