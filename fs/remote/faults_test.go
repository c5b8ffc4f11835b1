package remote

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Every fetch against a faulty registry returns verified bytes or a clear error.
func TestFaults(t *testing.T) {
	l := allTypesLayer(t)
	want := l.want(t)
	chunks := l.res.TOC.Chunks
	for _, tc := range []struct {
		name      string
		set       func(*faults)
		opts      []Option
		wantErr   []error // any of
		errSubstr string
		check     func(t *testing.T, st Stats, fl *faults)
	}{
		{name: "5xx burst", set: func(f *faults) { f.statuses = []int{503, 502, 500} },
			check: func(t *testing.T, st Stats, _ *faults) { atLeast(t, "retries", st.Retries, 3) }},
		{name: "429 with Retry-After", set: func(f *faults) { f.statuses = []int{429, 429}; f.retryAfter = "0" },
			check: func(t *testing.T, st Stats, _ *faults) { atLeast(t, "retries", st.Retries, 2) }},
		{name: "connection resets", set: func(f *faults) { f.resets = 3 },
			check: func(t *testing.T, st Stats, fl *faults) {
				// net/http itself retries a GET once when a reused connection
				// is reset before the response; the rest are ours.
				atLeast(t, "retries", st.Retries, 1)
				atLeast(t, "blob requests", fl.blobGets.Load(), 4)
			}},
		{name: "reset mid-body resumes", set: func(f *faults) { f.midResets = 2 },
			check: func(t *testing.T, st Stats, _ *faults) {
				atLeast(t, "retries", st.Retries, 2)
				// A retry asks only for the chunks not yet delivered.
				if st.ChunksFetched != int64(len(chunks)) {
					t.Errorf("chunks fetched %d, want %d", st.ChunksFetched, len(chunks))
				}
			}},
		{name: "stalled body", set: func(f *faults) { f.stalls = 1; f.stallFor = 5 * time.Second },
			opts:  []Option{WithStallTimeout(200 * time.Millisecond)},
			check: func(t *testing.T, st Stats, _ *faults) { atLeast(t, "retries", st.Retries, 1) }},
		{name: "slow but live body is not cut", set: func(f *faults) { f.trickle = 10 * time.Millisecond },
			opts: []Option{WithStallTimeout(300 * time.Millisecond), WithMaxRequestSize(64 << 20)},
			check: func(t *testing.T, st Stats, _ *faults) {
				if st.Retries != 0 {
					t.Errorf("retries %d: a body that keeps arriving was treated as stalled", st.Retries)
				}
			}},
		{name: "ignores range near start", set: func(f *faults) { f.ignoreRange = true },
			opts:  []Option{WithMaxRequestSize(64 << 20)}, // one request from the first chunk
			check: func(t *testing.T, st Stats, _ *faults) { atLeast(t, "range ignored", st.RangeIgnored, 1) }},
		{name: "ignores range far into blob", set: func(f *faults) { f.ignoreRange = true },
			opts:    []Option{WithMaxSkip(100)},
			wantErr: []error{ErrRangeNotSupported}},
		{name: "wrong bytes", set: func(f *faults) { f.corrupt = 1; f.corruptAt = 10 },
			wantErr: []error{toc.ErrDigestMismatch, toc.ErrBadChunk}, errSubstr: "chunk at",
			check: func(t *testing.T, st Stats, _ *faults) { atLeast(t, "verify failures", st.VerifyFailures, 1) }},
		{name: "5xx forever", set: func(f *faults) {
			for range 100 {
				f.statuses = append(f.statuses, 503)
			}
		}, errSubstr: "http 503",
			check: func(t *testing.T, st Stats, _ *faults) {
				if st.Retries != 4 || st.Errors == 0 {
					t.Errorf("stats %+v: want 4 retries (5 attempts) and an error", st)
				}
			}},
		{name: "403 not retried", set: func(f *faults) { f.statuses = []int{403, 403, 403} }, errSubstr: "http 403",
			check: func(t *testing.T, st Stats, _ *faults) {
				if st.Retries != 0 {
					t.Errorf("retries %d, want 0", st.Retries)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl := &faults{}
			_, host := newRegistry(t, fl.wrap)
			push(t, host, "lazy/img:v1", l)
			fl.set(tc.set)
			f := newFetcher(t, tc.opts...)
			b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
			got, err := fetchAll(context.Background(), b, chunks)
			// Whatever was delivered is right.
			for i := range got {
				if got[i] != nil && !bytes.Equal(got[i], want[i]) {
					t.Fatalf("chunk %d: wrong bytes delivered", i)
				}
			}
			if len(tc.wantErr) == 0 && tc.errSubstr == "" {
				if err != nil {
					t.Fatalf("fetch: %v", err)
				}
				for i := range got {
					if got[i] == nil {
						t.Fatalf("chunk %d not delivered", i)
					}
				}
			} else {
				if err == nil {
					t.Fatal("no error")
				}
				ok := len(tc.wantErr) == 0
				for _, w := range tc.wantErr {
					ok = ok || errors.Is(err, w)
				}
				if !ok || !strings.Contains(err.Error(), tc.errSubstr) || !strings.Contains(err.Error(), l.digest().String()) {
					t.Fatalf("error %q: want one of %v, naming the blob and %q", err, tc.wantErr, tc.errSubstr)
				}
				t.Logf("error: %v", err)
			}
			if tc.check != nil {
				tc.check(t, f.Stats(), fl)
			}
		})
	}
}

func atLeast(t *testing.T, what string, got, min int64) {
	t.Helper()
	if got < min {
		t.Errorf("%s = %d, want ≥ %d", what, got, min)
	}
}

// The overall deadline bounds retries even when attempts remain.
func TestRetryDeadline(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	fl.set(func(f *faults) {
		for range 1000 {
			f.statuses = append(f.statuses, 503)
		}
	})
	f := New(WithRetry(1000, 20*time.Millisecond, 300*time.Millisecond))
	defer f.Close()
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	_, err := fetchAll(context.Background(), b, l.res.TOC.Chunks[:1])
	if err == nil || !strings.Contains(err.Error(), "gave up") {
		t.Fatalf("err = %v", err)
	}
	if n := fl.blobGets.Load(); n >= 100 {
		t.Errorf("%d attempts: the deadline did not stop the retries", n)
	}
}

// A cancelled context stops a fetch blocked on a slow registry.
func TestCancel(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	fl.set(func(f *faults) { f.gate = make(chan struct{}) }) // never opens
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := fetchAll(ctx, b, l.res.TOC.Chunks)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

// An error from the callback stops the fetch and is returned as is.
func TestCallbackError(t *testing.T) {
	l := allTypesLayer(t)
	_, host := newRegistry(t, nil)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	boom := errors.New("boom")
	err := b.FetchChunks(context.Background(), l.res.TOC.Chunks, func(int, []byte) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if st := f.Stats(); st.Retries != 0 {
		t.Errorf("callback error retried: %+v", st)
	}
	// The fetcher is still usable and nothing is left in flight.
	if _, err := fetchAll(context.Background(), b, l.res.TOC.Chunks); err != nil {
		t.Fatal(err)
	}
}

// Bytes that decode but do not hash to the TOC's digest are an error naming
// blob, offset and both digests; the callback never sees them.
func TestDigestMismatch(t *testing.T) {
	l := allTypesLayer(t)
	_, host := newRegistry(t, nil)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	c := l.res.TOC.Chunks[4]
	c.Sum[0] ^= 1
	called := false
	err := b.FetchChunks(context.Background(), []toc.Chunk{c}, func(int, []byte) error { called = true; return nil })
	if !errors.Is(err, toc.ErrDigestMismatch) || called {
		t.Fatalf("err = %v, callback called = %v", err, called)
	}
	for _, s := range []string{l.digest().String(), "chunk at", "got", "want"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if st := f.Stats(); st.VerifyFailures != 1 || st.Retries != 0 {
		t.Errorf("stats %+v", st)
	}
}
