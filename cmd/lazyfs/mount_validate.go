package main

import (
	"github.com/lazyfs/lazyfs/internal/cli"
)

// Bounds of lazyfs mount's tuning flags.
const (
	maxReadAhead       = 1024     // chunks: 256MiB at the default chunk size
	maxNeighbourWindow = 64 << 20 // compressed bytes
	maxWholeLibrary    = 64 << 20 // compressed bytes
	minCacheSize       = 1 << 20
	maxCacheSize       = 1 << 50
)

// validate checks mount's flags before anything is resolved or spawned.
func (mf *mountFlags) validate() error {
	if mf.fill && mf.noFill {
		return cli.Usagef("--fill and --no-fill contradict each other: give one")
	}
	if n := mf.readAhead.Value(); n > maxReadAhead {
		return cli.IntRange("read-ahead", n, 0, maxReadAhead, "the read-ahead in chunks (0 or off: none)")
	}
	if n := mf.neighbours.Bytes(); n > maxNeighbourWindow {
		return cli.SizeRange("neighbour-window", n, 0, maxNeighbourWindow, "the neighbour window (0 or off: none)")
	}
	if n := mf.wholeLib.Bytes(); n > maxWholeLibrary {
		return cli.SizeRange("whole-library", n, 0, maxWholeLibrary, "the largest library fetched whole at open (0 or off: never)")
	}
	if err := cli.SizeRange("cache-size", int64(mf.cacheSize), minCacheSize, maxCacheSize, "the block cache capacity"); err != nil {
		return err
	}
	return mf.fetch.validate()
}
