package fs

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Cache is the content-addressed store of uncompressed, verified chunks
// (package blobcache implements it). Any error from Get counts as a miss.
// Bytes returned by Get are only read; Put is given a slice of its own.
type Cache interface {
	Get(ctx context.Context, d digest.Digest) ([]byte, error)
	Put(ctx context.Context, d digest.Digest, data []byte) error
}

// cacheHaser is the optional existence check read-ahead uses to skip chunks
// already cached without reading them.
type cacheHaser interface {
	Has(ctx context.Context, d digest.Digest) (bool, error)
}

// ChunkFetcher fetches a layer's chunks (package fs/remote implements it for
// registries). FetchChunks calls fn once per chunk delivered, with i the
// index in chunks and data its uncompressed bytes, valid only during the
// call; fn may be called from several goroutines at once. It returns an error
// if any chunk could not be delivered or fn failed.
type ChunkFetcher interface {
	FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(i int, data []byte) error) error
}

// OwnedChunkFetcher is the optional ChunkFetcher method (fs/remote's Blob
// has it) that decodes each chunk into a buffer from get (length 0, room
// for n bytes) and lets fn keep it when own is true: the Root's hot set
// then takes a fetched chunk without copying it. With own false, data is
// only valid during the call, as with FetchChunks. A wrapper of a fetcher
// (counting, gating) must implement it through its own FetchChunks or pass
// it on, or an embedded fetcher's method would bypass the wrapper.
type OwnedChunkFetcher interface {
	FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error
}

// ClaimingChunkFetcher is the optional ChunkFetcher method (fs/remote's
// Blob has it) that background fetches use so as not to hold chunks while
// they wait for a request slot: each request, once it may start, calls
// claim(i) for each index of chunks it covers and fetches only those
// claimed; the Root registers a chunk as in flight there, so a reader that
// needs it meanwhile fetches it itself instead of waiting behind other
// background work. Chunks not claimed are neither fetched nor delivered and
// are no error; claim is called again, and must return true again, for a
// chunk it claimed whose fetch is retried. get, fn and own are as with
// OwnedChunkFetcher (get may be nil: own is then false). A wrapper that
// passes it on to a fetcher without it can use FetchClaimedFirst.
type ClaimingChunkFetcher interface {
	FetchChunksClaimed(ctx context.Context, chunks []toc.Chunk, claim func(i int) bool, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error
}

// FetchClaimedFirst is FetchChunksClaimed for a fetcher without it: it
// claims every chunk first and fetches those claimed.
func FetchClaimedFirst(ctx context.Context, f ChunkFetcher, chunks []toc.Chunk, claim func(i int) bool, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error {
	var sub []toc.Chunk
	var at []int
	for i := range chunks {
		if claim(i) {
			sub, at = append(sub, chunks[i]), append(at, i)
		}
	}
	if len(sub) == 0 {
		return nil
	}
	back := func(k int, data []byte, own bool) error {
		if k < 0 || k >= len(at) {
			return fmt.Errorf("fetcher delivered chunk %d of %d", k, len(at))
		}
		return fn(at[k], data, own)
	}
	if of, ok := f.(OwnedChunkFetcher); ok && get != nil {
		return of.FetchChunksOwned(ctx, sub, get, back)
	}
	return f.FetchChunks(ctx, sub, func(k int, data []byte) error { return back(k, data, false) })
}

// LinkMeter is the optional ChunkFetcher method (fs/remote's Blob has it)
// that reports what the fetcher measured of the link behind it: the fastest
// rate in compressed bytes per second, round trip excluded, how many
// responses of at least 1 MiB it measured, and the shortest round trip (0:
// unknown). The Root then judges the link by it (Stats.SlowLink) instead of
// timing its own fetches, which include the round trip. A wrapper without a
// meter behind it returns samples < 0.
type LinkMeter interface {
	LinkRate() (bytesPerSecond, samples int64, rtt time.Duration)
}

// Layer is one converted layer to serve.
type Layer struct {
	// Name identifies the layer in logs, e.g. "docker.io/library/x@sha256:…/sha256:…".
	Name string
	// TOC is the layer's decoded table of contents. The Root reads it and never modifies it.
	TOC *toc.TOC
	// Fetcher fetches the layer's chunks that the cache does not hold.
	Fetcher ChunkFetcher
}

// Options configures a Root. The zero value is usable.
type Options struct {
	// Cache holds fetched chunks; nil fetches every chunk on every read.
	Cache Cache
	// Logger gets EIO reports (one per chunk) and debug messages; nil discards.
	Logger *slog.Logger
	// ReadAhead is the most chunks past a sequential reader's position that
	// are fetched in the background (a stream's window starts at 4, doubles
	// with its first READs and then with every READ that still waited for
	// the network, and halves when the queue is full; docs/fs.md): 0 means
	// DefaultReadAhead (128), a negative value none (and no bulk fill).
	ReadAhead int
	// PrefetchWorkers bounds the background fetch jobs running at once
	// (default DefaultPrefetchWorkers); each waits mostly on the network.
	PrefetchWorkers int
	// EntryTimeout, AttrTimeout and NegativeTimeout are the kernel's cache
	// lifetimes for names, attributes and missing names; 0 means
	// DefaultTimeout (the contents never change), a negative value no caching.
	EntryTimeout, AttrTimeout, NegativeTimeout time.Duration
	// OverlayWhiteouts shows a single layer as an overlayfs lower layer:
	// ".wh.NAME" as a 0:0 character device NAME, ".wh..wh..opq" as the
	// trusted.overlay.opaque=y xattr of its directory. Without it the layers
	// are merged with OCI whiteout rules and whiteout files are hidden.
	// NewRoot refuses a layer with a hardlink to a file it does not hold
	// (ErrLowerHardlink): alone, it could not show that name.
	OverlayWhiteouts bool
	// LowerDirs, with OverlayWhiteouts, are the directories of the layers
	// an overlay stacks below this one, the nearest first (the snapshot's
	// parents). A directory the layer has no entry for (a tar that omits
	// parent directories, as Bazel's and crane's do) then shows the mode,
	// owner and mtime the nearest lower layer gives it, as containerd's
	// unpack leaves it, instead of 0755, root: overlayfs shows the upper
	// layer's attributes, so a lower /tmp of 1777 would become 0755. At
	// most MaxLowerDirs are looked at.
	LowerDirs []string
	// Passthrough serves files whose chunks are all cached through FUSE
	// passthrough from a copy in SpoolDir (needs root and kernel ≥ 6.9).
	Passthrough bool
	// SpoolDir holds the passthrough copies; required with Passthrough.
	SpoolDir string
	// OnRead, if set, is called for every READ that reaches the daemon (the
	// kernel's page cache absorbs the others), before it is served: a hook to
	// record a start-up profile. It must be fast and safe for concurrent use.
	OnRead func(ReadEvent)
	// SpoolLimit bounds the bytes of passthrough copies (default
	// DefaultSpoolLimit); files that do not fit are served without passthrough.
	SpoolLimit int64
	// NeighbourWindow is how many compressed bytes of the chunks that follow
	// a small file in its layer are fetched into the cache in the background
	// when a read of that file misses: files that start together (a Python
	// package's modules, a library's data files) sit together in the tar, so
	// one extra request in parallel saves a round trip per later file.
	// 0 means DefaultNeighbourWindow, a negative value none.
	NeighbourWindow int64
	// Lean reads as a Root with a start-up profile does from the start (no
	// read-ahead for shared libraries, the lean kernel read-ahead; see
	// docs/fs.md): for a run that records a profile, so that it records the
	// parts of the libraries the program faulted in, not the kernel's 1 MiB
	// windows around them.
	Lean bool
	// WholeLibrary is the largest shared library (toc.IsSharedLibrary;
	// compressed bytes) fetched whole, in one request in the background,
	// when it is opened without a start-up profile: the dynamic loader reads
	// nearly all of a small library (a torch import reads 96% of the bytes
	// of the 298 libraries of up to 2 MiB it loads) through page faults, one
	// blocking round trip each. Once it has arrived, the libraries it needs
	// (DT_NEEDED, resolved as the loader would) are fetched the same way.
	// 0 means DefaultWholeLibrary, a negative value never.
	WholeLibrary int64
	// PrefetchContext, if set, derives the context of background fetches
	// (read-ahead, neighbours), e.g. to mark them low-priority for the fetcher.
	PrefetchContext func(context.Context) context.Context
}

// ReadEvent describes one READ: the bytes [Offset, Offset+Size) of the file
// at Path, held by chunks [FirstChunk, LastChunk) of layer Layer (an index
// into the layers given to NewRoot and into that layer's TOC.Chunks).
type ReadEvent struct {
	Layer                 int
	Path                  string
	Offset, Size          int64
	FirstChunk, LastChunk int
}

// Defaults.
const (
	DefaultReadAhead = 128
	// DefaultPrefetchWorkers is the default Options.PrefetchWorkers.
	DefaultPrefetchWorkers = 8
	// DefaultNeighbourWindow is the default Options.NeighbourWindow.
	DefaultNeighbourWindow = 1 << 20
	// DefaultWholeLibrary is the default Options.WholeLibrary.
	DefaultWholeLibrary = 2 << 20
	DefaultTimeout      = time.Hour
	// DefaultSpoolLimit bounds the passthrough copies of a Root.
	DefaultSpoolLimit = 8 << 30
)

// Stats are a Root's counters since it was made.
type Stats struct {
	Reads         int64 `json:"reads"`         // READ requests served (successfully or not)
	BytesRead     int64 `json:"bytesRead"`     // bytes returned to readers
	ChunkHits     int64 `json:"chunkHits"`     // chunks a read found in the cache
	ChunkMisses   int64 `json:"chunkMisses"`   // chunks a read had to fetch
	FetchedChunks int64 `json:"fetchedChunks"` // chunks delivered by fetchers (reads and read-ahead)
	FetchedBytes  int64 `json:"fetchedBytes"`  // their uncompressed bytes
	Prefetched    int64 `json:"prefetched"`    // chunks fetched by read-ahead and neighbour prefetch
	NeighbourJobs int64 `json:"neighbourJobs"` // neighbour prefetches queued after small-file misses
	LibraryJobs   int64 `json:"libraryJobs"`   // whole-library fetches queued at open (Options.WholeLibrary)
	// PartialLibraries counts libraries fetched without the code past the
	// start of their executable segment (a slow link).
	PartialLibraries int64 `json:"partialLibraries"`
	EIO              int64 `json:"eio"`         // reads failed with EIO
	Interrupted      int64 `json:"interrupted"` // reads cancelled by the kernel's interrupt
	// CacheSkipped counts fetched chunks not handed to the cache because
	// its writer was behind (they were served, not stored).
	CacheSkipped int64 `json:"cacheSkipped"`
	// CacheErrors counts chunks the cache refused (full disk, errors).
	CacheErrors int64 `json:"cacheErrors"`
	// BulkFills counts big files read in several long runs (an mmapping
	// loader) whose chunks were then all fetched in order (docs/fs.md).
	BulkFills   int64 `json:"bulkFills"`
	Passthrough int64 `json:"passthrough"` // opens served through FUSE passthrough
	// Spliced counts READs answered by splicing cached bytes from the
	// cache's files to the kernel (docs/fs.md, "Warm reads by splice").
	Spliced    int64 `json:"spliced"`
	Lookups    int64 `json:"lookups"`    // LOOKUP requests
	NegLookups int64 `json:"negLookups"` // LOOKUP requests of missing names
	// LinkBytesPerSecond is the fastest rate (compressed bytes per second)
	// seen on the link: measured by the fetcher without the round trip
	// (LinkMeter), else on the Root's fetches of at least 1 MiB; 0 before
	// any. SlowLink reports that the first 8 such measures were all below
	// ~50 MB/s on a link that is not far (LinkRTTSeconds), which turns
	// on the slow-link behaviours (docs/fs.md).
	LinkBytesPerSecond int64 `json:"linkBytesPerSecond"`
	SlowLink           bool  `json:"slowLink"`
	// LinkRTTSeconds is the shortest round trip the fetcher measured (to
	// a response's headers, the registry's time included); 0: unknown.
	// FarLink reports a round trip of at least 10 ms that carries at least
	// 256 KiB at that rate: a start then takes more per round trip.
	LinkRTTSeconds float64 `json:"linkRttSeconds"`
	FarLink        bool    `json:"farLink"`
}

type counters struct {
	reads, bytesRead, hits, misses, fetched, fetchedBytes, prefetched, neighbourJobs, eio, interrupted, passthrough, lookups, neglookups atomic.Int64
	cacheSkipped, cacheErrors, bulkFills, libraryJobs, spliced, partialLibraries                                                         atomic.Int64
}

// layer is a Layer as the Root holds it.
type layer struct {
	index   int
	name    string
	toc     *toc.TOC
	fetcher ChunkFetcher
	// big has bit i set for chunk i of a file of more than one chunk or a
	// shared library: a neighbour window crosses into those only while
	// they turn out to be read (prefetchNeighbours).
	big []uint64
	// src has bit i set for chunk i of a Python source compiled beside it
	// (compiledSources; nil when there are none): treated as big while
	// the link is not judged (prefetchNeighbours).
	src []uint64
	// sparse holds, for each sparse file with a map, where each of its
	// regions starts among its stored bytes, and their total last.
	sparse map[*toc.Entry][]int64
}

// sparseStart returns where region i of sparse file e starts among its
// stored bytes (their total for i past the last region).
func (l *layer) sparseStart(e *toc.Entry, i int) int64 {
	starts := l.sparse[e]
	if len(starts) == 0 {
		return 0
	}
	return starts[min(i, len(starts)-1)]
}

func newLayer(i int, l Layer) *layer {
	ly := &layer{index: i, name: l.Name, toc: l.TOC, fetcher: l.Fetcher}
	ly.big = make([]uint64, (len(l.TOC.Chunks)+63)/64)
	for i := range l.TOC.Entries {
		e := &l.TOC.Entries[i]
		if rs := e.SparseMap(); len(rs) > 0 {
			starts := make([]int64, len(rs)+1)
			for j, r := range rs {
				starts[j+1] = starts[j] + r.Length
			}
			if ly.sparse == nil {
				ly.sparse = map[*toc.Entry][]int64{}
			}
			ly.sparse[e] = starts
		}
		if e.NumChunks > 1 || e.NumChunks == 1 && toc.IsSharedLibrary(e.Name) {
			for c := e.FirstChunk; c < e.FirstChunk+e.NumChunks; c++ {
				ly.big[c/64] |= 1 << (c % 64)
			}
		}
	}
	if srcs := compiledSources(l.TOC); len(srcs) > 0 {
		ly.src = make([]uint64, len(ly.big))
		for _, e := range srcs {
			for c := e.FirstChunk; c < e.FirstChunk+e.NumChunks; c++ {
				ly.src[c/64] |= 1 << (c % 64)
			}
		}
	}
	return ly
}

// isSource reports whether chunk c belongs to a Python source compiled
// beside it (layer.src).
func (l *layer) isSource(c int) bool { return l.src != nil && l.src[c/64]&(1<<(c%64)) != 0 }

// compiledSources returns the Python sources of t that have a compiled
// copy beside them in t (dir/m.py and dir/__pycache__/m.<tag>.pyc, as
// Debian's py3compile and pip write them): Python imports the .pyc and
// only stats the .py, so a neighbour window after a .pyc miss that runs on
// into the sources of its parent directory brings bytes an import does not
// read (import numpy at 200 Mbit/s: 2.5 of its 23 MB, torch 4.9 of 117 MB).
func compiledSources(t *toc.TOC) []*toc.Entry {
	compiled := map[string]bool{}
	for i := range t.Entries {
		e := &t.Entries[i]
		dir, base := path.Split(e.Name)
		if !strings.HasSuffix(dir, "__pycache__/") || !strings.HasSuffix(base, ".pyc") || !e.IsRegular() {
			continue
		}
		stem, _, ok := strings.Cut(base, ".")
		if ok {
			compiled[strings.TrimSuffix(dir, "__pycache__/")+stem] = true
		}
	}
	if len(compiled) == 0 {
		return nil
	}
	var out []*toc.Entry
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.NumChunks > 0 && strings.HasSuffix(e.Name, ".py") && compiled[strings.TrimSuffix(e.Name, ".py")] {
			out = append(out, e)
		}
	}
	return out
}

// isBig reports whether chunk c belongs to a big file (layer.big).
func (l *layer) isBig(c int) bool { return l.big[c/64]&(1<<(c%64)) != 0 }

// Root is the filesystem of one or more layers. Mount it with Mount, or use
// Node with go-fuse directly; Close stops its background work.
type Root struct {
	t     *tree
	opts  Options
	log   *slog.Logger
	stats counters

	ctx   context.Context
	bgctx context.Context // ctx, as PrefetchContext derives it for background fetches
	hot   *hotSet         // recently fetched chunks, served before the cache
	// checksums: the cache takes a chunk's record checksum along
	// (cacheChecksumPutter), so fetch computes it.
	checksums bool
	puts      chan *hotChunk // verified chunks for the cache writer
	queued    atomic.Int64   // chunks queued for or being written by the cache writer
	putStart  atomic.Int64   // when the writer started on its current chunk (unix ns; 0: idle)
	// room is closed (and replaced) when the writer's queue has room again
	// for background fetches waiting in queuePutWait (roomWaiters).
	roomMu      sync.Mutex
	room        chan struct{}
	roomWaiters atomic.Int64
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	prefetch    chan prefetchJob
	inflight    sync.Map // [32]byte chunk sum → *flight: fetches in progress
	nb          neighbourUse
	depsSeen    sync.Map // uint32 data node → true: libraries whose dependencies were (or are to be) looked up
	libCode     sync.Map // uint32 data node → [2]int: chunks of a library's code (libraryCode)
	reported    sync.Map // chunkKey → struct{}: EIO already logged
	spool       *spool
	bufs        sync.Pool  // *[]byte chunk buffers for partial cache reads
	lifeMu      sync.Mutex // orders spawn against Close
	bulkMu      sync.Mutex
	bulks       map[uint32]bool // nodes whose file a bulk fill is fetching
	// profiled is, per layer, a bit per chunk named by the start-up profile
	// being prefetched (nil without one): reads are lean then, and a miss of
	// a profiled chunk gets windows only over the profile's chunks
	// (docs/fs.md, "Lean reads with a profile").
	profiled atomic.Pointer[[][]uint64]
	// kernelRA, set by Mount when it chose the kernel read-ahead, sets it
	// again when a profile changes KernelReadAheadKB.
	kernelRAMu sync.Mutex
	kernelRA   func(kb int)
	// weights: at least half of the file bytes are in big files that are
	// not shared libraries (see KernelReadAheadKB); fixed by the layers.
	weights bool
	// link: what the fetches of large ranges say of the link (slowLink).
	link linkRate
	// splice: Mount turned on splicing replies, for READs of at most
	// spliceMax bytes (spliceRead).
	splice    atomic.Bool
	spliceMax int
	// slowJobs holds a token per background fetch running on a slow link
	// without a profile (slowLinkJobs).
	slowJobs chan struct{}
}

// lean reports whether reads are lean: Options.Lean, or a profile is being
// prefetched.
func (r *Root) lean() bool { return r.opts.Lean || r.profiled.Load() != nil }

func (r *Root) setKernelRA(f func(kb int)) {
	r.kernelRAMu.Lock()
	r.kernelRA = f
	r.kernelRAMu.Unlock()
}

// applyKernelRA sets the kernel read-ahead again, if Mount chose it, after
// something KernelReadAheadKB depends on changed.
func (r *Root) applyKernelRA() {
	r.kernelRAMu.Lock()
	defer r.kernelRAMu.Unlock()
	if r.kernelRA != nil {
		r.kernelRA(r.KernelReadAheadKB())
	}
}

// profileStarted marks the chunks of the profile being prefetched and, if
// Mount chose the kernel read-ahead, sets it again for a mount with a
// profile.
func (r *Root) profileStarted(named [][]uint64) {
	r.profiled.Store(&named)
	r.applyKernelRA()
}

// inProfile reports whether chunk i of l is named by the Root's profile.
func (r *Root) inProfile(l *layer, i int) bool {
	p := r.profiled.Load()
	if p == nil || i < 0 {
		return false
	}
	bits := (*p)[l.index]
	return i/64 < len(bits) && bits[i/64]&(1<<(i%64)) != 0
}

// NewRoot builds the tree of layers (bottom layer first). It fails if no
// layers are given, or with OverlayWhiteouts and more than one layer or a
// layer with a hardlink whose target it lacks (ErrLowerHardlink).
func NewRoot(layers []Layer, opts Options) (*Root, error) {
	if len(layers) == 0 {
		return nil, ErrNoLayers
	}
	if opts.OverlayWhiteouts && len(layers) != 1 {
		return nil, fmt.Errorf("%w: overlay whiteouts need exactly one layer, got %d", ErrBadOptions, len(layers))
	}
	if len(layers) > math.MaxUint16 {
		return nil, fmt.Errorf("%w: %d layers", ErrBadOptions, len(layers))
	}
	if opts.Passthrough && opts.SpoolDir == "" {
		return nil, fmt.Errorf("%w: passthrough needs a spool dir", ErrBadOptions)
	}
	ls := make([]*layer, len(layers))
	for i, l := range layers {
		if l.TOC == nil || l.Fetcher == nil {
			return nil, fmt.Errorf("%w: layer %d (%s) has no toc or fetcher", ErrBadOptions, i, l.Name)
		}
		if uint64(len(l.TOC.Entries)) >= uint64(noEntry) {
			return nil, fmt.Errorf("%w: layer %s: too many entries", ErrBadOptions, l.Name)
		}
		ls[i] = newLayer(i, l)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReadAhead == 0 {
		opts.ReadAhead = DefaultReadAhead
	}
	if opts.PrefetchWorkers <= 0 {
		opts.PrefetchWorkers = DefaultPrefetchWorkers
	}
	if opts.NeighbourWindow == 0 {
		opts.NeighbourWindow = DefaultNeighbourWindow
	}
	if opts.WholeLibrary == 0 {
		opts.WholeLibrary = DefaultWholeLibrary
	}
	for _, d := range []*time.Duration{&opts.EntryTimeout, &opts.AttrTimeout, &opts.NegativeTimeout} {
		switch {
		case *d == 0:
			*d = DefaultTimeout
		case *d < 0:
			*d = 0
		}
	}
	big, all := bigFileBytes(ls)
	r := &Root{t: buildTree(ls, opts.OverlayWhiteouts, opts.Logger), opts: opts, log: opts.Logger, weights: mostlyWeights(big, all)}
	if opts.OverlayWhiteouts && r.t.danglingLinks > 0 {
		// The merged view skips such a link with a warning; a layer
		// mounted alone would hide a file containerd's unpack gives it.
		return nil, fmt.Errorf("layer %s: %w: %s (%d such hardlinks)", ls[0].name, ErrLowerHardlink, r.t.danglingLink, r.t.danglingLinks)
	}
	if opts.OverlayWhiteouts {
		r.t.borrowLowerAttrs(opts.LowerDirs, opts.Logger)
	}
	r.slowJobs = make(chan struct{}, slowLinkJobs)
	// A node's fetcher may know the link already (a daemon's earlier
	// mounts): a Root starts from that, not from nothing.
	for _, l := range ls {
		if r.pollLink(l.fetcher) {
			break
		}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.bgctx = r.ctx
	if opts.PrefetchContext != nil {
		r.bgctx = opts.PrefetchContext(r.ctx)
	}
	r.bufs.New = func() any { b := make([]byte, 0, maxChunkSize(ls)); return &b }
	if opts.Passthrough {
		if opts.SpoolLimit <= 0 {
			opts.SpoolLimit = DefaultSpoolLimit
			r.opts.SpoolLimit = DefaultSpoolLimit
		}
		sp, err := newSpool(opts.SpoolDir, opts.SpoolLimit)
		if err != nil {
			return nil, err
		}
		r.spool = sp
	}
	r.hot = newHotSet(hotSetBytes(ls, opts.ReadAhead, big > 0), maxChunkSize(ls))
	_, r.checksums = opts.Cache.(cacheChecksumPutter)
	if opts.Cache != nil {
		r.puts = make(chan *hotChunk, writeQueue)
		r.room = make(chan struct{})
		r.wg.Add(1)
		go r.cacheWriter()
	}
	if opts.ReadAhead > 0 || opts.NeighbourWindow > 0 || opts.WholeLibrary > 0 || r.spool != nil {
		r.prefetch = make(chan prefetchJob, 64)
		for range opts.PrefetchWorkers {
			r.wg.Add(1)
			go r.prefetcher()
		}
	}
	return r, nil
}

// writeQueue bounds the chunks waiting for the cache writer; beyond it
// fetched chunks are served but not cached.
const writeQueue = 256

// bgWriteQueue is how full background fetches fill the write queue
// (queuePutWait): the rest is for chunks fetched for readers.
const bgWriteQueue = writeQueue * 3 / 4

// hotSetBytes sizes the hot set: twice the largest read-ahead window (a big
// file's, when the layers have one), so that read-ahead never evicts chunks
// before the reader gets to them, and at least 64 MiB. The set fills up to
// its bound as chunks arrive, so a mount without big files keeps the
// smaller one.
func hotSetBytes(ls []*layer, readAhead int, bigFiles bool) int64 {
	window := int64(max(readAhead, 0))
	if bigFiles {
		window *= bigFileWindow
	}
	return max(64<<20, 2*window*int64(maxChunkSize(ls)))
}

func maxChunkSize(ls []*layer) int {
	m := 0
	for _, l := range ls {
		m = max(m, int(l.toc.ChunkSize))
	}
	return min(m, toc.MaxChunkSize)
}

// Close stops the Root's background work and waits for it. Reads still work
// after Close, without read-ahead.
func (r *Root) Close() error {
	r.lifeMu.Lock()
	r.cancel() // under lifeMu: no spawn adds to wg after this
	r.lifeMu.Unlock()
	r.wg.Wait()
	if r.spool != nil {
		return r.spool.close()
	}
	return nil
}

// Len returns the number of names in the tree (hardlinks counted once per name).
func (r *Root) Len() int { return len(r.t.nodes) }

// Stats returns the Root's counters.
func (r *Root) Stats() Stats {
	s := &r.stats
	return Stats{
		Reads: s.reads.Load(), BytesRead: s.bytesRead.Load(),
		ChunkHits: s.hits.Load(), ChunkMisses: s.misses.Load(),
		FetchedChunks: s.fetched.Load(), FetchedBytes: s.fetchedBytes.Load(),
		Prefetched: s.prefetched.Load(), NeighbourJobs: s.neighbourJobs.Load(), EIO: s.eio.Load(), Interrupted: s.interrupted.Load(),
		Passthrough: s.passthrough.Load(), Spliced: s.spliced.Load(), Lookups: s.lookups.Load(), NegLookups: s.neglookups.Load(),
		CacheSkipped: s.cacheSkipped.Load(), CacheErrors: s.cacheErrors.Load(), BulkFills: s.bulkFills.Load(), LibraryJobs: s.libraryJobs.Load(), PartialLibraries: s.partialLibraries.Load(),
		LinkBytesPerSecond: r.link.max.Load(), SlowLink: r.link.slow.Load(), LinkRTTSeconds: time.Duration(r.link.rtt.Load()).Seconds(), FarLink: r.farLink(),
	}
}
