package main

import (
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/cli"
)

// Bounds of lazyfs convert's flags.
const (
	minLevel, maxLevel = 1, 19 // zstd levels the encoder maps
	maxJobs            = 256
)

// validateConvert checks convert's flags before any registry is asked.
func validateConvert(chunkSize, libChunk int64, level, startLevel, jobs int) error {
	if err := cli.SizeRange("chunk-size", chunkSize, toc.MinChunkSize, toc.MaxChunkSize, "the chunk size"); err != nil {
		return err
	}
	if libChunk >= 0 {
		if err := cli.SizeRange("library-chunk-size", libChunk, toc.MinChunkSize, toc.MaxChunkSize, "the chunk size of shared libraries (off: the chunk size)"); err != nil {
			return err
		}
	}
	if err := cli.IntRange("level", level, minLevel, maxLevel, "the zstd level"); err != nil {
		return err
	}
	if err := cli.IntRange("startup-level", startLevel, minLevel, maxLevel, "the zstd level of shared libraries and one-chunk files"); err != nil {
		return err
	}
	return cli.IntRange("jobs", jobs, 0, maxJobs, "the number of layers converted at once (0: one per CPU)")
}
