package remote

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// trickle serves blob GETs whose Range starts at one of the offsets in
// slow one byte every interval (headers at once), the rest normally.
type trickle struct {
	next     http.Handler
	slow     map[string]bool // "bytes=N-" prefixes
	interval time.Duration
	started  atomic.Int64
}

func (tr *trickle) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rng := r.Header.Get("Range")
	slow := false
	for p := range tr.slow {
		if strings.HasPrefix(rng, p) {
			slow = true
		}
	}
	if !isBlobGet(r) || !slow {
		tr.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	tr.next.ServeHTTP(rec, r)
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.WriteHeader(rec.Code)
	w.(http.Flusher).Flush()
	tr.started.Add(1)
	for _, c := range rec.Body.Bytes() {
		select {
		case <-time.After(tr.interval):
		case <-r.Context().Done():
			return
		}
		if _, err := w.Write([]byte{c}); err != nil {
			return
		}
		w.(http.Flusher).Flush()
	}
}

// TestSlowRegistryDeadline: a registry that trickles a byte at a time
// (which the stall timer, reset on every byte, never catches) makes each
// attempt fail the minimum throughput and the call fail at its deadline.
func TestSlowRegistryDeadline(t *testing.T) {
	l := allTypesLayer(t)
	c := biggest(l.res.TOC.Chunks)
	tr := &trickle{slow: map[string]bool{"bytes=" + itoa(c.CompressedOffset) + "-": true}, interval: 20 * time.Millisecond}
	_, host := newRegistry(t, func(h http.Handler) http.Handler { tr.next = h; return tr })
	push(t, host, "slow/img:v1", l)
	f := newFetcher(t, WithStallTimeout(2*time.Second), WithRetry(100, time.Millisecond, time.Minute),
		WithMinThroughput(1<<10, 300*time.Millisecond), WithFetchDeadline(2*time.Second))
	b := f.Blob(repoOf(t, host, "slow/img"), l.digest(), l.res.Size)
	done := make(chan error, 1)
	go func() { _, err := fetchAll(context.Background(), b, []toc0{c}); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrFetchDeadline) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v, want ErrFetchDeadline", err)
		}
		t.Logf("%v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("fetch from a trickling registry still blocked 30 s in (deadline 2 s)")
	}
	if st := f.Stats(); st.Retries < 1 || tr.started.Load() < 2 {
		t.Errorf("retries %d, slow attempts %d: attempts under the minimum throughput were not aborted and retried", st.Retries, tr.started.Load())
	}
}

// TestSlowRegistryReadAtDeadline: footer, TOC and whole-blob reads
// (Blob.ReadAt) end at the fetch deadline too, however the registry trickles.
func TestSlowRegistryReadAtDeadline(t *testing.T) {
	l := allTypesLayer(t)
	c := biggest(l.res.TOC.Chunks)
	tr := &trickle{slow: map[string]bool{"bytes=": true}, interval: 20 * time.Millisecond} // every range, resumed ones too
	_, host := newRegistry(t, func(h http.Handler) http.Handler { tr.next = h; return tr })
	push(t, host, "slow/img:v1", l)
	f := newFetcher(t, WithStallTimeout(2*time.Second), WithRetry(100, time.Millisecond, time.Minute),
		WithMinThroughput(1<<10, 300*time.Millisecond), WithFetchDeadline(2*time.Second))
	b := f.Blob(repoOf(t, host, "slow/img"), l.digest(), l.res.Size)
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(context.Background(), make([]byte, c.CompressedSize), int64(c.CompressedOffset))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrFetchDeadline) {
			t.Fatalf("err %v, want ErrFetchDeadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ReadAt from a trickling registry still blocked 30 s in (deadline 2 s)")
	}
}

// TestCancelledWaiterFreesSlot: with a single request slot held by a fetch
// from a trickling registry, cancelling its caller frees the slot for the
// next read; a caller joined to a fetch returns when its own ctx ends.
func TestCancelledWaiterFreesSlot(t *testing.T) {
	l := allTypesLayer(t)
	chunks := l.res.TOC.Chunks
	slow := biggest(chunks)
	fast := chunks[len(chunks)-1]
	if fast.CompressedOffset == slow.CompressedOffset {
		fast = chunks[0]
	}
	tr := &trickle{slow: map[string]bool{"bytes=" + itoa(slow.CompressedOffset) + "-": true}, interval: 50 * time.Millisecond}
	_, host := newRegistry(t, func(h http.Handler) http.Handler { tr.next = h; return tr })
	push(t, host, "slow/img:v1", l)
	f := newFetcher(t, WithConcurrency(1), WithMinThroughput(0, 0), WithFetchDeadline(time.Minute))
	b := f.Blob(repoOf(t, host, "slow/img"), l.digest(), l.res.Size)

	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	aDone := make(chan error, 1)
	go func() { _, err := fetchAll(actx, b, []toc0{slow}); aDone <- err }()
	for tr.started.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// A joiner of the slow chunk gives up on its own.
	jctx, jcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer jcancel()
	jDone := make(chan error, 1)
	go func() { _, err := fetchAll(jctx, b, []toc0{slow}); jDone <- err }()
	// A reader of another chunk waits for the only slot.
	bDone := make(chan error, 1)
	go func() { _, err := fetchAll(context.Background(), b, []toc0{fast}); bDone <- err }()

	wait := func(what string, ch chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still blocked after 30 s", what)
			return nil
		}
	}
	if err := wait("joined waiter", jDone); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("joined waiter: err %v, want its own deadline", err)
	}
	acancel()
	if err := wait("cancelled owner", aDone); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled owner: err %v, want context.Canceled", err)
	}
	if err := wait("reader behind the slot", bDone); err != nil {
		t.Errorf("reader behind the freed slot: %v", err)
	}
}

type toc0 = toc.Chunk

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// biggest returns the chunk with the largest frame (slowest to trickle).
func biggest(cs []toc.Chunk) toc.Chunk {
	b := cs[0]
	for _, c := range cs {
		if c.CompressedSize > b.CompressedSize {
			b = c
		}
	}
	return b
}

// gated holds blob GETs until its gate opens and records requests whose
// client went away while held.
type gated struct {
	next      http.Handler
	gate      chan struct{}
	held      atomic.Int64
	abandoned atomic.Int64
}

func (g *gated) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isBlobGet(r) {
		g.held.Add(1)
		select {
		case <-g.gate:
		case <-r.Context().Done():
			g.abandoned.Add(1)
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// TestFetchLivesWhileAnyoneWaits: a fetch goes on after the caller that
// started it leaves, for a caller that joined it (one request, not two),
// and is cancelled when every waiter has left.
func TestFetchLivesWhileAnyoneWaits(t *testing.T) {
	l := allTypesLayer(t)
	c := l.res.TOC.Chunks[0]
	g := &gated{gate: make(chan struct{})}
	_, host := newRegistry(t, func(h http.Handler) http.Handler { g.next = h; return g })
	push(t, host, "slow/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "slow/img"), l.digest(), l.res.Size)
	want := l.want(t)[0]

	start := func(ctx context.Context) chan error {
		ch := make(chan error, 1)
		go func() {
			got, err := fetchAll(ctx, b, []toc0{c})
			if err == nil && string(got[0]) != string(want) {
				err = errors.New("wrong bytes")
			}
			ch <- err
		}()
		return ch
	}
	wait := func(what string, ch chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still waiting after 30 s", what)
			return nil
		}
	}
	joinedBy := func(n int64) {
		for f.Stats().ChunksShared < n {
			time.Sleep(time.Millisecond)
		}
	}

	// The owner leaves, the joiner stays: the same request serves it.
	octx, ocancel := context.WithCancel(context.Background())
	owner := start(octx)
	for g.held.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	joiner := start(context.Background())
	joinedBy(1)
	ocancel()
	if err := wait("owner", owner); !errors.Is(err, context.Canceled) {
		t.Fatalf("owner: err %v, want context.Canceled", err)
	}
	close(g.gate)
	if err := wait("joiner", joiner); err != nil {
		t.Fatalf("joiner after the owner left: %v", err)
	}
	if n := g.held.Load(); n != 1 {
		t.Errorf("%d blob requests, want 1: the joiner fetched again", n)
	}

	// Everyone leaves: the request is cancelled.
	g2 := &gated{gate: make(chan struct{})}
	_, host2 := newRegistry(t, func(h http.Handler) http.Handler { g2.next = h; return g2 })
	push(t, host2, "slow/img:v1", l)
	f2 := newFetcher(t)
	b = f2.Blob(repoOf(t, host2, "slow/img"), l.digest(), l.res.Size)
	f = f2
	octx, ocancel = context.WithCancel(context.Background())
	jctx, jcancel := context.WithCancel(context.Background())
	owner = start(octx)
	for g2.held.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	joiner = start(jctx)
	joinedBy(1)
	ocancel()
	wait("owner", owner)
	if g2.abandoned.Load() != 0 {
		t.Fatal("request cancelled while a joiner still waits")
	}
	jcancel()
	wait("joiner", joiner)
	for deadline := time.Now().Add(30 * time.Second); g2.abandoned.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("request still open 30 s after every waiter left")
		}
	}
	close(g2.gate)
}
