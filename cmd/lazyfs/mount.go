package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

const defaultStateDir = "/run/lazyfs"

// mountState is what a mount server records so that umount and stats find it.
type mountState struct {
	PID    int    `json:"pid"`
	Dir    string `json:"dir"`
	Ref    string `json:"ref"`
	Socket string `json:"socket"`
	Log    string `json:"log"`
}

func stateID(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return hex.EncodeToString(sum[:8])
}

func statePaths(stateDir, dir string) (state, sock, logf string) {
	base := filepath.Join(stateDir, "mounts", stateID(dir))
	return base + ".json", base + ".sock", base + ".log"
}

type mountFlags struct {
	foreground  bool
	notifyFD    int
	cacheDir    string
	cacheSize   sizeFlag
	insecure    bool
	platform    string
	pull        bool
	readAhead   int
	neighbours  sizeFlag
	passthrough bool
	stateDir    string
	hostsDir    string
	debug       bool
	fill        bool
	profileDir  string
}

func newMountCmd() *cobra.Command {
	mf := mountFlags{cacheSize: sizeFlag(blobcache.DefaultCapacity)}
	cmd := &cobra.Command{
		Use:   "mount [flags] REF DIR",
		Short: "Mount an image's files lazily at DIR",
		Long: `Mount fetches REF's manifest and layer indexes, mounts the merged root
filesystem read-only at DIR, and returns once the mount is ready; a server keeps
serving it in the background (--foreground keeps it attached, and unmounts on
SIGINT/SIGTERM). File contents are fetched from the registry chunk by chunk as
they are read, verified, and kept in the block cache (--cache-dir).

REF must be a lazyfs image (see lazyfs convert); --pull serves any image by
fetching its layers whole first. Unmount with: lazyfs umount DIR.`,
		Example: "  lazyfs mount 127.0.0.1:5000/python:3.12-lazy /mnt/python\n  chroot /mnt/python python3 -c 'import json'\n  lazyfs umount /mnt/python",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return fmt.Errorf("mount point %s: not a directory", dir)
			}
			if isMounted(dir) {
				return fmt.Errorf("%s is already a lazyfs mount (lazyfs umount %s first)", dir, dir)
			}
			if mf.foreground {
				return serveMount(cmd, args[0], dir, &mf)
			}
			return spawnMount(cmd, args[0], dir, &mf)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&mf.foreground, "foreground", false, "stay attached; unmount on SIGINT/SIGTERM")
	f.IntVar(&mf.notifyFD, "notify-fd", -1, "file descriptor to report readiness on (internal)")
	_ = f.MarkHidden("notify-fd")
	f.StringVar(&mf.cacheDir, "cache-dir", "/var/lib/lazyfs/cache", "block cache directory (\"\" for an in-memory cache)")
	f.Var(&mf.cacheSize, "cache-size", "block cache capacity")
	f.BoolVar(&mf.insecure, "insecure", false, "allow plain HTTP to any registry")
	f.StringVar(&mf.platform, "platform", "", "platform to pick from an index (default: this machine's)")
	f.BoolVar(&mf.pull, "pull", false, "serve images that are not lazyfs-converted by fetching their layers whole")
	f.IntVar(&mf.readAhead, "read-ahead", 0, "chunks fetched ahead of a sequential reader (0: default, -1: none)")
	f.Var(&mf.neighbours, "neighbour-window", "compressed bytes after a small file fetched in the background when it misses (0: default 1MiB, e.g. 1B to disable)")
	f.BoolVar(&mf.passthrough, "passthrough", false, "serve fully cached files through FUSE passthrough (kernel ≥ 6.9)")
	f.StringVar(&mf.stateDir, "state-dir", defaultStateDir, "where mount servers record their state")
	f.StringVar(&mf.hostsDir, "hosts-dir", "", "containerd-style hosts.toml directory for registry mirrors")
	f.BoolVar(&mf.debug, "debug", false, "log debug messages")
	f.BoolVar(&mf.fill, "fill", false, "after the start-up profile, fetch the rest of the image in the background (stops before the cache would evict)")
	f.StringVar(&mf.profileDir, "profile-dir", defaultProfileDir, "start-up profiles learned on this node: prefetched at mount, recorded until unmount (\"\": none)")
	return cmd
}

// spawnMount starts the mount server as a background process and waits until
// it reports the mount ready (or failed).
func spawnMount(cmd *cobra.Command, ref, dir string, mf *mountFlags) error {
	_, _, logPath := statePaths(mf.stateDir, dir)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
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
	child := exec.Command(self, args...)
	child.Stdout, child.Stderr, child.Stdin = logf, logf, nil
	child.ExtraFiles = []*os.File{pw}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start mount server: %w", err)
	}
	pw.Close()
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	line, rerr := bufio.NewReader(pr).ReadString('\n')
	pr.Close()
	if msg, ok := strings.CutPrefix(line, "ready "); ok {
		var st image.Stats
		if err := json.Unmarshal([]byte(msg), &st); err != nil {
			return fmt.Errorf("mount server: %w", err)
		}
		pid := child.Process.Pid
		_ = child.Process.Release()
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in %.0f ms: %d layers, %d entries, %s of the %s image fetched so far\nserving in the background (pid %d, log %s); unmount with: lazyfs umount %s\n",
			ref, dir, st.ReadySeconds*1000, st.Layers, st.Entries, humanBytes(st.Remote.BytesFetched), humanBytes(st.ImageSize),
			pid, logPath, dir)
		return err
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		<-done
		return errors.New(strings.TrimSpace(msg))
	}
	err = <-done
	tail, _ := os.ReadFile(logPath)
	return fmt.Errorf("mount server exited before the mount was ready (%v, %v): %s", err, rerr, lastLines(string(tail), 10))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// serveMount mounts and serves in this process until unmounted or signalled.
func serveMount(cmd *cobra.Command, ref, dir string, mf *mountFlags) (err error) {
	if path := os.Getenv("LAZYFS_CPUPROFILE"); path != "" {
		// For developers: profile a mount server from start to unmount.
		if f, perr := os.Create(path); perr == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
		}
	}
	level := slog.LevelInfo
	if mf.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	var notify *os.File
	if mf.notifyFD >= 0 {
		notify = os.NewFile(uintptr(mf.notifyFD), "notify")
		defer func() {
			if err != nil {
				fmt.Fprintf(notify, "error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			}
			notify.Close()
		}()
	}
	var p *v1.Platform
	if mf.platform != "" {
		if p, err = v1.ParsePlatform(mf.platform); err != nil {
			return fmt.Errorf("--platform %q: %w", mf.platform, err)
		}
	}
	ropts := []remote.Option{remote.WithInsecure(mf.insecure), remote.WithLogger(log), remote.WithUserAgent("lazyfs-mount")}
	if mf.hostsDir != "" {
		ropts = append(ropts, remote.WithHostsDir(mf.hostsDir))
	}
	cache, closeCache, err := openCache(mf.cacheDir, int64(mf.cacheSize), log)
	if err != nil {
		return err
	}
	defer closeCache()
	opts := image.Options{
		Platform: p, Fetcher: remote.New(ropts...), Cache: cache, Pull: mf.pull, Logger: log,
		FS:       fs.Options{ReadAhead: mf.readAhead, Passthrough: mf.passthrough, NeighbourWindow: int64(mf.neighbours)},
		Mount:    fs.MountOptions{Debug: mf.debug},
		Profiles: image.ProfileOptions{Source: registryProfile, Prefetch: fs.PrefetchOptions{Fill: mf.fill}},
	}
	if mf.profileDir != "" {
		if opts.Profiles.Store, err = profile.NewStore(mf.profileDir); err != nil {
			return err
		}
	}
	if mf.passthrough {
		spool := filepath.Join(mf.stateDir, "spool", stateID(dir))
		if err := os.MkdirAll(spool, 0o700); err != nil {
			return err
		}
		defer os.RemoveAll(spool)
		opts.FS.SpoolDir = spool
	}
	m, err := image.Mount(cmd.Context(), ref, dir, opts)
	if err != nil {
		return err
	}
	defer m.Close()

	statePath, sockPath, logPath := statePaths(mf.stateDir, dir)
	stopStats, err := serveStats(sockPath, m, image.WarmHandler(m.Fetcher, cache))
	if err != nil {
		return err
	}
	defer stopStats()
	st := mountState{PID: os.Getpid(), Dir: dir, Ref: ref, Socket: sockPath, Log: logPath}
	if err := writeJSONAtomic(statePath, st); err != nil {
		return err
	}
	defer os.Remove(statePath)
	log.Info("mounted", "image", ref, "dir", dir, "ready", m.Ready, "layers", len(m.Image.Layers), "entries", m.Entries)
	if notify != nil {
		b, _ := json.Marshal(m.Stats())
		fmt.Fprintf(notify, "ready %s\n", b)
		notify.Close()
		notify = nil
	} else {
		fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in %v; Ctrl-C to unmount\n", ref, dir, m.Ready.Round(time.Millisecond))
	}
	unmounted := make(chan struct{})
	go func() { m.Server.Wait(); close(unmounted) }()
	select {
	case <-cmd.Context().Done():
		log.Info("unmounting", "dir", dir)
	case <-unmounted:
		log.Info("unmounted from outside", "dir", dir)
	}
	return nil
}

// nodeCache is what a mount server needs of the block cache: reads through
// it (fs) and warming it (image.WarmHandler). Both blobcache caches are one.
type nodeCache interface {
	fs.Cache
	image.WarmCache
}

// openCache opens the badger block cache; when another process holds the
// directory it falls back to an in-memory cache of the same capacity.
func openCache(dir string, capacity int64, log *slog.Logger) (nodeCache, func(), error) {
	if dir == "" {
		return blobcache.NewMemory(blobcache.WithCapacity(capacity)), func() {}, nil
	}
	c, err := blobcache.Open(dir, blobcache.WithCapacity(capacity), blobcache.WithLogger(log))
	if err != nil {
		log.Warn("block cache unavailable, using an in-memory cache for this mount", "dir", dir, "err", err)
		return blobcache.NewMemory(blobcache.WithCapacity(capacity)), func() {}, nil
	}
	return c, func() { c.Close() }, nil
}

// serveStats serves a mount's counters (GET /stats) and warming of its cache
// (POST /v1/warm, the lazyfs-prewarm contract) on a unix socket.
func serveStats(sock string, m *image.Mounted, warm http.Handler) (func(), error) {
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("stats socket: %w", err)
	}
	os.Chmod(sock, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(m.Stats())
	})
	mux.Handle("POST /v1/warm", warm)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return func() { srv.Close(); os.Remove(sock) }, nil
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readState(stateDir, dir string) (*mountState, error) {
	path, _, _ := statePaths(stateDir, dir)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st mountState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return &st, nil
}

// isMounted reports whether dir is a lazyfs mount point (fstype fuse.lazyfs
// in /proc/self/mountinfo), served or stale. Other mounts never count, so
// umount cannot take down a filesystem that is not ours.
func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMount(f[4]) != dir {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" && f[i+1] == "fuse.lazyfs" {
				return true
			}
		}
	}
	return false
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func processAlive(pid int) bool {
	return pid > 0 && unix.Kill(pid, 0) == nil
}

func newUmountCmd() *cobra.Command {
	var stateDir string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount a lazyfs mount and stop its server",
		Long:  "Umount stops the server of the mount at DIR and unmounts it. A stale mount whose server died is unmounted too.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			st, serr := readState(stateDir, dir)
			mounted := isMounted(dir)
			if serr != nil && !mounted {
				return fmt.Errorf("%s is not a lazyfs mount", dir)
			}
			if st != nil && processAlive(st.PID) {
				_ = unix.Kill(st.PID, unix.SIGTERM)
				deadline := time.Now().Add(timeout)
				for processAlive(st.PID) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if isMounted(dir) {
				if err := unix.Unmount(dir, 0); err != nil {
					if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
						return fmt.Errorf("unmount %s: %w", dir, err)
					}
				}
			}
			if st != nil {
				statePath, sock, _ := statePaths(stateDir, dir)
				os.Remove(statePath)
				os.Remove(sock)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unmounted %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "where mount servers record their state")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the server to stop before unmounting by force")
	return cmd
}

func newStatsCmd() *cobra.Command {
	var stateDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats DIR",
		Short: "Show a lazyfs mount's counters (bytes fetched, cache hits, reads)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			st, err := readState(stateDir, dir)
			if err != nil {
				return fmt.Errorf("%s is not a lazyfs mount served from this machine: %w", dir, err)
			}
			s, err := fetchStats(cmd.Context(), st.Socket)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "image:        %s (%s)\n", s.Image, s.Digest)
			fmt.Fprintf(w, "ready in:     %.0f ms\n", s.ReadySeconds*1000)
			fmt.Fprintf(w, "image size:   %s compressed, %s of tar, %d entries\n", humanBytes(s.ImageSize), humanBytes(s.TarSize), s.Entries)
			fmt.Fprintf(w, "fetched:      %s in %d requests (%.1f%% of the image)\n", humanBytes(s.Remote.BytesFetched), s.Remote.Requests, 100*float64(s.Remote.BytesFetched)/float64(max(s.ImageSize, 1)))
			fmt.Fprintf(w, "reads:        %d (%s), chunk hits %d, misses %d, read-ahead %d, EIO %d\n", s.FS.Reads, humanBytes(s.FS.BytesRead), s.FS.ChunkHits, s.FS.ChunkMisses, s.FS.Prefetched, s.FS.EIO)
			if p := s.Prefetch; p != nil {
				fmt.Fprintf(w, "prefetch:     %s; profile (%s) %d/%d chunks local, image %d/%d chunks local%s\n", p.Phase, s.ProfileSource, p.ProfileLocal, p.ProfileChunks, p.ImageLocal, p.ImageChunks, fillNote(p.FillStopped))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "where mount servers record their state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func fetchStats(ctx context.Context, sock string) (*image.Stats, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://lazyfs/stats", nil)
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mount server not answering on %s: %w", sock, err)
	}
	defer resp.Body.Close()
	var s image.Stats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&s); err != nil {
		return nil, err
	}
	return &s, nil
}
