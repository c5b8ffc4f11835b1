package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"

	sizepkg "github.com/lazyfs/lazyfs/internal/size"
	"github.com/lazyfs/lazyfs/prewarm"
)

// config is the daemon's configuration: defaults, then the TOML file
// (--config), then flags that were set explicitly.
type config struct {
	Socket            string              `toml:"socket"`
	MetricsAddr       string              `toml:"metrics_addr"`
	MemoryFloor       size                `toml:"memory_floor"`
	AllowExclusive    bool                `toml:"allow_exclusive"`
	HoldAlloc         size                `toml:"hold_alloc"`
	NoHold            bool                `toml:"no_hold"`
	HoldWhileBusy     bool                `toml:"hold_while_busy"`
	IdleWindow        duration            `toml:"idle_window"`
	UtilThreshold     int                 `toml:"util_threshold"`
	Grace             duration            `toml:"grace"`
	HandoffDelay      duration            `toml:"handoff_delay"`
	PollInterval      duration            `toml:"poll_interval"`
	ReadyTimeout      duration            `toml:"ready_timeout"`
	WorkerCommand     []string            `toml:"worker_command"`
	WorkerDir         string              `toml:"worker_dir"`
	EnvAllow          []string            `toml:"env_allow"`
	ModelWorkers      []modelWorkerConfig `toml:"model_worker"`
	SuspendMemory     size                `toml:"suspend_memory"`
	ResidentFloor     size                `toml:"resident_floor"`
	FakeCheckpoint    string              `toml:"-"`
	WorkerUser        string              `toml:"worker_user"`
	Images            []string            `toml:"images"`
	ImageRefresh      duration            `toml:"image_refresh"`
	WarmSocket        string              `toml:"warm_socket"`
	WarmWholeImages   bool                `toml:"warm_whole_images"`
	EnablePersistence bool                `toml:"enable_persistence"`
	LogLevel          string              `toml:"log_level"`
	FakeGPUs          int                 `toml:"-"`
}

func defaultConfig() config {
	return config{
		Socket:       "/run/lazyfs/prewarm.sock",
		MetricsAddr:  "127.0.0.1:9610",
		MemoryFloor:  1 << 30,
		IdleWindow:   duration(30 * time.Second),
		Grace:        duration(5 * time.Second),
		HandoffDelay: duration(10 * time.Second),
		PollInterval: duration(2 * time.Second),
		ReadyTimeout: duration(60 * time.Second),
		ImageRefresh: duration(5 * time.Minute),
		WorkerDir:    prewarm.DefaultWorkerDir,
		EnvAllow:     prewarm.DefaultEnvAllow,
		LogLevel:     "info",
	}
}

// bindFlags registers every flag on fs, writing into c.
func (c *config) bindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Socket, "socket", c.Socket, "unix socket of the claim/release API (mode 0600)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, `TCP address for /metrics and /healthz ("" disables)`)
	fs.Var(&c.MemoryFloor, "memory-floor", "never hold a GPU with less free memory than this (e.g. 1GiB)")
	fs.BoolVar(&c.AllowExclusive, "allow-exclusive", c.AllowExclusive, "hold GPUs in an exclusive compute mode too (released before every claim)")
	fs.Var(&c.HoldAlloc, "hold-alloc", "bytes the holder allocates besides its context (e.g. 64MiB)")
	fs.BoolVar(&c.NoHold, "no-hold", c.NoHold, "inventory and claims only: start no holders")
	fs.BoolVar(&c.HoldWhileBusy, "hold-while-busy", c.HoldWhileBusy, "keep the holder when an unclaimed compute process appears (default compute mode only)")
	fs.Var(&c.IdleWindow, "idle-window", "a GPU must be quiet this long before it is held")
	fs.IntVar(&c.UtilThreshold, "util-threshold", c.UtilThreshold, "utilisation percentage above which a GPU counts as active")
	fs.Var(&c.Grace, "grace", "wait this long after a release before warming again")
	fs.Var(&c.HandoffDelay, "handoff-delay", "keep the holder this long after a claim in default compute mode (0: release at once)")
	fs.Var(&c.PollInterval, "poll-interval", "NVML inventory interval")
	fs.Var(&c.ReadyTimeout, "ready-timeout", "how long a holder or warm worker may take to report READY")
	fs.StringVar(&c.WorkerDir, "worker-dir", c.WorkerDir, "directory for warm-worker sockets: created 0700, refused if it exists with another owner, other permissions, or as a symlink")
	fs.StringSliceVar(&c.EnvAllow, "env-allow", c.EnvAllow, "variables of the daemon's environment that holders and workers inherit (names, or prefixes ending in *)")
	fs.StringVar(&c.WorkerUser, "worker-user", c.WorkerUser, `run warm workers as this user: "UID[:GID]" or a user name ("" keeps the daemon's)`)
	fs.Var(&c.ImageRefresh, "image-refresh", "how often each image's tag is re-resolved")
	fs.StringVar(&c.WarmSocket, "warm-socket", c.WarmSocket, "unix socket of the block-cache owner (lazyfs-snapshotter) that warms images")
	fs.BoolVar(&c.WarmWholeImages, "warm-whole-images", c.WarmWholeImages, "warm whole images, not only their start-up profiles")
	fs.BoolVar(&c.EnablePersistence, "enable-persistence", c.EnablePersistence, "turn persistence mode on for every GPU (otherwise it is only reported)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.Var(&c.SuspendMemory, "suspend-memory", "host memory suspended model workers may take in all (0: no bound); beyond it the least recently used is stopped")
	fs.Var(&c.ResidentFloor, "resident-floor", "keep a released model worker resident while its GPU has this much free memory (0: always suspend)")
	fs.IntVar(&c.FakeGPUs, "fake-gpus", 0, "pretend to have N GPUs with a fake CUDA driver (demos and tests)")
	fs.StringVar(&c.FakeCheckpoint, "fake-checkpoint", "", `with --fake-gpus: "" (SIGSTOP-based fake), "noapi" (driver without the API) or "remap"`)
	fs.MarkHidden("fake-checkpoint")
	fs.MarkHidden("fake-gpus")
}

// merge returns defaults ← file ← explicitly set flags.
func loadConfig(path string, flags config, fs *pflag.FlagSet, workerCmd string, images []string, modelWorkers ...string) (config, error) {
	c := defaultConfig()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
		dec := toml.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	}
	set := map[string]func(){
		"socket":             func() { c.Socket = flags.Socket },
		"metrics-addr":       func() { c.MetricsAddr = flags.MetricsAddr },
		"memory-floor":       func() { c.MemoryFloor = flags.MemoryFloor },
		"allow-exclusive":    func() { c.AllowExclusive = flags.AllowExclusive },
		"hold-alloc":         func() { c.HoldAlloc = flags.HoldAlloc },
		"no-hold":            func() { c.NoHold = flags.NoHold },
		"hold-while-busy":    func() { c.HoldWhileBusy = flags.HoldWhileBusy },
		"idle-window":        func() { c.IdleWindow = flags.IdleWindow },
		"util-threshold":     func() { c.UtilThreshold = flags.UtilThreshold },
		"grace":              func() { c.Grace = flags.Grace },
		"handoff-delay":      func() { c.HandoffDelay = flags.HandoffDelay },
		"poll-interval":      func() { c.PollInterval = flags.PollInterval },
		"ready-timeout":      func() { c.ReadyTimeout = flags.ReadyTimeout },
		"worker-dir":         func() { c.WorkerDir = flags.WorkerDir },
		"env-allow":          func() { c.EnvAllow = flags.EnvAllow },
		"worker-user":        func() { c.WorkerUser = flags.WorkerUser },
		"image-refresh":      func() { c.ImageRefresh = flags.ImageRefresh },
		"warm-socket":        func() { c.WarmSocket = flags.WarmSocket },
		"warm-whole-images":  func() { c.WarmWholeImages = flags.WarmWholeImages },
		"enable-persistence": func() { c.EnablePersistence = flags.EnablePersistence },
		"log-level":          func() { c.LogLevel = flags.LogLevel },
		"fake-gpus":          func() { c.FakeGPUs = flags.FakeGPUs },
		"fake-checkpoint":    func() { c.FakeCheckpoint = flags.FakeCheckpoint },
		"suspend-memory":     func() { c.SuspendMemory = flags.SuspendMemory },
		"resident-floor":     func() { c.ResidentFloor = flags.ResidentFloor },
		"worker-command":     func() { c.WorkerCommand = strings.Fields(workerCmd) },
		"image":              func() { c.Images = images },
	}
	fs.Visit(func(f *pflag.Flag) {
		if fn := set[f.Name]; fn != nil {
			fn()
		}
	})
	if c.Socket == "" {
		return c, fmt.Errorf("config: socket must not be empty")
	}
	for _, s := range modelWorkers {
		mw, err := parseModelWorker(s)
		if err != nil {
			return c, err
		}
		c.ModelWorkers = append(c.ModelWorkers, mw)
	}
	if err := prewarm.ValidateModelWorkers(c.modelWorkers()); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// modelWorkerConfig is one [[model_worker]] table: a named command that
// loads one model and serves it (issue 14).
type modelWorkerConfig struct {
	Name    string   `toml:"name"`
	Command []string `toml:"command"`
	GPU     string   `toml:"gpu"`
}

// parseModelWorker parses --model-worker NAME=COMMAND (split on spaces).
func parseModelWorker(s string) (modelWorkerConfig, error) {
	name, cmd, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(cmd) == "" {
		return modelWorkerConfig{}, fmt.Errorf("--model-worker %q: want NAME=COMMAND", s)
	}
	return modelWorkerConfig{Name: strings.TrimSpace(name), Command: strings.Fields(cmd)}, nil
}

// duration is a time.Duration written as "30s" in TOML and flags.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}
func (d duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d *duration) Set(s string) error          { return d.UnmarshalText([]byte(s)) }
func (d duration) String() string               { return time.Duration(d).String() }
func (d duration) Type() string                 { return "duration" }

// size is a byte count in lazyfs's one convention (internal/size): "1GiB",
// "512MiB", "64M" (binary), "1.5GB" (decimal) or "1048576".
type size = sizepkg.Size

// parseUser resolves --worker-user: "UID", "UID:GID" or a user name (its
// primary group). "" returns nil: workers keep the daemon's ids.
func parseUser(s string) (*syscall.Credential, error) {
	if s == "" {
		return nil, nil
	}
	us, gs, hasGID := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	gid := uid
	if err != nil {
		u, lerr := user.Lookup(us)
		if lerr != nil {
			return nil, fmt.Errorf("worker user %q: %w", s, lerr)
		}
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	}
	if hasGID {
		if gid, err = strconv.ParseUint(gs, 10, 32); err != nil {
			return nil, fmt.Errorf("worker user %q: group must be a number", s)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (c config) modelWorkers() []prewarm.ModelWorker {
	var out []prewarm.ModelWorker
	for _, w := range c.ModelWorkers {
		out = append(out, prewarm.ModelWorker{Name: w.Name, Argv: w.Command, GPU: w.GPU})
	}
	return out
}
