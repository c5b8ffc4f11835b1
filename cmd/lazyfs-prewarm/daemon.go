package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/prewarm"
)

func newDaemonCmd() *cobra.Command {
	var (
		configPath   string
		workerCmd    string
		images       []string
		modelWorkers []string
	)
	flags := defaultConfig()
	cmd := &cobra.Command{
		Use:   "lazyfs-prewarm",
		Short: "Keep idle GPUs warm and hand them over instantly",
		Long: `lazyfs-prewarm keeps every idle GPU (and MIG device) initialised with one small
holder process that retains the CUDA primary context, and hands GPUs to jobs
through a claim/release API on a unix socket (see 'lazyfs gpu'). Without an
NVIDIA driver or GPU it runs in report-only mode and still keeps images warm.

Persistence mode is reported and changed only with --enable-persistence.`,
		Example:       "  lazyfs-prewarm --config /etc/lazyfs/prewarm.toml\n  lazyfs-prewarm --image 127.0.0.1:5000/torch:lazy --memory-floor 2GiB",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configPath, flags, cmd.Flags(), workerCmd, images, modelWorkers...)
			if err != nil {
				return err
			}
			return runDaemon(cmd.Context(), cfg)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", "", "TOML configuration file (flags set explicitly win)")
	fs.StringVar(&workerCmd, "worker-command", "", "warm-worker mode: command kept running per idle GPU and handed to the claimer (split on spaces)")
	fs.StringArrayVar(&images, "image", nil, "image reference to keep warm (repeatable)")
	fs.StringArrayVar(&modelWorkers, "model-worker", nil, "model warm worker NAME=COMMAND, suspended into host memory until 'lazyfs gpu claim --worker NAME' (repeatable; adds to the config's [[model_worker]])")
	flags.bindFlags(fs)
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runDaemon(ctx context.Context, cfg config) error {
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	cred, err := parseUser(cfg.WorkerUser)
	if err != nil {
		return err
	}
	metrics := prewarm.NewMetrics()
	mcfg := prewarm.Config{
		MemoryFloor:       uint64(cfg.MemoryFloor),
		AllowExclusive:    cfg.AllowExclusive,
		HoldWhileBusy:     cfg.HoldWhileBusy,
		HoldAlloc:         uint64(cfg.HoldAlloc),
		IdleWindow:        time.Duration(cfg.IdleWindow),
		UtilThreshold:     cfg.UtilThreshold,
		Grace:             time.Duration(cfg.Grace),
		HandoffDelay:      time.Duration(cfg.HandoffDelay),
		NoHandoffDelay:    cfg.HandoffDelay == 0,
		PollInterval:      time.Duration(cfg.PollInterval),
		ReadyTimeout:      time.Duration(cfg.ReadyTimeout),
		WorkerArgv:        cfg.WorkerCommand,
		WorkerDir:         cfg.WorkerDir,
		EnvAllow:          cfg.EnvAllow,
		WorkerCredential:  cred,
		ModelWorkers:      cfg.modelWorkers(),
		SuspendMemory:     uint64(cfg.SuspendMemory),
		ResidentFloor:     uint64(cfg.ResidentFloor),
		EnablePersistence: cfg.EnablePersistence,
		Logger:            log,
		Metrics:           metrics,
	}
	if !cfg.NoHold && len(cfg.WorkerCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("holder: find own executable: %w", err)
		}
		mcfg.HolderArgv = func(uuid string, alloc uint64) []string {
			return []string{exe, "hold", "--uuid", uuid, "--alloc", strconv.FormatUint(alloc, 10)}
		}
	}

	gpus, reason := openGPUs(ctx, cfg, log)
	if cfg.FakeGPUs > 0 {
		mcfg.ChildEnv = append(mcfg.ChildEnv, prewarm.EnvFakeCUDA+"=1")
	}
	if len(mcfg.ModelWorkers) > 0 {
		switch {
		case cfg.FakeGPUs == 0:
			mcfg.Checkpointer = prewarm.NewCUDACheckpointer()
		case cfg.FakeCheckpoint == "noapi":
			mcfg.Checkpointer = &prewarm.FakeCheckpointer{NoAPI: true}
		default:
			mcfg.Checkpointer = &prewarm.FakeCheckpointer{Remap: cfg.FakeCheckpoint == "remap"}
		}
	}
	if gpus != nil {
		defer gpus.Close()
	}
	mgr := prewarm.NewManager(gpus, reason, mcfg)

	var warmer prewarm.ImageWarmer
	if cfg.WarmSocket != "" {
		warmer = &prewarm.HTTPWarmer{Socket: cfg.WarmSocket, Whole: cfg.WarmWholeImages}
	}
	var keeper *prewarm.ImageKeeper
	if len(cfg.Images) > 0 {
		keeper = prewarm.NewImageKeeper(prewarm.ImageKeeperConfig{Refs: cfg.Images, Warmer: warmer,
			Interval: time.Duration(cfg.ImageRefresh), Logger: log, Metrics: metrics})
	}
	srv := &prewarm.Server{Manager: mgr, Images: keeper, Logger: log}

	l, err := prewarm.ListenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	log.Info("api listening", "socket", cfg.Socket)
	var ml net.Listener
	if cfg.MetricsAddr != "" {
		if ml, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			l.Close()
			return fmt.Errorf("metrics %s: %w", cfg.MetricsAddr, err)
		}
		log.Info("metrics listening", "addr", ml.Addr().String())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return mgr.Run(gctx) })
	g.Go(func() error { return prewarm.Serve(gctx, l, srv.Handler()) })
	if ml != nil {
		g.Go(func() error { return prewarm.Serve(gctx, ml, srv.MetricsHandler(metrics)) })
	}
	if keeper != nil {
		g.Go(func() error { return keeper.Run(gctx) })
	}
	err = g.Wait()
	log.Info("lazyfs-prewarm stopped")
	return err
}

// openGPUs returns NVML's inventory, or nil and the reason for report-only
// mode (no driver, no GPU).
func openGPUs(ctx context.Context, cfg config, log *slog.Logger) (prewarm.GPUs, string) {
	if cfg.FakeGPUs > 0 {
		log.Warn("using fake GPUs and a fake CUDA driver", "n", cfg.FakeGPUs)
		return prewarm.NewFakeGPUs(cfg.FakeGPUs), ""
	}
	gpus, err := prewarm.OpenNVML()
	if err != nil {
		reason := err.Error()
		log.Warn("REPORT-ONLY MODE: no NVIDIA driver; no GPU will be held or claimable, image warming still runs", "reason", reason)
		return nil, reason
	}
	devs, err := gpus.Devices(ctx)
	if err == nil && len(devs) == 0 {
		err = fmt.Errorf("nvml: no GPU found")
	}
	if err != nil {
		gpus.Close()
		log.Warn("REPORT-ONLY MODE: no usable GPU; no GPU will be held or claimable, image warming still runs", "reason", err.Error())
		return nil, err.Error()
	}
	for _, d := range devs {
		log.Info("gpu", "uuid", d.UUID, "name", d.Name, "mig", d.IsMIG(), "persistence", d.Persistence, "compute_mode", d.ComputeMode)
	}
	return gpus, ""
}
