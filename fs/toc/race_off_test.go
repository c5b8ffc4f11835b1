//go:build !race

package toc_test

// raceAllocFactor is 1 without the race detector: allocation bounds hold as
// documented.
const raceAllocFactor = 1
