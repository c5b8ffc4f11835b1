package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Blob is a blob of one repository, opened for range reads. It holds no
// connection; every method sends its own requests.
type Blob struct {
	f      *Fetcher
	repo   name.Repository
	digest v1.Hash
	size   int64
	link   *linkMeter // the registry's (LinkRate)
}

// Blob opens blob d (of size bytes, from its descriptor) of repository repo.
// No request is sent until a read.
func (f *Fetcher) Blob(repo name.Repository, d v1.Hash, size int64) *Blob {
	return &Blob{f: f, repo: repo, digest: d, size: size, link: f.linkFor(repo.RegistryStr())}
}

// Digest returns the blob's digest.
func (b *Blob) Digest() v1.Hash { return b.digest }

// Size returns the blob's size as given to Fetcher.Blob.
func (b *Blob) Size() int64 { return b.size }

func (b *Blob) String() string { return b.repo.String() + "@" + b.digest.String() }

// ReadAt reads len(p) bytes at off with single-range requests (split into
// parallel requests of at most the request bound when p is larger), retried.
// The bytes are not verified: use it for footers, TOCs and whole blobs whose
// digest the caller checks. Each range request, retries included, is bounded
// by the fetch deadline (WithFetchDeadline): then the error wraps
// ErrFetchDeadline. Like io.ReaderAt it returns io.EOF with n <
// len(p) when the read reaches the end of the blob.
func (b *Blob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blob %s: %w: negative offset %d", b.digest, ErrBadChunkRequest, off)
	}
	want := int64(len(p))
	var eof error
	if b.size > 0 {
		if off >= b.size {
			return 0, io.EOF
		}
		if off+want > b.size {
			want, eof = b.size-off, io.EOF
		}
	}
	if want == 0 {
		return 0, eof
	}
	step := b.f.opts.maxRequest
	if want <= step {
		if err := b.readRange(ctx, p[:want], off); err != nil {
			return 0, err
		}
		return int(want), eof
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.f.opts.concurrency)
	for s := int64(0); s < want; s += step {
		e := min(s+step, want)
		g.Go(func() error { return b.readRange(gctx, p[s:e], off+s) })
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return int(want), eof
}

func (b *Blob) readRange(ctx context.Context, p []byte, off int64) error {
	// One range (at most the request bound), retries and the wait for a
	// slot included, gets the fetch deadline, as a FetchChunks call does:
	// a registry trickling just above the throughput floor cannot keep a
	// TOC or footer read, or a whole-blob pull, retrying for ever.
	ctx, cancel := context.WithTimeoutCause(ctx, b.f.opts.fetchTimeout, errDeadline)
	defer cancel()
	bg := isBackground(ctx)
	if err := b.f.acquire(ctx, bg); err != nil {
		return err
	}
	defer b.f.release(bg)
	var done int64
	end := off + int64(len(p))
	err := b.f.do(ctx, b.repo, capPull, func() int64 { return done }, func(ctx context.Context, ep *endpoint, c *http.Client) error {
		return b.rangeAttempt(ctx, ep, c, off+done, end, func(r io.Reader) error {
			n, err := io.ReadFull(r, p[done:])
			done += int64(n)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("blob %s: read %d bytes at %d: %w", b.digest, len(p), off, err)
	}
	return nil
}

// acquire takes a request slot; background work first takes one of the
// background slots, so that a quarter of the slots stay for on-demand reads.
func (f *Fetcher) acquire(ctx context.Context, bg bool) error {
	if bg {
		select {
		case f.bgSem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case f.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		if bg {
			<-f.bgSem
		}
		return ctx.Err()
	}
}

func (f *Fetcher) release(bg bool) {
	<-f.sem
	if bg {
		<-f.bgSem
	}
}

type backgroundKey struct{}

// VerifiesChunks reports that FetchChunks delivers only chunks whose size
// and sha256 match the TOC (toc.DecodeChunk checks both), so consumers such
// as package fs need not hash them again.
func (b *Blob) VerifiesChunks() bool { return true }

// Background marks fetches made under the returned context as background
// work (prefetch, pre-warming): they never take the last quarter of the
// fetcher's request slots, which stay free for on-demand reads.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool { v, _ := ctx.Value(backgroundKey{}).(bool); return v }

// rangeAttempt sends one request for bytes [off, end) of the blob to ep (or
// to the cached redirect of ep) and lets consume read them.
func (b *Blob) rangeAttempt(ctx context.Context, ep *endpoint, c *http.Client, off, end int64, consume func(io.Reader) error) error {
	f := b.f
	if ep.noRange.Load() && off > f.opts.maxSkip {
		return fmt.Errorf("%w: %s (offset %d)", ErrRangeNotSupported, ep.base, off)
	}
	rk := redirectKey{ep.base, b.repo.RepositoryStr(), b.digest.String()}
	u, cached := f.cachedRedirect(rk)
	rawURL := ep.blobURL(b.repo, b.digest.String())
	if cached {
		rawURL = u.String()
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(f.opts.stallTimeout, func() { cancel(errStalled) })
	defer timer.Stop()
	var moved atomic.Int64
	if f.opts.minRate > 0 {
		stop := watchThroughput(&moved, end-off, f.opts.minRate, f.opts.rateWindow, func() { cancel(errTooSlow) })
		defer stop()
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(end-1, 10))
	if !cached {
		for k, vs := range ep.header {
			req.Header[k] = vs
		}
	} else {
		f.st.redirectReuses.Add(1)
	}
	f.st.requests.Add(1)
	resp, err := c.Do(req)
	if err != nil {
		return doError(err, rctx)
	}
	defer resp.Body.Close()
	timer.Reset(f.opts.stallTimeout)
	if !cached && (resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusOK) &&
		resp.Request != nil && resp.Request != req && resp.Request.URL.String() != req.URL.String() {
		f.storeRedirect(rk, resp.Request.URL) // only URLs that served the blob
	}
	where := redact(resp.Request.URL)
	br := &body{ctx: rctx, r: resp.Body, timer: timer, stall: f.opts.stallTimeout, count: &f.st.bytes, moved: &moved}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != off || last != end-1 || (total >= 0 && b.size > 0 && total != b.size) {
			return fmt.Errorf("%w: %s: asked for bytes %d-%d of %d, got Content-Range %q",
				ErrBadResponse, where, off, end-1, b.size, resp.Header.Get("Content-Range"))
		}
		if resp.ContentLength >= 0 && resp.ContentLength != end-off {
			return fmt.Errorf("%w: %s: Content-Length %d for a range of %d bytes", ErrBadResponse, where, resp.ContentLength, end-off)
		}
		br.remaining = end - off
		return consume(br)
	case http.StatusOK:
		// The host ignored Range and sends the whole blob.
		if b.size > 0 && resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return fmt.Errorf("%w: %s: 200 with %d bytes for a blob of %d", ErrBadResponse, where, resp.ContentLength, b.size)
		}
		if off > 0 || (b.size > 0 && end < b.size) {
			f.st.rangeIgnored.Add(1)
			if !ep.noRange.Swap(true) {
				f.opts.logger.WarnContext(ctx, "registry host ignores range requests", "host", ep.base, "blob", b.digest.String())
			}
		}
		if off > f.opts.maxSkip {
			return fmt.Errorf("%w: %s answered 200 to a range at offset %d", ErrRangeNotSupported, where, off)
		}
		br.remaining = end
		if _, err := io.CopyN(io.Discard, br, off); err != nil {
			return err
		}
		return consume(br)
	case http.StatusForbidden, http.StatusNotFound, http.StatusGone, http.StatusUnauthorized:
		if cached {
			_ = responseError(resp)
			f.dropRedirect(rk)
			return errRedirectGone
		}
	}
	return responseError(resp)
}

// watchThroughput calls abort when fewer than rate×window bytes (or all
// that were left to move) arrive during a window; the first window
// includes the wait for the response headers. stop ends the watch.
func watchThroughput(moved *atomic.Int64, total, rate int64, window time.Duration, abort func()) (stop func()) {
	need := max(rate*int64(window)/int64(time.Second), 1)
	var last int64
	var t *time.Timer
	var mu sync.Mutex
	stopped := false
	t = time.AfterFunc(window, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		m := moved.Load()
		if m-last < min(need, total-last) {
			abort()
			return
		}
		last = m
		t.Reset(window)
	})
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		t.Stop()
	}
}

// parseContentRange parses "bytes first-last/total" (total may be "*": -1).
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := fmt.Errorf("%w: Content-Range %q", ErrBadResponse, s)
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, z, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = strconv.ParseInt(a, 10, 64); err != nil || first < 0 {
		return 0, 0, 0, bad
	}
	if last, err = strconv.ParseInt(z, 10, 64); err != nil || last < first {
		return 0, 0, 0, bad
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= last {
			return 0, 0, 0, bad
		}
	}
	return first, last, total, nil
}

// Chunks: singleflight per chunk across all callers of the fetcher.

type chunkKey struct {
	digest string
	off    int64
	sum    [32]byte
}

type chunkCall struct {
	done    chan struct{}
	waiters int     // joined callers; guarded by Fetcher.mu
	flight  *flight // the request fetching it
	data    []byte
	err     error
	// abandoned means the owner stopped (its context ended or its callback
	// failed): waiters should fetch the chunk themselves.
	abandoned bool
}

type want struct {
	c    toc.Chunk
	key  chunkKey
	idx  []int
	call *chunkCall
}

// flight is one owner's run of requests, shared by the callers waiting for
// its chunks: it goes on while any of them waits (the owner, or a caller
// that joined one of its chunks) and is cancelled when the last one leaves.
type flight struct {
	refs   int // guarded by Fetcher.mu
	cancel context.CancelCauseFunc
}

// errNobodyWaits cancels a flight whose callers all left.
var errNobodyWaits = errors.New("every caller waiting for this fetch left")

// leave drops one waiter of fl, cancelling it when it was the last.
func (f *Fetcher) leave(fl *flight) {
	if fl == nil {
		return
	}
	f.mu.Lock()
	fl.refs--
	last := fl.refs == 0
	f.mu.Unlock()
	if last {
		fl.cancel(errNobodyWaits)
	}
}

func (w *want) end() int64 { return w.c.CompressedOffset + int64(w.c.CompressedSize) }

// complete publishes a chunk's result and reports whether anyone joined it
// (if not, the owner may recycle data once it has delivered it).
func (f *Fetcher) complete(w *want, data []byte, err error, abandoned bool) (shared bool) {
	f.mu.Lock()
	if f.inflight[w.key] == w.call {
		delete(f.inflight, w.key)
	}
	shared = w.call.waiters > 0
	f.mu.Unlock()
	w.call.data, w.call.err, w.call.abandoned = data, err, abandoned
	close(w.call.done)
	return shared
}

// FetchChunks fetches the given chunks of the blob, in any order: it sorts
// them, coalesces neighbours (gaps up to the max gap) into single-range
// requests up to the request bound, runs the requests in parallel, and
// shares each chunk with concurrent callers fetching it. Every chunk is
// decoded and verified with toc.DecodeChunk; fn is called once per index of
// chunks with the verified uncompressed bytes, possibly concurrently; data
// is only valid during the call. It returns the first error (naming the blob
// and chunk offset; verification failures wrap toc.ErrDigestMismatch or
// toc.ErrBadChunk); chunks verified before the error were still delivered.
// Under a context marked with Background the requests never take the last
// quarter of the fetcher's request slots.
func (b *Blob) FetchChunks(ctx context.Context, chunks []toc.Chunk, fn func(i int, data []byte) error) error {
	return b.fetchChunks(ctx, chunks, nil, nil, func(i int, data []byte, _ bool) error { return fn(i, data) })
}

// FetchChunksOwned is FetchChunks for a caller that keeps chunks (package
// fs's hot set): each chunk is decoded into a buffer from get (length 0,
// capacity at least n), and fn gets own true when data is that buffer and
// nothing else uses it (no other caller joined the fetch of that chunk, and
// chunks holds it once): the caller may keep it, and must not expect it back.
// Otherwise data is only valid during the call, as with FetchChunks. A
// buffer from get that fn did not get to own is dropped, never reused.
func (b *Blob) FetchChunksOwned(ctx context.Context, chunks []toc.Chunk, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error {
	return b.fetchChunks(ctx, chunks, nil, get, fn)
}

// FetchChunksClaimed is FetchChunksOwned for work that must not hold chunks
// while it waits (package fs's read-ahead, profile prefetch and fill, which
// register each chunk they fetch so that a reader needing it waits for
// their fetch instead of fetching it again): each run of requests, once it
// has its request slot, calls claim(i) for each index of chunks it covers
// and fetches only those for which claim returned true. A reader that
// needs a chunk meanwhile fetches it itself, and the run then skips it. A
// chunk whose claim returned false is neither fetched nor delivered and is
// no error; nor is one never claimed because an earlier error or the end
// of ctx stopped the call. claim may be called from several goroutines at
// once, and again for an index it already claimed (a chunk whose fetch by
// another caller was abandoned is retried): it must then return true.
func (b *Blob) FetchChunksClaimed(ctx context.Context, chunks []toc.Chunk, claim func(i int) bool, get func(n int) []byte, fn func(i int, data []byte, own bool) error) error {
	if claim == nil {
		return errors.New("FetchChunksClaimed: no claim function")
	}
	return b.fetchChunks(ctx, chunks, claim, get, fn)
}

func (b *Blob) fetchChunks(ctx context.Context, chunks []toc.Chunk, claim func(int) bool, get func(int) []byte, fn func(int, []byte, bool) error) error {
	if len(chunks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeoutCause(ctx, b.f.opts.fetchTimeout, errDeadline)
	defer cancel()
	var joinedAll []*chunkCall // one per join: each holds a reference on its flight
	defer func() {
		// Stop waiting for the fetches this call joined and did not see end.
		for _, call := range joinedAll {
			select {
			case <-call.done:
			default:
				b.f.leave(call.flight)
			}
		}
	}()
	byKey := make(map[chunkKey]*want, len(chunks))
	pending := make([]*want, 0, len(chunks))
	for i := range chunks {
		c := &chunks[i]
		if err := b.checkChunk(c); err != nil {
			return err
		}
		k := chunkKey{b.digest.Hex, c.CompressedOffset, c.Sum}
		w := byKey[k]
		if w == nil {
			w = &want{c: *c, key: k}
			byKey[k] = w
			pending = append(pending, w)
		}
		w.idx = append(w.idx, i)
	}
	for len(pending) > 0 {
		joined, err := b.fetchPlanned(ctx, pending, claim, get, fn)
		for _, w := range joined {
			joinedAll = append(joinedAll, w.call)
		}
		if err != nil {
			return err
		}
		var retry []*want
		for _, w := range joined {
			select {
			case <-w.call.done:
			case <-ctx.Done():
				return fmt.Errorf("blob %s: chunk at %d: %w", b.digest, w.c.CompressedOffset, context.Cause(ctx))
			}
			if w.call.err != nil {
				if w.call.abandoned && ctx.Err() == nil {
					retry = append(retry, w)
					continue
				}
				return w.call.err
			}
			if err := deliver(fn, w, w.call.data, false); err != nil {
				return fmt.Errorf("blob %s: chunk at %d: %w", b.digest, w.c.CompressedOffset, err)
			}
		}
		pending = retry
	}
	return nil
}

// fetchPlanned plans runs over wants and fetches them in parallel. A run
// claims its chunks only when it gets a request slot, so chunks queued
// behind a long (background) fetch are not held hostage: whoever starts
// first fetches them and the others join. It returns the chunks that were
// already in flight elsewhere, to be awaited.
//
// With claim (FetchChunksClaimed), a run that has its slot keeps only the
// chunks the caller claims.
func (b *Blob) fetchPlanned(ctx context.Context, wants []*want, claim func(int) bool, get func(int) []byte, fn func(int, []byte, bool) error) ([]*want, error) {
	f := b.f
	bg := isBackground(ctx)
	var mu sync.Mutex
	var joined []*want
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(f.opts.concurrency)
	for _, r := range b.plan(wants) {
		g.Go(func() error {
			if err := f.acquire(gctx, bg); err != nil {
				if c := context.Cause(gctx); c != nil {
					err = c
				}
				return fmt.Errorf("blob %s: chunk at %d: waiting for a request slot: %w", b.digest, r[0].c.CompressedOffset, err)
			}
			if claim != nil {
				if r = claimed(r, claim); len(r) == 0 {
					f.release(bg)
					return nil
				}
			}
			fl := &flight{refs: 1}
			own, join := f.claim(r, fl)
			if len(join) > 0 {
				mu.Lock()
				joined = append(joined, join...)
				mu.Unlock()
			}
			if len(own) == 0 {
				f.release(bg)
				return nil
			}
			// The requests run on their own context, under the fetch
			// deadline, for as long as anyone waits for their chunks:
			// this caller, or callers that joined them (see flight).
			rctx, cancel := context.WithCancelCause(context.WithoutCancel(gctx))
			rctx, cancelT := context.WithTimeoutCause(rctx, f.opts.fetchTimeout, errDeadline)
			fl.cancel = cancel
			// fn is this caller's: never called once it has left.
			var dmu sync.Mutex
			gone := false
			deliverFn := func(i int, data []byte, own bool) error {
				dmu.Lock()
				defer dmu.Unlock()
				if gone {
					return nil
				}
				return fn(i, data, own)
			}
			done := make(chan error, 1)
			go func() {
				defer f.release(bg)
				defer cancelT()
				defer cancel(nil)
				subs := b.plan(own)
				for k, sub := range subs {
					if err := b.fetchRun(rctx, sub, get, deliverFn); err != nil {
						for _, rest := range subs[k+1:] {
							for _, w := range rest {
								f.complete(w, nil, err, true)
							}
						}
						done <- err
						return
					}
				}
				done <- nil
			}()
			select {
			case err := <-done:
				return err
			case <-gctx.Done():
				dmu.Lock()
				gone = true
				dmu.Unlock()
				f.leave(fl)
				return fmt.Errorf("blob %s: chunk at %d: %w", b.digest, own[0].c.CompressedOffset, context.Cause(gctx))
			}
		})
	}
	return joined, g.Wait()
}

// claimed keeps the chunks of run that the caller claims, each want with
// the indices claimed.
func claimed(run []*want, claim func(int) bool) []*want {
	kept := run[:0:0]
	for _, w := range run {
		idx := w.idx[:0:0]
		for _, i := range w.idx {
			if claim(i) {
				idx = append(idx, i)
			}
		}
		if len(idx) > 0 {
			w.idx = idx
			kept = append(kept, w)
		}
	}
	return kept
}

// claim takes ownership of the chunks of run that nobody is fetching and
// joins the others.
func (f *Fetcher) claim(run []*want, fl *flight) (own, join []*want) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range run {
		if call := f.inflight[w.key]; call != nil {
			call.waiters++
			if call.flight != nil {
				call.flight.refs++
			}
			w.call = call
			join = append(join, w)
			continue
		}
		w.call = &chunkCall{done: make(chan struct{}), flight: fl}
		f.inflight[w.key] = w.call
		own = append(own, w)
	}
	f.st.shared.Add(int64(len(join)))
	return own, join
}

func (b *Blob) checkChunk(c *toc.Chunk) error {
	switch {
	case c.CompressedOffset < 0, c.CompressedSize == 0, c.Size > toc.MaxChunkSize,
		c.CompressedSize > toc.MaxCompressedSize(c.Size),
		b.size > 0 && c.CompressedOffset+int64(c.CompressedSize) > b.size:
		return fmt.Errorf("blob %s: %w: chunk at %d+%d (size %d, zstd bound %d) in a blob of %d bytes",
			b.digest, ErrBadChunkRequest, c.CompressedOffset, c.CompressedSize, c.Size, toc.MaxCompressedSize(c.Size), b.size)
	}
	return nil
}

// deliver hands a chunk to fn for each index it has in the caller's chunks;
// own (the caller may keep data) only when it has one.
func deliver(fn func(int, []byte, bool) error, w *want, data []byte, own bool) error {
	own = own && len(w.idx) == 1
	for _, i := range w.idx {
		if err := fn(i, data, own); err != nil {
			return err
		}
	}
	return nil
}

// plan groups sorted chunks into runs, each fetched with one range request.
func (b *Blob) plan(own []*want) [][]*want {
	sort.Slice(own, func(i, j int) bool { return own[i].c.CompressedOffset < own[j].c.CompressedOffset })
	var runs [][]*want
	var cur []*want
	var start, end int64
	for _, w := range own {
		o, e := w.c.CompressedOffset, w.end()
		if len(cur) > 0 && o >= end && o-end <= b.f.opts.maxGap && e-start <= b.f.opts.maxRequest {
			cur = append(cur, w)
			end = e
			continue
		}
		if len(cur) > 0 {
			runs = append(runs, cur)
		}
		cur, start, end = []*want{w}, o, e
	}
	if len(cur) > 0 {
		runs = append(runs, cur)
	}
	return runs
}

var framePool sync.Pool // *[]byte

func getFrame(n int) *[]byte {
	if p, _ := framePool.Get().(*[]byte); p != nil && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n)
	return &b
}

var dataPool sync.Pool // *[]byte

func getData(n int) []byte {
	if p, _ := dataPool.Get().(*[]byte); p != nil && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]byte, 0, n)
}

func putData(b []byte) { dataPool.Put(&b) }

// fetchRun fetches one run of owned chunks with one range request (more on
// retry: each retry asks only for the chunks not yet delivered). The caller
// holds a request slot. Every chunk of the run is completed (delivered or
// failed) when it returns.
func (b *Blob) fetchRun(ctx context.Context, run []*want, get func(int) []byte, fn func(int, []byte, bool) error) (err error) {
	f := b.f
	i := 0
	defer func() {
		if i == len(run) {
			return
		}
		if err == nil {
			err = fmt.Errorf("blob %s: chunk at %d: not fetched", b.digest, run[i].c.CompressedOffset)
		}
		var st *stopError
		abandoned := ctx.Err() != nil || errors.As(err, &st)
		for _, w := range run[i:] {
			f.complete(w, nil, err, abandoned)
		}
	}()
	end := run[len(run)-1].end()
	err = f.do(ctx, b.repo, capPull, func() int64 { return int64(i) }, func(ctx context.Context, ep *endpoint, c *http.Client) error {
		if i == len(run) {
			return nil
		}
		off := run[i].c.CompressedOffset
		sent := time.Now()
		return b.rangeAttempt(ctx, ep, c, off, end, func(r io.Reader) error {
			b.link.observeRTT(time.Since(sent))
			pos := off
			// The link's rate (LinkRate): this response's bytes after
			// its first chunk, timed from that chunk's arrival.
			first, from := time.Time{}, off
			defer func() {
				if !first.IsZero() {
					b.link.end(end-off, end-from, time.Since(first), i == len(run))
				}
			}()
			for i < len(run) {
				w := run[i]
				if gap := w.c.CompressedOffset - pos; gap > 0 {
					if _, err := io.CopyN(io.Discard, r, gap); err != nil {
						return err
					}
				}
				fp := getFrame(int(w.c.CompressedSize))
				if _, err := io.ReadFull(r, *fp); err != nil {
					framePool.Put(fp)
					return err
				}
				pos = w.end()
				if first.IsZero() {
					first, from = time.Now(), pos
					b.link.begin()
				}
				var buf []byte
				if get != nil {
					buf = get(int(w.c.Size))
				}
				owned := get != nil && cap(buf) >= int(w.c.Size)
				if !owned {
					buf = getData(int(w.c.Size))
				}
				data, err := toc.DecodeChunk(&w.c, *fp, buf[:0])
				framePool.Put(fp)
				if err != nil {
					f.st.verify.Add(1)
					f.opts.logger.WarnContext(ctx, "chunk failed verification", "blob", b.digest.String(), "host", ep.base, "offset", w.c.CompressedOffset, "err", err)
					return &verifyError{fmt.Errorf("blob %s from %s: %w", b.digest, ep.base, err)}
				}
				f.st.chunks.Add(1)
				// Owned only if the decoder filled get's buffer in place.
				owned = owned && len(data) > 0 && &data[0] == &buf[:1][0]
				shared := f.complete(w, data, nil, false)
				i++
				if err := deliver(fn, w, data, owned && !shared); err != nil {
					return &stopError{fmt.Errorf("blob %s: chunk at %d: %w", b.digest, w.c.CompressedOffset, err)}
				}
				if !shared && !owned {
					putData(data)
				}
			}
			return nil
		})
	})
	if err != nil {
		var ve *verifyError
		var st *stopError
		if !errors.As(err, &ve) && !errors.As(err, &st) {
			err = fmt.Errorf("blob %s: chunk at %d: %w", b.digest, run[min(i, len(run)-1)].c.CompressedOffset, err)
		}
	}
	return err
}

// TOC fetches and verifies the layer's TOC: with one range request when the
// descriptor annotations locate it, otherwise by reading the blob's tail
// (footer, and the TOC too when it fits in the tail) first. Concurrent
// calls for the same blob and location share one fetch and one decode (the
// returned TOC is shared: read-only); a caller whose ctx ends stops waiting,
// and the shared fetch stops when the fetcher's deadline passes.
func (b *Blob) TOC(ctx context.Context, annotations map[string]string) (*toc.TOC, error) {
	if b.size <= 0 {
		return nil, fmt.Errorf("blob %s: toc: blob size unknown", b.digest)
	}
	loc, ok, err := toc.LocationFromAnnotations(annotations)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", b.digest, err)
	}
	key := fmt.Sprintf("%s|%s|%d|%d|%s", b.repo.Name(), b.digest, b.size, loc.Offset, loc.Digest)
	ch := b.f.tocFlight.DoChan(key, func() (any, error) {
		// Shared by every caller waiting: not tied to the first one's ctx.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.f.opts.deadline)
		defer cancel()
		return b.readTOC(sctx, loc, ok)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*toc.TOC), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("blob %s: toc: %w", b.digest, ctx.Err())
	}
}

func (b *Blob) readTOC(ctx context.Context, loc toc.Location, ok bool) (*toc.TOC, error) {
	r := &tailReaderAt{ctx: ctx, b: b}
	var lp *toc.Location
	if ok {
		lp = &loc
	} else {
		n := min(b.size, 256<<10)
		r.tail = make([]byte, n)
		r.tailOff = b.size - n
		if _, err := b.ReadAt(ctx, r.tail, r.tailOff); err != nil && err != io.EOF {
			return nil, fmt.Errorf("toc: %w", err)
		}
	}
	t, _, err := toc.ReadTOC(ctx, r, b.size, lp)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", b.digest, err)
	}
	return t, nil
}

// tailReaderAt serves reads from a prefetched tail of the blob, else remotely.
type tailReaderAt struct {
	ctx     context.Context
	b       *Blob
	tail    []byte
	tailOff int64
}

func (r *tailReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if r.tail != nil && off >= r.tailOff && off+int64(len(p)) <= r.tailOff+int64(len(r.tail)) {
		return copy(p, r.tail[off-r.tailOff:]), nil
	}
	return r.b.ReadAt(r.ctx, p, off)
}
