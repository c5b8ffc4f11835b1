// Command stargzd is stargz-snapshotter's containerd proxy plugin daemon,
// installed as containerd-stargz-grpc for the bench harness's stargz mode.
//
// It exists because stargz-snapshotter's cmd module, which holds the real
// containerd-stargz-grpc, cannot be fetched from our module proxy, while its
// library module can. This is the same snapshotter (service.Config,
// service.NewStargzSnapshotterService) behind a minimal main: the upstream
// flags and config file, without the FUSE manager, metrics, debug socket,
// and Kubernetes/CRI keychains. Credentials come from ~/.docker/config.json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	golog "log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

const defaultConfigPath = "/etc/containerd-stargz-grpc/config.toml"

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket for the snapshotter's gRPC server")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc/", "root directory for the snapshotter's state")
	configPath := flag.String("config", defaultConfigPath, "path to the TOML configuration file")
	logLevel := flag.String("log-level", "info", "log level [trace, debug, info, warn, error, fatal, panic]")
	flag.Parse()

	if err := log.SetLevel(*logLevel); err != nil {
		log.L.WithError(err).Fatal("bad --log-level")
	}
	if err := log.SetFormat(log.JSONFormat); err != nil {
		log.L.WithError(err).Fatal("set log format")
	}
	// go-fuse logs through the standard library; keep it at debug level.
	golog.SetOutput(log.L.WriterLevel(log.DebugLevel))

	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer stop()
	ctx = log.WithLogger(ctx, log.L)
	if err := run(ctx, *address, *root, *configPath); err != nil {
		log.G(ctx).WithError(err).Fatal("containerd-stargz-grpc")
	}
	log.G(ctx).Info("exiting")
}

// loadConfig reads path into a service.Config. Defaults are those the
// upstream daemon gets from the config's `default` struct tags; a missing
// file is an error unless path is the default one.
func loadConfig(path string) (*service.Config, error) {
	var cfg service.Config
	cfg.Direct = true
	cfg.MergeBufferSize = 400 << 20
	cfg.MergeWorkerCount = 10
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && path == defaultConfigPath {
		return &cfg, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := toml.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.PassThrough {
		cfg.Direct = true // passthrough needs the cache to hand out files
	}
	return &cfg, nil
}

func run(ctx context.Context, address, root, configPath string) error {
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("snapshotter not supported on %s: %w", root, err)
	}
	sn, err := service.NewStargzSnapshotterService(ctx, root, cfg,
		service.WithCredsFuncs(dockerconfig.NewDockerconfigKeychain(ctx)))
	if err != nil {
		return err
	}
	// Close unmounts the snapshotter's FUSE mounts; without it they would
	// outlive the process as dead mounts.
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("close snapshotter")
		}
	}()

	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.RemoveAll(address); err != nil { // a stale socket from a crash
		return err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	errc := make(chan error, 1)
	go func() { errc <- rpc.Serve(l) }()
	log.G(ctx).WithField("address", address).Info("serving")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("got signal, shutting down")
		done := make(chan struct{})
		go func() { rpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second): // a Prepare still fetching
			rpc.Stop()
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", address, err)
	}
}
