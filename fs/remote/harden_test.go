package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
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
