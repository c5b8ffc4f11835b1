// Command lazyfs-snapshotter is the lazyfs node daemon: containerd's proxy
// snapshotter for lazyfs images, owner of the node's block cache, and server
// of the control API used by lazyfs mount/ls/stats and lazyfs-prewarm. It
// parses flags and the TOML config and wires the packages that do the work.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/version"
	"github.com/lazyfs/lazyfs/snapshotter/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd := newCmd()
	cli.Harden(cmd) // usage errors: one line with the usage, exit 64
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazyfs-snapshotter:", err)
		os.Exit(cli.ExitCode(context.Background(), err))
	}
}

func newCmd() *cobra.Command {
	flags := service.Defaults()
	var configPath string
	cmd := &cobra.Command{
		Use:           "lazyfs-snapshotter [flags]",
		Short:         "containerd snapshotter and node daemon for lazyfs images",
		Version:       version.String("lazyfs-snapshotter"),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := service.Load(configPath, cmd.Flags().Changed("config"), flags, cmd.Flags())
			if err != nil {
				return err
			}
			level, _ := cfg.Level()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			return run(cmd.Context(), cfg, log)
		},
	}
	cmd.SetVersionTemplate("{{.Version}}\n")
	cmd.PersistentFlags().StringVar(&configPath, "config", service.DefaultConfigPath, "TOML configuration file (flags win over it)")
	flags.BindFlags(cmd.PersistentFlags())
	cmd.SetGlobalNormalizationFunc(cli.Aliases(map[string]string{"neighbor-window": "neighbour-window"})) // as lazyfs's
	cmd.AddCommand(&cobra.Command{
		Use:   "holder [flags]",
		Short: "Hold the node's lazy mounts for a snapshotter run with --holder",
		Long: `holder runs the node (block cache, fetcher, FUSE mounts) and serves its control
API on --control-address. A lazyfs-snapshotter started with --holder mounts
its lazy layers through it, so the snapshotter can be restarted or upgraded
while running containers keep reading their layers.`,
		Example: "  lazyfs-snapshotter holder --config /etc/lazyfs/config.toml &\n  lazyfs-snapshotter --holder --config /etc/lazyfs/config.toml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := service.Load(configPath, cmd.Flags().Changed("config"), flags, cmd.Flags())
			if err != nil {
				return err
			}
			level, _ := cfg.Level()
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			return runHolder(cmd.Context(), cfg, log)
		},
	})
	return cmd
}

// runHolder serves a node's control API (and its lazy layers) until ctx is done.
func runHolder(ctx context.Context, cfg service.Config, log *slog.Logger) (err error) {
	n, err := newNode(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := n.Close(); err == nil {
			err = cerr
		}
	}()
	return service.ServeHolder(ctx, cfg, n.Handler(), n.Collectors(), log)
}

func newNode(ctx context.Context, cfg service.Config, log *slog.Logger) (*node.Node, error) {
	return node.New(ctx, node.Config{
		Root:         cfg.Root,
		CacheDir:     cfg.CachePath(),
		CacheSize:    int64(cfg.CacheSize),
		HostsDir:     cfg.HostsDir,
		FetchOptions: cfg.Fetch().Options(),
		FS:           cfg.FS().Options(), // with passthrough, copies in ROOT/spool (node.Config.FS)
		Logger:       log,
		Profiles:     node.ProfileConfig{Dir: cfg.ProfileDir, NoFill: !cfg.Fill, Registry: true},
	})
}

// run wires the node (cache, fetcher, lazy layers, control API) into the
// snapshotter service and serves until ctx is done.
func run(ctx context.Context, cfg service.Config, log *slog.Logger) (err error) {
	if cfg.Holder {
		srv, err := service.New(ctx, cfg, service.Deps{
			FileSystem: service.WithReasons(node.NewRemoteLayerFS(cfg.ControlAddress)),
			Logger:     log,
		})
		if err != nil {
			return err
		}
		return srv.Serve(ctx)
	}
	n, err := newNode(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := n.Close(); err == nil {
			err = cerr
		}
	}()
	srv, err := service.New(ctx, cfg, service.Deps{
		FileSystem: service.WithReasons(n.LayerFS()),
		Control:    n.Handler(),
		Collectors: n.Collectors(),
		Logger:     log,
	})
	if err != nil {
		return err
	}
	return srv.Serve(ctx)
}
