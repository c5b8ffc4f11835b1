package main

import (
	"github.com/lazyfs/lazyfs/internal/cli"
)

// Bounds of the block cache flags (the file-system tuning flags' are
// internal/fsconf's).
const (
	minCacheSize = 1 << 20
	maxCacheSize = 1 << 50
)

// validate checks mount's flags before anything is resolved or spawned.
func (mf *mountFlags) validate() error {
	if mf.fill && mf.noFill {
		return cli.Usagef("--fill and --no-fill contradict each other: give one")
	}
	if err := mf.fsf.validate(); err != nil {
		return err
	}
	if err := cli.SizeRange("cache-size", int64(mf.cacheSize), minCacheSize, maxCacheSize, "the block cache capacity"); err != nil {
		return err
	}
	return mf.fetch.validate()
}
