package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcr "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/runner"
)

var defaultProfileDir = "/var/lib/lazyfs/profiles"

// runFlags are the flags of lazyfs run and lazyfs record.
type runFlags struct {
	imageFlags
	profileDir string
	noProfile  bool
	fill       bool
	timeout    time.Duration
	readyLine  string
	user       string
	workdir    string
	env        []string
	report     string
	devices    []string
	cdiDirs    []string
	// devEdits are devices resolved by validate (runner.ResolveCDI).
	devEdits *specs.Spec
	// stdout, if set, gets the command's stdout instead of the
	// command's own (lazyfs convert --json --record keeps stdout JSON).
	stdout io.Writer
}

func (rf *runFlags) register(f *pflag.FlagSet) {
	rf.imageFlags = newImageFlags()
	rf.imageFlags.bind(f)
	f.StringVar(&rf.profileDir, "profile-dir", defaultProfileDir, "profiles learned on this node, by image digest (\"\": learn none; the image's profile in its registry is still prefetched unless --no-profile)")
	f.BoolVar(&rf.noProfile, "no-profile", false, "prefetch no start-up profile, neither the node's nor the registry's; the run still learns one into --profile-dir")
	f.BoolVar(&rf.fill, "fill", false, "after the profile, fetch the rest of the image in the background (stops before the cache would evict)")
	f.DurationVar(&rf.timeout, "timeout", 0, "end the command after this long (SIGTERM, then SIGKILL)")
	f.StringVar(&rf.readyLine, "ready-line", "", "end the run when the command prints a line on stdout matching this regular expression")
	f.StringVar(&rf.user, "user", "", "user[:group] to run as (default: the image config's)")
	f.StringVar(&rf.workdir, "workdir", "", "working directory (default: the image config's)")
	f.StringArrayVar(&rf.env, "env", nil, "KEY=VALUE added to the image config's environment (repeatable)")
	f.StringVar(&rf.report, "report", "", "write a JSON report of the run (exit code, times, bytes fetched, prefetch) to this file")
	f.StringArrayVar(&rf.devices, "device", nil, "a CDI device to give the command, such as nvidia.com/gpu=0 or nvidia.com/gpu=all (repeatable; specs as nvidia-ctk cdi generate writes them)")
	f.StringSliceVar(&rf.cdiDirs, "cdi-spec-dir", cdi.DefaultSpecDirs, "directories of CDI specs for --device")
}

// validate checks the flags before anything is fetched or run, and
// resolves --device.
func (rf *runFlags) validate() error {
	if err := rf.imageFlags.validate(); err != nil {
		return err
	}
	if len(rf.devices) > 0 {
		d, err := runner.ResolveCDI(rf.cdiDirs, rf.devices)
		if err != nil {
			return cli.Usagef("--device: %w", err)
		}
		rf.devEdits = d
	}
	return nil
}

// fsOptions are the mount's fs.Options; a recording run reads lean. With
// --passthrough, the node keeps the copies under its (temporary) root.
func (rf *runFlags) fsOptions(record bool) fs.Options {
	o := rf.fsf.options()
	o.Lean = record
	return o
}

// runReport is what --report writes.
type runReport struct {
	Image         string            `json:"image"`
	Digest        string            `json:"digest"`
	ExitCode      int               `json:"exitCode"`
	Ready         bool              `json:"ready"`
	TimedOut      bool              `json:"timedOut"`
	MountSeconds  float64           `json:"mountSeconds"`
	RunSeconds    float64           `json:"runSeconds"`
	TotalSeconds  float64           `json:"totalSeconds"`
	ProfileSource string            `json:"profileSource,omitempty"`
	Prefetch      *fs.PrefetchStats `json:"prefetch,omitempty"`
	FS            fs.Stats          `json:"fs"`
	Remote        remote.Stats      `json:"remote"`
	Recorded      *profileSummary   `json:"recorded,omitempty"`
}

type profileSummary struct {
	Files  int `json:"files"`
	Spans  int `json:"spans"`
	Chunks int `json:"chunks"`
}

func newRunCmd() *cobra.Command {
	var rf runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] REF [-- CMD [ARGS...]]",
		Short: "Run a command in an image, mounted lazily",
		Long: `Run mounts REF lazily (as lazyfs mount does) and runs CMD in it as a
container runtime would: in a private mount namespace, with the image as the
read-only lower layer of a writable overlay (a tmpfs, gone after the run),
/proc, /sys and a minimal /dev (null, zero, full, random, urandom, tty), and the
image config's environment, working directory and user. Without CMD it runs
the image's entrypoint and cmd. The network is the host's. Needs root.

--device gives the command CDI devices, such as GPUs (nvidia.com/gpu=0, or
nvidia.com/gpu=all), from the Container Device Interface specs in
--cdi-spec-dir (nvidia-ctk cdi generate writes NVIDIA's to /etc/cdi or
/var/run/cdi): their device nodes, driver library mounts, environment and
hooks, applied as a container runtime applies them.

A start-up profile is prefetched when there is one: the one learned on this
node (--profile-dir) or else the one attached to the image in its registry
(lazyfs record, lazyfs profile push). The run records its own first-read order
into --profile-dir for the next cold start. It unmounts on exit and exits with
the command's status.`,
		Example: "  lazyfs run 127.0.0.1:5000/python:3.12-lazy -- python3 -c 'import json'\n  lazyfs run --ready-line 'listening' --timeout 60s REF -- /server\n  lazyfs run --device nvidia.com/gpu=0 REF -- python3 -c 'import torch; print(torch.cuda.is_available())'",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := runImage(cmd, args[0], args[1:], &rf, false)
			return err
		},
	}
	rf.register(cmd.Flags())
	return cmd
}

// exitError carries a command's non-zero exit status to main.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("command exited with status %d", e.code) }
func (e exitError) ExitCode() int { return e.code }

// ggcrOptions are the go-containerregistry options matching the flags.
func ggcrOptions(ctx context.Context) []ggcr.Option {
	return []ggcr.Option{ggcr.WithContext(ctx), ggcr.WithAuthFromKeychain(authn.DefaultKeychain), ggcr.WithUserAgent("lazyfs")}
}

// runImage mounts ref, runs args in it and unmounts. With record, the mount
// records its first-read order and the returned mount's Recorded has it.
func runImage(cmd *cobra.Command, ref string, args []string, rf *runFlags, record bool) (*image.Mounted, error) {
	if err := rf.validate(); err != nil {
		return nil, err
	}
	ctx := cmd.Context()
	start := time.Now()
	level := slog.LevelWarn
	if rf.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	var ready *regexp.Regexp
	if rf.readyLine != "" {
		var err error
		if ready, err = regexp.Compile(rf.readyLine); err != nil {
			return nil, fmt.Errorf("--ready-line: %w", err)
		}
	}
	p, err := rf.platformSpec()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "lazyfs-run-*") // the node's state (pulled layers)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	// A private node (as a standalone lazyfs mount has): its cache, fetcher
	// and profiles; with --no-profile it loads none but still records,
	// with --profile-dir "" it learns none but prefetches the registry's.
	pc := node.ProfileConfig{Dir: rf.profileDir, Off: rf.noProfile, NoLearn: rf.profileDir == "", NoFill: !rf.fill}
	if !rf.noProfile {
		pc.Registry = true
	}
	n, err := node.New(ctx, node.Config{
		Root: root, CacheDir: rf.nodeCacheDir(), CacheSize: int64(rf.cacheSize), HostsDir: rf.hostsDir, Insecure: rf.insecure, Logger: log,
		// A recording run reads lean, as the runs its profile will serve:
		// what it records is what the program read, not the kernel's 1 MiB
		// windows around each page fault.
		FS:       rf.fsOptions(record),
		Profiles: pc,
	})
	if err != nil {
		return nil, err
	}
	defer n.Close()
	var learn *profile.Store // with --no-profile: record here, load nothing
	if rf.noProfile && rf.profileDir != "" {
		if learn, err = profile.NewStore(rf.profileDir); err != nil {
			return nil, err
		}
	}
	// Not under root: RemoveAll must never walk into a mount left busy.
	mnt, err := os.MkdirTemp("", "lazyfs-run-mnt-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(mnt)
	m, err := n.MountImage(ctx, ref, mnt, node.ImageOptions{Platform: p, Pull: rf.pull, Record: record || learn != nil})
	if err != nil {
		return nil, err
	}
	mounted := time.Now()
	closed := false
	closeMount := func() {
		if !closed {
			closed = true
			if err := n.Unmount(context.Background(), mnt); err != nil {
				log.Warn("unmount", "dir", mnt, "error", err)
			}
		}
	}
	defer closeMount()
	if learn != nil {
		defer func() {
			if p := m.Recorded(); p != nil && len(p.Spans) > 0 {
				if err := learn.Save(digest.Digest(m.Image().Digest.String()), p); err != nil {
					log.Warn("cannot store the learned profile", "error", err)
				}
			}
		}()
	}
	cfg, err := runner.ImageConfig(ctx, n.Fetcher(), m.Image())
	if err != nil {
		return nil, err
	}
	c := runner.Config{
		Root: m.Dir(), Args: runner.Command(cfg, args),
		Env: append(append([]string(nil), cfg.Env...), rf.env...), WorkDir: cfg.WorkingDir, User: cfg.User,
		Timeout: rf.timeout, ReadyLine: ready, Devices: rf.devEdits,
		Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(),
	}
	if rf.stdout != nil {
		c.Stdout = rf.stdout
	}
	if rf.user != "" {
		c.User = rf.user
	}
	if rf.workdir != "" {
		c.WorkDir = rf.workdir
	}
	if len(c.Args) == 0 {
		return nil, fmt.Errorf("image %s has no entrypoint or cmd: give a command after --", ref)
	}
	res, err := runner.Run(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("run %s in %s: %w", c.Args[0], ref, err)
	}
	if rf.report != "" {
		st := m.Stats()
		rep := runReport{
			Image: ref, Digest: m.Image().Digest.String(), ExitCode: res.ExitCode, Ready: res.Ready, TimedOut: res.TimedOut,
			MountSeconds: mounted.Sub(start).Seconds(), RunSeconds: res.Duration.Seconds(), TotalSeconds: time.Since(start).Seconds(),
			ProfileSource: st.ProfileSource, Prefetch: st.Prefetch, FS: st.FS, Remote: st.Remote,
		}
		if p := m.Recorded(); p != nil {
			rep.Recorded = &profileSummary{Files: len(p.Paths()), Spans: len(p.Spans), Chunks: p.Chunks()}
		}
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(rf.report, append(b, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	closeMount()
	if res.TimedOut {
		return m, fmt.Errorf("%s timed out after %v: %w", c.Args[0], rf.timeout, exitError{code: 124})
	}
	if res.ExitCode != 0 && !res.Ready {
		return m, exitError{code: res.ExitCode}
	}
	return m, nil
}

func fillNote(stopped string) string {
	if stopped == "" {
		return ""
	}
	return " (fill stopped: " + stopped + ")"
}
