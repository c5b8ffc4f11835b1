package fs

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// MountOptions configures Mount. The zero value is usable.
type MountOptions struct {
	// FsName is the mount's source as mount(8) shows it (default "lazyfs").
	FsName string
	// Private mounts without allow_other: only the mounting user sees the files.
	Private bool
	// NoDefaultPermissions leaves permission checks to nobody instead of the
	// kernel checking the files' modes (default_permissions).
	NoDefaultPermissions bool
	// ReadAheadKB is the kernel read-ahead of the mount in KiB, written to its
	// bdi's read_ahead_kb; negative leaves the kernel's default. 0 lets the
	// Root choose and change it (Root.KernelReadAheadKB): 4 MiB for a mount
	// of model weights, 1 MiB otherwise (fewer requests, the most bytes per
	// page fault), down to 32 KiB once a start-up profile is being
	// prefetched into a mount of shared libraries and small files.
	ReadAheadKB int
	// Options are extra mount options (e.g. "suid", "dev"; the default is
	// nosuid,nodev).
	Options []string
	// SyncRead makes the kernel send READs synchronously (no CAP_ASYNC_READ).
	// Only synchronous requests are interrupted when the reading process gets
	// a signal, so this lets a killed reader cancel the fetch it waits on;
	// with asynchronous reads (the default) the reader still dies at once and
	// the fetch completes in the background. See docs/fs.md for its cost.
	SyncRead bool
	// Debug logs every FUSE request to the go-fuse logger.
	Debug bool
}

// Server is a mounted Root.
type Server struct {
	*fuse.Server
	root *Root
	dir  string
}

// Unmount unmounts the filesystem and stops the Root's background work.
func (s *Server) Unmount() error {
	err := s.Server.Unmount()
	if cerr := s.root.Close(); err == nil {
		err = cerr
	}
	return err
}

// Wait waits until the filesystem is unmounted (by Unmount or by umount(8)
// from outside), then stops the Root's background work.
func (s *Server) Wait() {
	s.Server.Wait()
	s.root.Close()
}

// Dir returns the mount point.
func (s *Server) Dir() string { return s.dir }

// Mount mounts root read-only on dir and returns once the mount is ready.
// The caller unmounts it with Server.Unmount.
func Mount(dir string, root *Root, mo MountOptions) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w: %v", dir, ErrNotMounted, err)
	}
	if mo.FsName == "" {
		mo.FsName = "lazyfs"
	}
	auto := mo.ReadAheadKB == 0
	if auto {
		mo.ReadAheadKB = root.KernelReadAheadKB()
	}
	level := slog.LevelWarn
	if mo.Debug {
		level = slog.LevelDebug // a line per request
	}
	// READs are spliced from the cache's files (spliceRead) unless pipes
	// cannot be resized here; they are then up to 1 MiB.
	maxRead, spliceRead := 1<<20, spliceMaxRead()
	if spliceRead > 0 {
		maxRead = spliceRead
		root.spliceMax = spliceRead
		root.splice.Store(true)
	}
	opts := []string{"ro"}
	if !mo.NoDefaultPermissions {
		opts = append(opts, "default_permissions")
	}
	opts = append(opts, mo.Options...)
	o := &gofs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    !mo.Private,
			FsName:        mo.FsName,
			Name:          "lazyfs",
			Options:       opts,
			MaxWrite:      maxRead,
			MaxReadAhead:  1 << 20,
			DisableSplice: maxRead != spliceRead,
			DirectMount:   true,
			// Read-only at the mount level too (the "ro" option only makes
			// the superblock read-only); suid/dev options can still lift
			// nosuid/nodev.
			DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV,
			Debug:            mo.Debug,
			SyncRead:         mo.SyncRead,
			MaxBackground:    64,
		},
		EntryTimeout:    &root.opts.EntryTimeout,
		AttrTimeout:     &root.opts.AttrTimeout,
		NegativeTimeout: &root.opts.NegativeTimeout,
		Logger:          log.New(logWriter{root.log, level}, "", 0),
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
		// Modes come from the image as they are: without this go-fuse shows
		// a mode of 0000 as 0644 (0755 for directories).
		NullPermissions: true,
	}
	srv, err := gofs.Mount(dir, root.Node(), o)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w: %v", dir, ErrNotMounted, err)
	}
	s := &Server{Server: srv, root: root, dir: dir}
	if mo.ReadAheadKB > 0 {
		if err := setReadAhead(dir, mo.ReadAheadKB); err != nil {
			root.log.Warn("cannot set the mount's read-ahead", "dir", dir, "error", err)
		}
	}
	if auto {
		root.setKernelRA(func(kb int) {
			if err := setReadAhead(dir, kb); err != nil {
				root.log.Warn("cannot set the mount's read-ahead", "dir", dir, "error", err)
			}
		})
	}
	return s, nil
}

// setReadAhead writes the read_ahead_kb of the bdi behind the mount at dir.
func setReadAhead(dir string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0o644)
}

// logWriter sends go-fuse's log lines to the Root's logger.
type logWriter struct {
	l     *slog.Logger
	level slog.Level
}

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Log(context.Background(), w.level, "go-fuse: "+strings.TrimSpace(string(p)))
	return len(p), nil
}

// Kernel read-ahead choices (KiB), see MountOptions.ReadAheadKB.
const (
	weightsReadAheadKB = 4096
	bigReadAheadKB     = 1024
	slowReadAheadKB    = 256
	leanReadAheadKB    = 32
)

// KernelReadAheadKB is the kernel read-ahead a Mount without
// MountOptions.ReadAheadKB gives the Root now:
//   - 4096 KiB when at least half of the Root's file bytes are in files of
//     bulkMinSize or more that are not shared libraries (model weights, read
//     whole): four 1 MiB READs in flight instead of one, which warm reads
//     need to keep up with a disk that reads ahead 8 MiB (1 GiB warm:
//     0.79-1.03x ext4 against 0.48-0.66x at 1024, docs/fs.md);
//   - 1024 KiB otherwise (1 MiB READs, and on a cold start with nothing
//     known the most bytes per page-fault round trip), or 256 KiB once the
//     link has shown itself slow (linkRate): there every byte of a fault's
//     read-around is link time (torch without a profile: 7.46 s at
//     200 Mbit/s against 7.83 s at 1024 KiB; at 1 Gbit/s 256 KiB would cost
//     5.61 s against 4.79 s, the round trips mattering more than bytes);
//   - farScale times 1024 KiB once the link has shown itself far (a long
//     round trip that carries more than a miss asks for);
//   - 32 KiB once a start-up profile is being prefetched (or with
//     Options.Lean) into such a mount: the kernel reads read_ahead_kb around
//     each mmap page fault, and the dynamic loader faults in scattered parts
//     of big libraries, so with a profile naming what start-up reads the
//     rest of those windows is bytes for nothing (import torch with a
//     profile at 200 Mbit/s: 179 MB at 1024 KiB, 88.3 MB at 128 KiB, 75.5 MB
//     and 4.00 s against 4.57 s at 32 KiB; docs/fs.md).
func (r *Root) KernelReadAheadKB() int {
	switch {
	case r.weights:
		return weightsReadAheadKB
	case r.lean():
		return leanReadAheadKB
	case r.link.slow.Load():
		return slowReadAheadKB
	case r.link.far.Load():
		return int(r.farScale()) * bigReadAheadKB
	}
	return bigReadAheadKB
}

// linkRate keeps the fastest rate (compressed bytes per second) seen on the
// link: measured by the layers' fetchers (LinkMeter) or, for fetchers
// without a meter, on the Root's own fetches of at least linkSampleBytes.
// The fastest is a lower bound of the link's rate whatever else shared it;
// once linkSamples samples were all slower than slowLinkRate, the link is
// slow, until a sample reaches slowLinkRate: the first samples come while a
// start-up keeps a small node's CPU busy, and on a 2-core VM a 1 Gbit/s
// link was judged slow in 2 of 6 cold starts of `import torch` (lazyfs
// bench --mode mount -n 3 --link 1gbit, 118-120 MB moved in 12.2-13.2 s
// against 151-154 MB in 10.4-13.1 s) while later samples measured it at
// 67-82 MB/s. The fastest rate only grows, so the verdict changes once.
type linkRate struct {
	max     atomic.Int64
	samples atomic.Int64 // the Root's own (noteFetch)
	slow    atomic.Bool
	far     atomic.Bool  // farLink was true once: KernelReadAheadKB
	rtt     atomic.Int64 // ns, the fetcher's shortest round trip (0: unknown)
}

const (
	linkSampleBytes = 1 << 20
	linkSamples     = 8
	// slowLinkRate (bytes/s, ~400 Mbit/s) lies between the links where the
	// slow-link behaviours were measured to pay (200 Mbit/s: 24 MB/s of
	// payload) and to cost (1 Gbit/s: 109 MB/s), with room above the slow
	// one: a response's measured rate overshoots its link by up to ~30%
	// (tbf's 256 KiB burst, a reader that was late: 29-31 MB/s measured at
	// 200 Mbit/s).
	slowLinkRate = 48 << 20
)

// A link is far when a round trip takes at least farLinkRTT and carries at
// least farLinkBytes. The slow-link behaviours, which save bytes at the
// price of round trips (smaller read-ahead, fewer background fetches,
// libraries without their code), are the wrong trade there however slow it
// is; the profile prefetch keeps more batches in flight (farLinkWorkers)
// and a start without a profile takes more per round trip (farScale).
// lazyfs bench --mode mount -n 2 at 200 Mbit/s with a 30 ms round trip
// (~930 KB per round trip): torch 15.6 s without the slow-link behaviours
// against 19.5 s with them; at 5 ms (~225 KB) a tie. The round trip is the
// shortest time to a response's headers, so it holds the registry's own
// time: 1-7 ms for a registry on a busy 2-core node here, which is not
// distance.
const (
	farLinkBytes = 256 << 10
	farLinkRTT   = 10 * time.Millisecond
	// farLinkScale bounds farScale.
	farLinkScale = 4
)

// farLink reports whether the link is far by its fastest rate and shortest
// round trip; unknown round trips are near.
func (r *Root) farLink() bool {
	rtt := time.Duration(r.link.rtt.Load())
	return rtt >= farLinkRTT && float64(r.link.max.Load())*rtt.Seconds() >= farLinkBytes
}

// farScale is how many times its defaults a start without a profile takes
// per round trip (whole libraries, neighbour windows, kernel read-ahead): 1
// on a link that is not far, else the round trip's bytes over farLinkBytes,
// rounded, 1 to farLinkScale. A round trip saved is worth its bytes of link
// time and no more: 4 times everywhere cost torch 10.94 s against 10.16 s
// at 200 Mbit/s + 10 ms (~360 KB per round trip: 205 against 152 MB
// moved), and paid 13.45 -> 8.71 s at 1 Gbit/s + 30 ms (~5 MB per round
// trip) and 15.92 -> 13.09 s at 200 Mbit/s + 30 ms (~960 KB; 3 times:
// 14.11 s).
func (r *Root) farScale() int64 {
	if !r.farLink() {
		return 1
	}
	rtt := time.Duration(r.link.rtt.Load())
	return min(farLinkScale, max(1, int64(math.Round(float64(r.link.max.Load())*rtt.Seconds()/farLinkBytes))))
}

// noteFetch records a fetch of n compressed bytes that took d, for a
// fetcher without a LinkMeter. Its duration includes the round trip, so a
// fast link far away can look slow this way.
func (r *Root) noteFetch(n int64, d time.Duration) {
	if n < linkSampleBytes || d <= 0 {
		return
	}
	r.noteLink(int64(float64(n)/d.Seconds()), r.link.samples.Add(1))
}

// pollLink takes what fetcher measured of the link, if it measures (a
// LinkMeter), and reports whether it does.
func (r *Root) pollLink(fetcher ChunkFetcher) bool {
	lm, ok := fetcher.(LinkMeter)
	if !ok {
		return false
	}
	rate, n, rtt := lm.LinkRate()
	if n < 0 {
		return false
	}
	if rtt > 0 {
		r.link.rtt.Store(int64(rtt))
	}
	r.noteLink(rate, n)
	return true
}

// noteLink records that the link's fastest rate is at least rate, over
// samples measures in all. When the link turns out far it has Mount raise
// the kernel read-ahead (farScale); when it turns out slow and near, lower
// it (slowReadAheadKB).
func (r *Root) noteLink(rate, samples int64) {
	for {
		m := r.link.max.Load()
		if rate <= m || r.link.max.CompareAndSwap(m, rate) {
			break
		}
	}
	if r.link.max.Load() >= slowLinkRate && r.link.slow.CompareAndSwap(true, false) {
		r.log.Info("link is fast after all: the slow-link behaviours end", "fastestBytesPerSecond", r.link.max.Load(), "samples", samples)
		r.applyKernelRA()
	}
	if r.farLink() && !r.link.slow.Load() && r.link.far.CompareAndSwap(false, true) {
		r.applyKernelRA()
	}
	if samples < linkSamples || r.link.max.Load() >= slowLinkRate || r.farLink() || !r.link.slow.CompareAndSwap(false, true) {
		return
	}
	r.log.Info("link is slow: fewer bytes per request from now on", "fastestBytesPerSecond", r.link.max.Load(), "samples", samples)
	r.applyKernelRA()
}

// mostlyWeights reports whether at least half of the layers' file bytes are
// in big files (bigFileBytes).
func mostlyWeights(big, all int64) bool { return all > 0 && 2*big >= all }

// bigFileBytes returns the bytes of the layers' regular files (all), and of
// those in files of bulkMinSize or more that are not shared libraries (big).
func bigFileBytes(ls []*layer) (big, all int64) {
	for _, l := range ls {
		for i := range l.toc.Entries {
			e := &l.toc.Entries[i]
			if !e.IsRegular() || e.NumChunks == 0 {
				continue
			}
			all += e.Size
			if e.Size >= bulkMinSize && !sharedObject(e.Name) {
				big += e.Size
			}
		}
	}
	return big, all
}
