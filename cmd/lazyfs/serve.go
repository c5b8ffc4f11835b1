package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/node"
)

func newServeCmd() *cobra.Command {
	var (
		cfg       node.Config
		cacheSize = sizeFlag(blobcache.DefaultCapacity)
		control   string
		debug     bool
		fetch     = newFetchFlags()
		fsf       = newFSFlags()
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the node daemon without containerd: one cache and fetcher for every lazyfs mount",
		Long: `Serve runs the node daemon's core (internal/node) on its own: it owns the block
cache and the registry fetcher, and serves the control API on --control, so
that lazyfs mount, umount, stats and ls, and lazyfs-prewarm's warm requests
share them. lazyfs-snapshotter runs the same core for containerd; run one or
the other on a node. It can also hold the FUSE mounts of a snapshotter that
uses node.RemoteLayerFS, so the snapshotter can restart while containers run
(docs/daemon.md). Its file-system tuning flags (--read-ahead,
--neighbour-window, --whole-library, --passthrough) apply to every mount it
serves: lazyfs mount's own are ignored through a daemon. SIGTERM unmounts
every mount (detaching busy ones) and exits.`,
		Example: "  lazyfs serve --cache-size 20GiB &\n  lazyfs mount 127.0.0.1:5000/python:3.12-lazy /mnt/python",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.SizeRange("cache-size", int64(cacheSize), minCacheSize, maxCacheSize, "the block cache capacity"); err != nil {
				return err
			}
			if err := fetch.validate(); err != nil {
				return err
			}
			if err := fsf.validate(); err != nil {
				return err
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			cfg.CacheSize = int64(cacheSize)
			cfg.FetchOptions = fetch.Options()
			cfg.FS = fsf.options() // with --passthrough, copies in ROOT/spool (node.Config.FS)
			cfg.Profiles.Registry = true
			n, err := node.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			ln, err := node.Listen(control)
			if err != nil {
				n.Close()
				return err
			}
			cfg.Logger.Info("serving", "control", control, "root", cfg.Root, "pid", os.Getpid())
			serr := node.ServeListener(cmd.Context(), ln, n.Handler())
			os.Remove(control)
			cerr := n.Close()
			if serr != nil {
				return serr
			}
			if cerr != nil {
				return fmt.Errorf("stopping: %w", cerr)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&control, "control", node.DefaultControlSocket, "control socket (created 0600 in a 0700 directory)")
	f.StringVar(&cfg.Root, "root", node.DefaultRoot, "state directory")
	f.StringVar(&cfg.CacheDir, "cache-dir", "", "block cache directory (default ROOT/cache; \":memory:\" for RAM)")
	f.Var(&cacheSize, "cache-size", "block cache capacity")
	f.StringVar(&cfg.HostsDir, "hosts-dir", "", "containerd-style hosts.toml directory for registry mirrors")
	f.BoolVar(&cfg.Insecure, "insecure", false, "allow plain HTTP to any registry")
	f.DurationVar(&cfg.UnmountTimeout, "unmount-timeout", 10*time.Second, "how long stopping waits for busy mounts")
	f.BoolVar(&debug, "debug", false, "log debug messages")
	fsf.bind(f)
	fetch.bind(f)
	return cmd
}
