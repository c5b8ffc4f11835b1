package main

import (
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/fsconf"
	"github.com/lazyfs/lazyfs/internal/node"
	"github.com/lazyfs/lazyfs/internal/size"
)

// sizeFlag is a byte count flag in lazyfs's one size convention (internal/size).
type sizeFlag = size.Size

// humanBytes prints a measured byte count (internal/size.Human).
func humanBytes(n int64) string { return size.Human(n) }

// fetchFlags are the registry fetcher's production settings
// (internal/fetchconf) as flags of the commands that build a fetcher: lazyfs
// mount (standalone) and lazyfs serve.
type fetchFlags struct{ fetchconf.Config }

// fetchFlagNames are the flags bind registers (daemon-side settings for lazyfs mount).
var fetchFlagNames = []string{"fetch-deadline", "stall-timeout", "min-throughput", "throughput-window", "retry-attempts", "retry-deadline"}

func newFetchFlags() fetchFlags { return fetchFlags{fetchconf.Defaults()} }

func (ff *fetchFlags) bind(f *pflag.FlagSet) {
	c := &ff.Config
	f.DurationVar(&c.FetchDeadline, "fetch-deadline", c.FetchDeadline, fmt.Sprintf("bound on one chunk fetch, retries included; then the read fails with EIO (%v-%v)", fetchconf.MinDuration, fetchconf.MaxFetchDeadline))
	f.DurationVar(&c.StallTimeout, "stall-timeout", c.StallTimeout, fmt.Sprintf("retry a registry request that sends nothing for this long (%v-%v)", fetchconf.MinDuration, fetchconf.MaxStallTimeout))
	f.Var(&c.MinThroughput, "min-throughput", fmt.Sprintf("retry a registry request slower than this per second over --throughput-window, up to %v (0 or off: never)", fetchconf.Throughput(fetchconf.MaxThroughput)))
	f.DurationVar(&c.ThroughputWindow, "throughput-window", c.ThroughputWindow, fmt.Sprintf("window of --min-throughput (%v-%v)", fetchconf.MinDuration, fetchconf.MaxWindow))
	f.IntVar(&c.RetryAttempts, "retry-attempts", c.RetryAttempts, fmt.Sprintf("attempts per registry host (1-%d)", fetchconf.MaxRetryAttempts))
	f.DurationVar(&c.RetryDeadline, "retry-deadline", c.RetryDeadline, fmt.Sprintf("no new attempt this long after the last one that made progress (%v-%v)", fetchconf.MinDuration, fetchconf.MaxRetryDeadline))
}

// validate refuses a setting out of range as a usage error naming the flag.
func (ff *fetchFlags) validate() error { return flagRangeError(ff.Validate()) }

// flagRangeError turns a setting's *fetchconf.RangeError (internal/fetchconf,
// internal/fsconf) into a usage error naming its flag.
func flagRangeError(err error) error {
	var re *fetchconf.RangeError
	if errors.As(err, &re) {
		return cli.Usagef("--%s %s: out of range: %s must be %s", re.Flag(), re.Value, re.What, re.Range)
	}
	return err
}

// fsFlags are the file-system tuning settings (internal/fsconf) as flags
// of the commands that serve mounts: lazyfs mount, run, record and serve,
// with the same names, defaults, ranges and "0 or off" everywhere.
type fsFlags struct{ fsconf.Config }

// fsFlagNames are the flags bind registers (daemon-side settings for lazyfs mount).
var fsFlagNames = []string{"read-ahead", "neighbour-window", "whole-library", "passthrough"}

// fsAliases accepts the American spelling of --neighbour-window; bind sets
// it on its FlagSet, and a FlagSet that takes the flags over (convert
// --record's) must set it too.
var fsAliases = cli.Aliases(map[string]string{"neighbor-window": "neighbour-window"})

func newFSFlags() fsFlags { return fsFlags{fsconf.Defaults()} }

func (ff *fsFlags) bind(f *pflag.FlagSet) {
	c := &ff.Config
	f.Var(&c.ReadAhead, "read-ahead", fmt.Sprintf("most chunks fetched ahead of a sequential reader, 1-%d (0 or off: none)", fsconf.MaxReadAhead))
	f.Var(&c.NeighbourWindow, "neighbour-window", fmt.Sprintf("compressed bytes after a small file fetched in the background when it misses, up to %s (0 or off: none; alias --neighbor-window)", size.Format(fsconf.MaxNeighbourWindow)))
	f.Var(&c.WholeLibrary, "whole-library", fmt.Sprintf("fetch a shared library of up to this many compressed bytes whole when it is opened without a start-up profile, and the libraries it needs; up to %s (0 or off: never)", size.Format(fsconf.MaxWholeLibrary)))
	f.BoolVar(&c.Passthrough, "passthrough", c.Passthrough, "serve fully cached files through FUSE passthrough (kernel ≥ 6.9)")
	f.SetNormalizeFunc(fsAliases)
}

// validate refuses a setting out of range as a usage error naming the flag.
func (ff *fsFlags) validate() error { return flagRangeError(ff.Validate()) }

// options are the fs.Options of the flags (after validate); with
// --passthrough the caller, or the node (internal/node), sets SpoolDir.
func (ff *fsFlags) options() fs.Options { return ff.Options() }

// imageFlags are the flags lazyfs mount, run and record share: the image to
// serve (--platform, --pull), the block cache and registry access of the
// node that serves it in this process, and the file system's tuning.
type imageFlags struct {
	cacheDir  string
	cacheSize sizeFlag
	insecure  bool
	platform  string
	pull      bool
	fsf       fsFlags
	hostsDir  string
	debug     bool
}

// Bounds of --cache-size.
const (
	minCacheSize = 1 << 20
	maxCacheSize = 1 << 50
)

func newImageFlags() imageFlags {
	return imageFlags{cacheSize: sizeFlag(blobcache.DefaultCapacity), fsf: newFSFlags()}
}

func (imf *imageFlags) bind(f *pflag.FlagSet) {
	f.StringVar(&imf.cacheDir, "cache-dir", "/var/lib/lazyfs/cache", "block cache directory (\"\" for a private in-memory cache)")
	f.Var(&imf.cacheSize, "cache-size", "block cache capacity")
	f.BoolVar(&imf.insecure, "insecure", false, "allow plain HTTP to any registry")
	f.StringVar(&imf.platform, "platform", "", "platform to pick from an index (default: this machine's)")
	f.BoolVar(&imf.pull, "pull", false, "serve images that are not lazyfs-converted by fetching their layers whole")
	imf.fsf.bind(f)
	f.StringVar(&imf.hostsDir, "hosts-dir", "", "containerd-style hosts.toml directory for registry mirrors")
	f.BoolVar(&imf.debug, "debug", false, "log debug messages")
}

// validate refuses a value out of range as a usage error naming the flag.
func (imf *imageFlags) validate() error {
	if err := cli.SizeRange("cache-size", int64(imf.cacheSize), minCacheSize, maxCacheSize, "the block cache capacity"); err != nil {
		return err
	}
	return imf.fsf.validate()
}

// platformSpec is --platform parsed; nil for this machine's.
func (imf *imageFlags) platformSpec() (*v1.Platform, error) {
	if imf.platform == "" {
		return nil, nil
	}
	p, err := v1.ParsePlatform(imf.platform)
	if err != nil {
		return nil, fmt.Errorf("--platform %q: %w", imf.platform, err)
	}
	return p, nil
}

// nodeCacheDir is --cache-dir as node.Config.CacheDir takes it.
func (imf *imageFlags) nodeCacheDir() string {
	if imf.cacheDir == "" {
		return node.MemoryCache
	}
	return imf.cacheDir
}
