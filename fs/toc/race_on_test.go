//go:build race

package toc_test

// raceAllocFactor widens allocation bounds under the race detector, whose
// instrumentation roughly doubles what a decode allocates (measured: 43 MiB
// without it, 76 MiB with it, for the streamed zero-entries TOC).
const raceAllocFactor = 2
