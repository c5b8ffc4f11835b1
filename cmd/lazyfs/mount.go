package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/node"
)

type mountFlags struct {
	imageFlags
	foreground bool
	notifyFD   int
	force      bool
	stateDir   string
	control    string
	noDaemon   bool
	logLimit   sizeFlag
	fill       bool
	noFill     bool
	noProfile  bool
	profileDir string
	fetch      fetchFlags
}

// daemonFlags are the flags that belong to the serving process: with a
// daemon, its own settings apply instead.
// (--fill and --no-fill travel with the mount request.)
var daemonFlags = append(append([]string{"cache-dir", "cache-size", "insecure", "hosts-dir", "debug", "profile-dir"}, fsFlagNames...), fetchFlagNames...)

func newMountCmd() *cobra.Command {
	mf := mountFlags{imageFlags: newImageFlags(), logLimit: node.DefaultLogLimit, fetch: newFetchFlags()}
	cmd := &cobra.Command{
		Use:   "mount [flags] REF DIR",
		Short: "Mount an image's files lazily at DIR",
		Long: `Mount fetches REF's manifest and layer indexes, mounts the merged root
filesystem read-only at DIR, and returns once the mount is ready.

When the node daemon (lazyfs-snapshotter) answers on its control socket
(--control), the daemon serves the mount with the node's shared block cache
and registry budget. Otherwise a server of its own keeps serving it in the
background (--foreground keeps it attached, and unmounts on SIGINT/SIGTERM;
files still open then keep being served from a detached mount until they are
closed). Its block cache (--cache-dir) must be usable: a directory another
process holds is an error, never a silent in-memory cache.

REF must be a lazyfs image (see lazyfs convert); --pull serves any image by
fetching its layers whole first. Unmount with: lazyfs umount DIR.`,
		Example: "  lazyfs mount 127.0.0.1:5000/python:3.12-lazy /mnt/python\n  chroot /mnt/python python3 -c 'import json'\n  lazyfs umount /mnt/python",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			if err := mf.validate(); err != nil {
				return err
			}
			if m, _ := node.IsLazyfsMount(dir); m {
				return fmt.Errorf("%s is already a lazyfs mount: unmount it first (lazyfs umount %s)", dir, dir)
			}
			if err := cli.CheckMountDir(dir, mf.force); err != nil {
				return err
			}
			if mf.foreground {
				if err := cli.NeedRoot("lazyfs mount"); err != nil {
					return err
				}
				return cli.RegistryError(args[0], serveMount(cmd, args[0], dir, &mf))
			}
			if !mf.noDaemon {
				if h, err := node.NewClient(mf.control, 0).Health(cmd.Context()); err == nil {
					return cli.RegistryError(args[0], daemonMount(cmd, args[0], dir, &mf, h))
				}
			}
			if err := cli.NeedRoot("lazyfs mount"); err != nil {
				return err
			}
			return cli.RegistryError(args[0], spawnMount(cmd, args[0], dir, &mf))
		},
	}
	f := cmd.Flags()
	f.BoolVar(&mf.foreground, "foreground", false, "serve in this process, without the daemon; unmount on SIGINT/SIGTERM")
	f.IntVar(&mf.notifyFD, "notify-fd", -1, "file descriptor to report readiness on (internal)")
	_ = f.MarkHidden("notify-fd")
	mf.imageFlags.bind(f)
	f.BoolVar(&mf.force, "force", false, "mount over a directory that is not empty (its files are hidden until unmount)")
	f.StringVar(&mf.stateDir, "state-dir", node.DefaultStateDir, "where standalone mount servers record their state (0700)")
	f.StringVar(&mf.control, "control", node.DefaultControlSocket, "the node daemon's control socket")
	f.BoolVar(&mf.noDaemon, "no-daemon", false, "never ask the daemon; serve the mount with a server of its own")
	f.Var(&mf.logLimit, "log-limit", "bound of a standalone server's log (one previous log is kept)")
	f.BoolVar(&mf.fill, "fill", false, "after the start-up profile, fetch the rest of the image in the background (stops before the cache would evict); default: on through the daemon (its setting), off standalone")
	f.BoolVar(&mf.noFill, "no-fill", false, "do not fill: fetch only what is read and the start-up profile (through the daemon too)")
	f.BoolVar(&mf.noProfile, "no-profile", false, "prefetch no start-up profile, neither the node's nor the registry's; the mount still learns one (through the daemon too)")
	f.StringVar(&mf.profileDir, "profile-dir", defaultProfileDir, "start-up profiles learned on this node: prefetched at mount, recorded until unmount (\"\": learn none; the image's profile in its registry is still prefetched)")
	mf.fetch.bind(f)
	return cmd
}

// daemonMount asks the node daemon to serve the mount.
func daemonMount(cmd *cobra.Command, ref, dir string, mf *mountFlags, h node.Health) error {
	for _, name := range daemonFlags {
		if cmd.Flags().Changed(name) {
			fmt.Fprintf(cmd.ErrOrStderr(), "lazyfs: --%s is ignored: the daemon (pid %d) serves the mount with its own settings (--no-daemon to serve it here)\n", name, h.PID)
		}
	}
	req := node.MountRequest{Ref: ref, Dir: dir, Pull: mf.pull, Platform: mf.platform, Fill: fillOption(mf), NoProfile: mf.noProfile}
	st, err := node.NewClient(mf.control, 0).MountImage(cmd.Context(), req)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in %.0f ms: %d layers, %d entries, %s of the %s image fetched so far\nserved by the daemon (pid %d, %s); unmount with: lazyfs umount %s\n",
		ref, dir, st.ReadySeconds*1000, st.Layers, st.Entries, humanBytes(st.Fetched.Bytes), humanBytes(st.ImageSize), h.PID, mf.control, dir)
	return err
}

// fillOption is the mount's fill as --fill or --no-fill set it (nil:
// the serving node's default).
func fillOption(mf *mountFlags) *bool {
	switch {
	case mf.fill:
		return new(true)
	case mf.noFill:
		return new(false)
	}
	return nil
}

// spawnMount starts a standalone mount server in the background and waits
// until it reports the mount ready (or failed).
func spawnMount(cmd *cobra.Command, ref, dir string, mf *mountFlags) error {
	_, _, logPath := node.StatePaths(mf.stateDir, dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"mount", "--foreground", "--notify-fd", "3"}
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		if fl.Name != "foreground" && fl.Name != "notify-fd" {
			args = append(args, "--"+fl.Name+"="+fl.Value.String())
		}
	})
	args = append(args, ref, dir)
	pid, st, err := node.Spawn(cmd.Context(), node.SpawnConfig{Exe: self, Args: args, Log: logPath})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in %.0f ms: %d layers, %d entries, %s of the %s image fetched so far\nserving in the background (pid %d, log %s); unmount with: lazyfs umount %s\n",
		ref, dir, st.ReadySeconds*1000, st.Layers, st.Entries, humanBytes(st.Fetched.Bytes), humanBytes(st.ImageSize),
		pid, logPath, dir)
	return err
}

// serveMount serves the mount in this process until unmounted or signalled.
func serveMount(cmd *cobra.Command, ref, dir string, mf *mountFlags) (err error) {
	if path := os.Getenv("LAZYFS_CPUPROFILE"); path != "" {
		// For developers: profile a mount server from start to unmount.
		if f, perr := os.Create(path); perr == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	notify := node.NewNotifier(mf.notifyFD)
	defer func() {
		if err != nil {
			notify.Fail(cli.RegistryError(ref, err))
		}
	}()
	level := slog.LevelInfo
	if mf.debug {
		level = slog.LevelDebug
	}
	logw := cmd.ErrOrStderr()
	if mf.notifyFD >= 0 {
		// Spawned in the background: the log file, bounded.
		_, _, logPath := node.StatePaths(mf.stateDir, dir)
		l, err := node.OpenLog(logPath, int64(mf.logLimit), true)
		if err != nil {
			return err
		}
		defer l.Close()
		logw = l
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))
	p, err := mf.platformSpec()
	if err != nil {
		return err
	}
	cfg := node.Config{
		CacheDir: mf.nodeCacheDir(), CacheSize: int64(mf.cacheSize), HostsDir: mf.hostsDir, Insecure: mf.insecure, Logger: log,
		FetchOptions: mf.fetch.Options(),
		PullDir:      os.TempDir(),
		FS:           mf.fsf.options(),
		Mount:        fs.MountOptions{Debug: mf.debug},
		Profiles:     node.ProfileConfig{Dir: mf.profileDir, NoLearn: mf.profileDir == "", NoFill: !mf.fill || mf.noFill, Registry: true},
	}
	if cfg.FS.Passthrough {
		// Not the node's default ROOT/spool: a standalone server shares
		// the root with the daemon and other servers.
		state, _, _ := node.StatePaths(mf.stateDir, dir)
		spool := state + ".spool"
		if err := node.MkdirPrivate(spool); err != nil {
			return err
		}
		defer os.RemoveAll(spool)
		cfg.FS.SpoolDir = spool
	}
	return node.ServeStandalone(cmd.Context(), node.StandaloneConfig{
		Node: cfg, Ref: ref, Dir: dir, StateDir: mf.stateDir, Image: node.ImageOptions{Platform: p, Pull: mf.pull, Fill: fillOption(mf), NoProfile: mf.noProfile},
		Ready: func(st image.Stats) {
			if mf.notifyFD >= 0 {
				notify.Ready(st)
				return
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in %v; Ctrl-C to unmount\n", ref, dir, time.Duration(st.ReadySeconds*float64(time.Second)).Round(time.Millisecond))
		},
	})
}

func newUmountCmd() *cobra.Command {
	var uc node.UnmountConfig
	cmd := &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount a lazyfs mount and stop its server",
		Long: `Umount unmounts the lazyfs mount at DIR, whoever serves it: the node daemon, a
standalone server (which then exits), or nobody (a stale mount left by a killed
server). It reports failure while the server is still running, e.g. because
files in the mount are still open.`,
		Example: "  lazyfs umount /mnt/python",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := node.UnmountDir(cmd.Context(), args[0], uc)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), rep)
			return err
		},
	}
	cmd.Flags().StringVar(&uc.StateDir, "state-dir", node.DefaultStateDir, "where standalone mount servers record their state")
	cmd.Flags().StringVar(&uc.Control, "control", node.DefaultControlSocket, "the node daemon's control socket")
	cmd.Flags().BoolVar(&uc.NoDaemon, "no-daemon", false, "do not ask the daemon")
	cmd.Flags().DurationVar(&uc.Timeout, "timeout", 10*time.Second, "how long to wait for the server to stop")
	return cmd
}

func serversFlags(cmd *cobra.Command, s *node.Servers) {
	cmd.Flags().StringVar(&s.StateDir, "state-dir", node.DefaultStateDir, "where standalone mount servers record their state")
	cmd.Flags().StringVar(&s.Control, "control", node.DefaultControlSocket, "the node daemon's control socket")
	cmd.Flags().BoolVar(&s.NoDaemon, "no-daemon", false, "do not ask the daemon")
}

func newStatsCmd() *cobra.Command {
	var s node.Servers
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "stats DIR",
		Short:   "Show a lazyfs mount's counters (bytes fetched, cache hits, reads)",
		Example: "  lazyfs stats /mnt/python\n  lazyfs stats --json /mnt/python | jq .fetched.bytes",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			c, err := s.Find(cmd.Context(), dir)
			if err != nil {
				return err
			}
			st, err := c.Stats(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "image:        %s (%s)\n", st.Image, st.Digest)
			if st.Layer != "" {
				fmt.Fprintf(w, "layer:        %s\n", st.Layer)
			}
			fmt.Fprintf(w, "ready in:     %.0f ms\n", st.ReadySeconds*1000)
			fmt.Fprintf(w, "image size:   %s compressed, %s of tar, %d entries\n", humanBytes(st.ImageSize), humanBytes(st.TarSize), st.Entries)
			fmt.Fprintf(w, "fetched:      %s in %d chunks (%.1f%% of the image)\n", humanBytes(st.Fetched.Bytes), st.Fetched.Chunks, 100*float64(st.Fetched.Bytes)/float64(max(st.ImageSize, 1)))
			fmt.Fprintf(w, "reads:        %d (%s), chunk hits %d, misses %d, read-ahead %d, EIO %d\n", st.FS.Reads, humanBytes(st.FS.BytesRead), st.FS.ChunkHits, st.FS.ChunkMisses, st.FS.Prefetched, st.FS.EIO)
			fmt.Fprintf(w, "server:       %d requests, %s fetched in all by its fetcher\n", st.Remote.Requests, humanBytes(st.Remote.BytesFetched))
			fmt.Fprintf(w, "link:         %s\n", linkLine(st.FS))
			if p := st.Prefetch; p != nil {
				fmt.Fprintf(w, "prefetch:     %s; profile (%s) %d/%d chunks local, image %d/%d chunks local%s\n", p.Phase, profileSourceOr(st.ProfileSource), p.ProfileLocal, p.ProfileChunks, p.ImageLocal, p.ImageChunks, fillNote(p.FillStopped))
			}
			return nil
		},
	}
	serversFlags(cmd, &s)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// errPartial marks output that is complete except for servers that did not answer.
var errPartial = errors.New("some servers did not answer")

// linkLine says what the mount measured of the link and how it judged it.
func linkLine(st fs.Stats) string {
	if st.LinkBytesPerSecond == 0 {
		return "not measured yet (no response of 1 MiB or more)"
	}
	verdict := "fast"
	switch {
	case st.SlowLink:
		verdict = "slow: fewer bytes per request"
	case st.FarLink:
		verdict = "far: more bytes per round trip"
	}
	return fmt.Sprintf("fastest %s/s, round trip %.1f ms: %s", humanBytes(st.LinkBytesPerSecond), st.LinkRTTSeconds*1000, verdict)
}

func profileSourceOr(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
