package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/lazyfs/lazyfs/internal/unixsock"
	"github.com/lazyfs/lazyfs/snapshotter/locate"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/lazyfs/lazyfs/snapshotter"
)

// Deps is what the node wiring hands the service.
type Deps struct {
	// FileSystem mounts layers lazily; nil makes a plain overlay snapshotter.
	FileSystem snapshotter.FileSystem
	// Control serves the node control API on Config.ControlAddress; nil
	// leaves that socket closed.
	Control http.Handler
	// Collectors are registered with the snapshotter's own metrics.
	Collectors []prometheus.Collector
	// Logger receives the daemon's log; nil discards it.
	Logger *slog.Logger
}

// Server is a running lazyfs-snapshotter: listeners open, snapshotter
// restored, ready for containerd.
type Server struct {
	cfg      Config
	log      *slog.Logger
	sn       *snapshotter.Snapshotter
	locator  *locate.Content
	rpc      *grpc.Server
	rpcL     net.Listener
	control  *http.Server
	controlL net.Listener
	metrics  *http.Server
	metricsL net.Listener
}

// ShutdownTimeout bounds a graceful stop before connections are cut.
const ShutdownTimeout = 10 * time.Second

// New opens the snapshotter under cfg.Root (restoring its lazy mounts) and
// opens every listener; Serve then answers on them. Unix sockets are created
// mode 0600 inside a directory of mode 0700.
func New(ctx context.Context, cfg Config, d Deps) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	m := snapshotter.NewMetrics()
	if err := reg.Register(m); err != nil {
		return nil, err
	}
	for _, c := range d.Collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	s := &Server{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	opts := []snapshotter.Option{snapshotter.WithLogger(log), snapshotter.WithMetrics(m), snapshotter.WithMountTimeout(time.Duration(cfg.MountTimeout))}
	if d.FileSystem != nil {
		opts = append(opts, snapshotter.WithFileSystem(d.FileSystem))
	}
	if cfg.ContainerdAddress != "" {
		s.locator = locate.New(cfg.ContainerdAddress, locate.WithHostsDir(cfg.HostsDir))
		opts = append(opts, snapshotter.WithLocator(s.locator))
	}
	if err := mkdirPrivate(cfg.Root); err != nil {
		return nil, err
	}
	if s.sn, err = snapshotter.New(ctx, filepath.Join(cfg.Root, "snapshotter"), opts...); err != nil {
		return nil, err
	}
	if s.rpcL, err = ListenUnix(cfg.Address); err != nil {
		return nil, err
	}
	s.rpc = grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(s.rpc, snapshotservice.FromSnapshotter(s.sn))
	if d.Control != nil && cfg.ControlAddress != "" {
		if s.controlL, err = ListenUnix(cfg.ControlAddress); err != nil {
			return nil, err
		}
		s.control = &http.Server{Handler: d.Control, ReadHeaderTimeout: 10 * time.Second}
	}
	if cfg.MetricsAddress != "" {
		if s.metricsL, err = net.Listen("tcp", cfg.MetricsAddress); err != nil {
			return nil, fmt.Errorf("metrics address %s: %w", cfg.MetricsAddress, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
		s.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return s, nil
}

// Snapshotter returns the served snapshotter.
func (s *Server) Snapshotter() *snapshotter.Snapshotter { return s.sn }

// MetricsAddr returns the metrics listener's address, or "" when disabled.
func (s *Server) MetricsAddr() string {
	if s.metricsL == nil {
		return ""
	}
	return s.metricsL.Addr().String()
}

// Serve answers until ctx is done, then stops gracefully (within
// ShutdownTimeout) and closes the snapshotter. Lazy mounts stay with their
// FileSystem, whose owner decides whether they outlive the process.
func (s *Server) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.rpc.Serve(s.rpcL); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("snapshots API on %s: %w", s.cfg.Address, err)
		}
		return nil
	})
	for _, h := range []struct {
		srv *http.Server
		l   net.Listener
	}{{s.control, s.controlL}, {s.metrics, s.metricsL}} {
		if h.srv == nil {
			continue
		}
		g.Go(func() error {
			if err := h.srv.Serve(h.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s: %w", h.l.Addr(), err)
			}
			return nil
		})
	}
	s.log.Info("lazyfs-snapshotter serving", "address", s.cfg.Address, "control", s.cfg.ControlAddress, "metrics", s.MetricsAddr(), "root", s.cfg.Root)
	g.Go(func() error {
		<-gctx.Done()
		s.shutdown()
		return nil
	})
	err := g.Wait()
	if cerr := s.sn.Close(); err == nil {
		err = cerr
	}
	if s.locator != nil {
		s.locator.Close()
	}
	return err
}

func (s *Server) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() { s.rpc.GracefulStop(); close(done) }()
	for _, srv := range []*http.Server{s.control, s.metrics} {
		if srv != nil {
			srv.Shutdown(ctx)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		s.rpc.Stop()
	}
	os.Remove(s.cfg.Address)
	if s.controlL != nil {
		os.Remove(s.cfg.ControlAddress)
	}
}

// closeAll releases what New opened when New fails.
func (s *Server) closeAll() {
	for _, l := range []net.Listener{s.rpcL, s.controlL, s.metricsL} {
		if l != nil {
			l.Close()
		}
	}
	if s.sn != nil {
		s.sn.Close()
	}
	if s.locator != nil {
		s.locator.Close()
	}
}

// ListenUnix is unixsock.Listen: a socket born 0600 in a 0700 directory,
// never taking over a live one.
func ListenUnix(path string) (net.Listener, error) { return unixsock.Listen(path) }

func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("root %s: %w", dir, err)
	}
	return nil
}

// ServeHolder runs the holder process of holder mode: the node's control API
// h (which includes the lazy layer endpoints the snapshotter's
// node.RemoteLayerFS calls) on cfg.ControlAddress and collectors on
// cfg.HolderMetricsAddress, until ctx is done. The FUSE mounts live in this
// process, so the snapshotter can be restarted or upgraded without running
// containers losing their layers.
func ServeHolder(ctx context.Context, cfg Config, h http.Handler, collectors []prometheus.Collector, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ControlAddress == "" {
		return errors.New("holder: control_address must not be empty")
	}
	reg := prometheus.NewRegistry()
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	cl, err := ListenUnix(cfg.ControlAddress)
	if err != nil {
		return err
	}
	servers := []*http.Server{{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	listeners := []net.Listener{cl}
	if cfg.HolderMetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.HolderMetricsAddress)
		if err != nil {
			cl.Close()
			return fmt.Errorf("holder metrics address %s: %w", cfg.HolderMetricsAddress, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
		servers = append(servers, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second})
		listeners = append(listeners, ml)
	}
	log.Info("lazyfs holder serving", "control", cfg.ControlAddress, "metrics", cfg.HolderMetricsAddress, "root", cfg.Root)
	g, gctx := errgroup.WithContext(ctx)
	for i, srv := range servers {
		g.Go(func() error {
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s: %w", listeners[i].Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		for _, srv := range servers {
			srv.Shutdown(sctx)
		}
		os.Remove(cfg.ControlAddress)
		return nil
	})
	return g.Wait()
}
