package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// allocated runs fn and returns the bytes it allocated on the heap.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// lyingRanges answers every blob GET with 206 for exactly the range asked,
// a few bytes of body, then the end of the connection: the frame buffer is
// sized from the request before any byte is checked.
func lyingRanges(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isBlobGet(r) {
			next.ServeHTTP(w, r)
			return
		}
		var first, last int64
		if _, err := fmtSscanRange(r.Header.Get("Range"), &first, &last); err != nil {
			http.Error(w, "no range", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Range", "bytes "+strconv.FormatInt(first, 10)+"-"+strconv.FormatInt(last, 10)+"/*")
		w.Header().Set("Content-Length", strconv.FormatInt(last-first+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write([]byte("not a zstd frame at all"))
	})
}

// TestHugeCompressedSizeNoAllocation: a chunk whose claimed compressed size
// is beyond the zstd bound of its size is refused by FetchChunks before a
// request is sent or a buffer of that size allocated.
func TestHugeCompressedSizeNoAllocation(t *testing.T) {
	_, host := newRegistry(t, lyingRanges)
	f := newFetcher(t, WithRetry(1, time.Millisecond, time.Second))
	l := allTypesLayer(t)
	b := f.Blob(repoOf(t, host, "hostile/huge"), l.digest(), 1<<40) // the descriptor's size is a lie too
	c := toc.Chunk{Offset: 4096, CompressedOffset: 0, Size: 4096, CompressedSize: 512 << 20}
	var err error
	n := allocated(func() {
		err = b.FetchChunks(context.Background(), []toc.Chunk{c}, func(int, []byte) error { return nil })
	})
	if !errors.Is(err, ErrBadChunkRequest) {
		t.Errorf("err %v, want ErrBadChunkRequest", err)
	}
	if n > 64<<20 {
		t.Errorf("FetchChunks allocated %d MiB for a 4 KiB chunk", n>>20)
	}
	if st := f.Stats(); st.Requests != 0 {
		t.Errorf("%d requests sent for a chunk refused by its TOC entry", st.Requests)
	}
}

func fmtSscanRange(s string, first, last *int64) (int, error) {
	return fmt.Sscanf(s, "bytes=%d-%d", first, last)
}

// TestTOCDecodedOnce: concurrent TOC reads of one layer share one fetch and
// one decode; a caller that gives up returns at once without failing the others.
func TestTOCDecodedOnce(t *testing.T) {
	fl := &faults{gate: make(chan struct{})}
	_, host := newRegistry(t, fl.wrap)
	l := allTypesLayer(t)
	ref := push(t, host, "harden/toc:once", l)
	f := newFetcher(t)
	ctx := context.Background()
	img, err := f.Resolve(ctx, ref.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := f.LayerBlob(img, 0)
	const n = 8
	var wg sync.WaitGroup
	tocs := make([]*toc.TOC, n)
	errs := make([]error, n)
	started := make(chan struct{}, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started <- struct{}{}
			tocs[i], errs[i] = b.TOC(ctx, img.Layers[0].Annotations)
		}()
	}
	for range n {
		<-started
	}
	// A caller that gives up while the fetch is held.
	cctx, cancel := context.WithCancel(ctx)
	cancelled := make(chan error, 1)
	go func() { _, err := b.TOC(cctx, img.Layers[0].Annotations); cancelled <- err }()
	for fl.blobGets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let every caller reach the shared call
	cancel()
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller: err %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled caller still waiting")
	}
	close(fl.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || tocs[i] != tocs[0] {
			t.Fatalf("caller %d: %v (toc %p, first %p)", i, errs[i], tocs[i], tocs[0])
		}
	}
	if got := fl.blobGets.Load(); got != 1 {
		t.Errorf("%d concurrent TOC reads sent %d blob requests, want 1", n, got)
	}
}
