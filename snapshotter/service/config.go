// Package service runs lazyfs-snapshotter: it serves a snapshotter.Snapshotter
// to containerd over gRPC (the proxy plugin API), the node's control API on a
// second unix socket, and Prometheus metrics, and reads the daemon's TOML
// configuration. cmd/lazyfs-snapshotter only parses flags and wires the node.
package service

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/fsconf"
	"github.com/lazyfs/lazyfs/internal/size"
)

// DefaultConfigPath is where the daemon looks for its configuration.
const DefaultConfigPath = "/etc/lazyfs/config.toml"

// Config is the daemon's configuration: Defaults(), then the TOML file, then
// flags set explicitly. Keys in the file are the flag names with '_' for '-'.
type Config struct {
	Address        string `toml:"address"`         // containerd snapshots gRPC socket
	ControlAddress string `toml:"control_address"` // control API socket (lazyfs mount/ls/stats, /v1/warm)
	Root           string `toml:"root"`            // state: snapshots, metadata
	CacheDir       string `toml:"cache_dir"`       // block cache directory (default ROOT/cache)
	CacheSize      Size   `toml:"cache_size"`      // block cache bound
	HostsDir       string `toml:"hosts_dir"`       // containerd-style hosts.toml directory for mirrors
	// ContainerdAddress is containerd's gRPC socket, where the images of
	// layers that come without labels are looked up ("" disables).
	ContainerdAddress string   `toml:"containerd_address"`
	MetricsAddress    string   `toml:"metrics_address"` // TCP address for /metrics; "" disables
	LogLevel          string   `toml:"log_level"`       // debug, info, warn, error
	MountTimeout      Duration `toml:"mount_timeout"`   // bound on mounting one layer lazily
	ProfileDir        string   `toml:"profile_dir"`     // start-up profiles learned on the node (default ROOT/profiles)
	Fill              bool     `toml:"fill"`            // after its profile, fetch the rest of a merged image mount in the background

	// The registry fetcher's limits (internal/fetchconf, docs/remote.md):
	// what a slow or failing registry may cost a read before it fails.
	FetchDeadline    Duration             `toml:"fetch_deadline"`    // bound on one chunk fetch, retries included; then EIO
	StallTimeout     Duration             `toml:"stall_timeout"`     // retry a request that sends nothing for this long
	MinThroughput    fetchconf.Throughput `toml:"min_throughput"`    // retry a request slower than this per second; "off": never
	ThroughputWindow Duration             `toml:"throughput_window"` // window of min_throughput
	RetryAttempts    int                  `toml:"retry_attempts"`    // attempts per registry host
	RetryDeadline    Duration             `toml:"retry_deadline"`    // no new attempt this long after the last that made progress

	// The file-system tuning of every lazy mount of the node
	// (internal/fsconf, docs/fs.md); 0 or "off" switches one off.
	ReadAhead       fsconf.Count `toml:"read_ahead"`       // most chunks fetched ahead of a sequential reader
	NeighbourWindow fsconf.Bytes `toml:"neighbour_window"` // compressed bytes after a small file fetched in the background when it misses
	WholeLibrary    fsconf.Bytes `toml:"whole_library"`    // largest shared library fetched whole when opened without a profile
	Passthrough     bool         `toml:"passthrough"`      // serve fully cached files through FUSE passthrough (copies in ROOT/spool)

	// Holder makes the snapshotter use the lazy layers of a holder process
	// (`lazyfs-snapshotter holder`) serving the node at ControlAddress,
	// instead of a node of its own: the snapshotter can then restart while
	// running containers keep reading their layers.
	Holder bool `toml:"holder"`
	// HolderMetricsAddress is the holder's /metrics address ("" disables).
	HolderMetricsAddress string `toml:"holder_metrics_address"`
}

// Defaults returns the built-in configuration.
func Defaults() Config {
	fd := fetchconf.Defaults()
	fsd := fsconf.Defaults()
	return Config{
		Address:           "/run/lazyfs/snapshotter.sock",
		ControlAddress:    "/run/lazyfs/control.sock",
		Root:              "/var/lib/lazyfs",
		CacheSize:         10 << 30,
		MetricsAddress:    "127.0.0.1:9611",
		ContainerdAddress: "/run/containerd/containerd.sock",
		LogLevel:          "info",
		MountTimeout:      Duration(30 * time.Second),
		Fill:              true,

		FetchDeadline:    Duration(fd.FetchDeadline),
		StallTimeout:     Duration(fd.StallTimeout),
		MinThroughput:    fd.MinThroughput,
		ThroughputWindow: Duration(fd.ThroughputWindow),
		RetryAttempts:    fd.RetryAttempts,
		RetryDeadline:    Duration(fd.RetryDeadline),

		ReadAhead:       fsd.ReadAhead,
		NeighbourWindow: fsd.NeighbourWindow,
		WholeLibrary:    fsd.WholeLibrary,
		Passthrough:     fsd.Passthrough,

		HolderMetricsAddress: "127.0.0.1:9612",
	}
}

// BindFlags registers a flag for every key on f, with c's values as defaults.
func (c *Config) BindFlags(f *pflag.FlagSet) {
	f.StringVar(&c.Address, "address", c.Address, "unix socket for containerd's snapshots API (proxy plugin address)")
	f.StringVar(&c.ControlAddress, "control-address", c.ControlAddress, "unix socket of the node control API (lazyfs mount/ls/stats, lazyfs-prewarm)")
	f.StringVar(&c.Root, "root", c.Root, "state directory (snapshots, metadata)")
	f.StringVar(&c.CacheDir, "cache-dir", c.CacheDir, "block cache directory (default ROOT/cache)")
	f.Var(&c.CacheSize, "cache-size", "block cache bound (e.g. 10GiB)")
	f.StringVar(&c.HostsDir, "hosts-dir", c.HostsDir, "directory of containerd-style HOST/hosts.toml files (mirrors)")
	f.StringVar(&c.ContainerdAddress, "containerd-address", c.ContainerdAddress, `containerd's socket, where the images of layers pulled without labels (nerdctl, ctr run) are looked up ("" disables)`)
	f.StringVar(&c.MetricsAddress, "metrics-address", c.MetricsAddress, `TCP address for /metrics ("" disables)`)
	f.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	f.Var(&c.MountTimeout, "mount-timeout", "bound on mounting one layer lazily before it falls back")
	f.StringVar(&c.ProfileDir, "profile-dir", c.ProfileDir, "start-up profiles learned on this node (default ROOT/profiles)")
	f.BoolVar(&c.Fill, "fill", c.Fill, "after its start-up profile, fetch the rest of a merged image mount in the background (--fill=false: off)")
	f.Var(&c.FetchDeadline, "fetch-deadline", fmt.Sprintf("bound on one chunk fetch, retries included; then the read fails with EIO (%v-%v)", fetchconf.MinDuration, fetchconf.MaxFetchDeadline))
	f.Var(&c.StallTimeout, "stall-timeout", fmt.Sprintf("retry a registry request that sends nothing for this long (%v-%v)", fetchconf.MinDuration, fetchconf.MaxStallTimeout))
	f.Var(&c.MinThroughput, "min-throughput", fmt.Sprintf("retry a registry request slower than this per second over throughput-window, up to %v (0 or off: never)", fetchconf.Throughput(fetchconf.MaxThroughput)))
	f.Var(&c.ThroughputWindow, "throughput-window", fmt.Sprintf("window of min-throughput (%v-%v)", fetchconf.MinDuration, fetchconf.MaxWindow))
	f.IntVar(&c.RetryAttempts, "retry-attempts", c.RetryAttempts, fmt.Sprintf("attempts per registry host (1-%d)", fetchconf.MaxRetryAttempts))
	f.Var(&c.RetryDeadline, "retry-deadline", fmt.Sprintf("no new attempt this long after the last one that made progress (%v-%v)", fetchconf.MinDuration, fetchconf.MaxRetryDeadline))
	f.Var(&c.ReadAhead, "read-ahead", fmt.Sprintf("most chunks fetched ahead of a sequential reader, 1-%d (0 or off: none)", fsconf.MaxReadAhead))
	f.Var(&c.NeighbourWindow, "neighbour-window", fmt.Sprintf("compressed bytes after a small file fetched in the background when it misses, up to %s (0 or off: none)", size.Format(fsconf.MaxNeighbourWindow)))
	f.Var(&c.WholeLibrary, "whole-library", fmt.Sprintf("fetch a shared library of up to this many compressed bytes whole when it is opened without a start-up profile, and the libraries it needs; up to %s (0 or off: never)", size.Format(fsconf.MaxWholeLibrary)))
	f.BoolVar(&c.Passthrough, "passthrough", c.Passthrough, "serve fully cached files through FUSE passthrough (kernel ≥ 6.9; copies in ROOT/spool)")
	f.BoolVar(&c.Holder, "holder", c.Holder, "use the lazy layers of the holder process serving --control-address (lazyfs-snapshotter holder)")
	f.StringVar(&c.HolderMetricsAddress, "holder-metrics-address", c.HolderMetricsAddress, `TCP address for the holder's /metrics ("" disables)`)
}

// Load returns Defaults() overlaid with the TOML file at path and then with the
// flags of f that were set (flags win). A missing file is an error only when
// explicit is true (the path came from --config).
func Load(path string, explicit bool, flags Config, f *pflag.FlagSet) (Config, error) {
	c := Defaults()
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && !explicit:
		case err != nil:
			return c, fmt.Errorf("config %s: %w", path, err)
		default:
			if len(b) > 1<<20 {
				return c, fmt.Errorf("config %s: larger than 1 MiB", path)
			}
			dec := toml.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				return c, decodeError(path, err)
			}
		}
	}
	if f != nil {
		set := map[string]func(){
			"address":                func() { c.Address = flags.Address },
			"control-address":        func() { c.ControlAddress = flags.ControlAddress },
			"root":                   func() { c.Root = flags.Root },
			"cache-dir":              func() { c.CacheDir = flags.CacheDir },
			"cache-size":             func() { c.CacheSize = flags.CacheSize },
			"hosts-dir":              func() { c.HostsDir = flags.HostsDir },
			"containerd-address":     func() { c.ContainerdAddress = flags.ContainerdAddress },
			"metrics-address":        func() { c.MetricsAddress = flags.MetricsAddress },
			"log-level":              func() { c.LogLevel = flags.LogLevel },
			"mount-timeout":          func() { c.MountTimeout = flags.MountTimeout },
			"profile-dir":            func() { c.ProfileDir = flags.ProfileDir },
			"fill":                   func() { c.Fill = flags.Fill },
			"fetch-deadline":         func() { c.FetchDeadline = flags.FetchDeadline },
			"stall-timeout":          func() { c.StallTimeout = flags.StallTimeout },
			"min-throughput":         func() { c.MinThroughput = flags.MinThroughput },
			"throughput-window":      func() { c.ThroughputWindow = flags.ThroughputWindow },
			"retry-attempts":         func() { c.RetryAttempts = flags.RetryAttempts },
			"retry-deadline":         func() { c.RetryDeadline = flags.RetryDeadline },
			"read-ahead":             func() { c.ReadAhead = flags.ReadAhead },
			"neighbour-window":       func() { c.NeighbourWindow = flags.NeighbourWindow },
			"whole-library":          func() { c.WholeLibrary = flags.WholeLibrary },
			"passthrough":            func() { c.Passthrough = flags.Passthrough },
			"holder":                 func() { c.Holder = flags.Holder },
			"holder-metrics-address": func() { c.HolderMetricsAddress = flags.HolderMetricsAddress },
		}
		f.Visit(func(fl *pflag.Flag) {
			if fn := set[fl.Name]; fn != nil {
				fn()
			}
		})
	}
	return c, c.Validate()
}

// decodeError names the key of a TOML error: go-toml's own text names
// neither an unknown key nor the key of a value it cannot take.
func decodeError(path string, err error) error {
	var sme *toml.StrictMissingError
	if errors.As(err, &sme) {
		keys := make([]string, len(sme.Errors))
		for i := range sme.Errors {
			keys[i] = strings.Join(sme.Errors[i].Key(), ".")
		}
		return fmt.Errorf("config %s: unknown key %s (keys are the flag names with '_' for '-')", path, strings.Join(keys, ", "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) && len(de.Key()) > 0 {
		row, _ := de.Position()
		return fmt.Errorf("config %s: line %d: %s: %w", path, row, strings.Join(de.Key(), "."), err)
	}
	return fmt.Errorf("config %s: %w", path, err)
}

// Validate reports the first unusable value.
func (c Config) Validate() error {
	switch {
	case c.Address == "":
		return errors.New("config: address must not be empty")
	case c.Root == "":
		return errors.New("config: root must not be empty")
	case c.CacheSize == 0:
		return errors.New("config: cache_size must be positive")
	case c.MountTimeout <= 0:
		return errors.New("config: mount_timeout must be positive")
	case c.Holder && c.ControlAddress == "":
		return errors.New("config: holder needs control_address (the holder's socket)")
	}
	if _, err := c.Level(); err != nil {
		return err
	}
	if err := c.Fetch().Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := c.FS().Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Fetch is the registry fetcher's limits (fetch_deadline ... retry_deadline).
func (c Config) Fetch() fetchconf.Config {
	return fetchconf.Config{
		FetchDeadline:    time.Duration(c.FetchDeadline),
		StallTimeout:     time.Duration(c.StallTimeout),
		MinThroughput:    c.MinThroughput,
		ThroughputWindow: time.Duration(c.ThroughputWindow),
		RetryAttempts:    c.RetryAttempts,
		RetryDeadline:    time.Duration(c.RetryDeadline),
	}
}

// FS is the file-system tuning of the node's mounts (read_ahead ...
// passthrough).
func (c Config) FS() fsconf.Config {
	return fsconf.Config{
		ReadAhead:       c.ReadAhead,
		NeighbourWindow: c.NeighbourWindow,
		WholeLibrary:    c.WholeLibrary,
		Passthrough:     c.Passthrough,
	}
}

// Level is the slog level of LogLevel.
func (c Config) Level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return l, fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return l, nil
}

// CachePath is CacheDir, or ROOT/cache when it is empty.
func (c Config) CachePath() string {
	if c.CacheDir != "" {
		return c.CacheDir
	}
	return strings.TrimRight(c.Root, "/") + "/cache"
}

// Duration is a time.Duration written as "30s" in TOML and flags.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d *Duration) Set(s string) error          { return d.UnmarshalText([]byte(s)) }
func (d Duration) String() string               { return time.Duration(d).String() }
func (d Duration) Type() string                 { return "duration" }

// Size is a byte count in lazyfs's one convention (internal/size): "10GiB",
// "512MiB", "64M" (binary), "1.5GB" (decimal) or "1048576".
type Size = size.Size
