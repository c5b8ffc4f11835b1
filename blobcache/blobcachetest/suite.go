// Package blobcachetest holds the conformance suite that every
// blobcache.Cache implementation must pass.
package blobcachetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
)

// TestCache runs the conformance suite. newCache must return an empty cache
// whose capacity is capacity bytes of chunk data, and close it in t.Cleanup
// (the suite closes some caches itself: a second Close must return nil).
// Pinning is tested when the cache implements blobcache.Pinner.
func TestCache(t *testing.T, newCache func(t *testing.T, capacity int64) blobcache.Cache) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T, int64) blobcache.Cache)
	}{
		{"PutGetHas", testPutGetHas},
		{"CallerOwnsSlices", testCallerOwnsSlices},
		{"EmptyChunk", testEmptyChunk},
		{"DigestMismatch", testDigestMismatch},
		{"InvalidDigest", testInvalidDigest},
		{"Dedup", testDedup},
		{"TooLarge", testTooLarge},
		{"EvictionOrder", testEvictionOrder},
		{"PutRefreshesRecency", testPutRefreshesRecency},
		{"PinEvictedLast", testPinEvictedLast},
		{"PinBeforePut", testPinBeforePut},
		{"Stats", testStats},
		{"CanceledContext", testCanceledContext},
		{"Concurrency", testConcurrency},
		{"Close", testClose},
		{"PutVerified", testPutVerified},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newCache) })
	}
}

// Chunk returns size deterministic pseudo-random bytes for seed and their digest.
func Chunk(seed uint64, size int) ([]byte, digest.Digest) {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, uint64(size)))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b, digest.FromBytes(b)
}

const chunkSize = 4096

// verifiedPutter is the optional trusted Put of both implementations.
type verifiedPutter interface {
	PutVerified(ctx context.Context, d digest.Digest, data []byte) error
}

// testPutVerified: PutVerified stores and serves like Put, and dedups.
func testPutVerified(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	vp, ok := c.(verifiedPutter)
	if !ok {
		t.Skip("no PutVerified")
	}
	data, d := Chunk(99, chunkSize)
	if err := vp.PutVerified(context.Background(), d, data); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(context.Background(), d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get after PutVerified: %v", err)
	}
	if err := vp.PutVerified(context.Background(), d, data); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Entries != 1 || st.Size != chunkSize {
		t.Fatalf("stats after a duplicate PutVerified: %+v", st)
	}
}

func put(t *testing.T, c blobcache.Cache, data []byte, d digest.Digest) {
	t.Helper()
	if err := c.Put(context.Background(), d, data); err != nil {
		t.Fatalf("Put(%s): %v", d, err)
	}
}

func mustGet(t *testing.T, c blobcache.Cache, d digest.Digest, want []byte) {
	t.Helper()
	got, err := c.Get(context.Background(), d)
	if err != nil {
		t.Fatalf("Get(%s): %v", d, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s) returned %d bytes that differ from the %d stored", d, len(got), len(want))
	}
}

func mustMiss(t *testing.T, c blobcache.Cache, d digest.Digest) {
	t.Helper()
	got, err := c.Get(context.Background(), d)
	if !errors.Is(err, blobcache.ErrNotFound) {
		t.Fatalf("Get(%s) = %d bytes, %v; want ErrNotFound", d, len(got), err)
	}
}

func has(t *testing.T, c blobcache.Cache, d digest.Digest) bool {
	t.Helper()
	ok, err := c.Has(context.Background(), d)
	if err != nil {
		t.Fatalf("Has(%s): %v", d, err)
	}
	return ok
}

// present returns which of ds the cache holds, as a string of 1s and 0s.
func present(t *testing.T, c blobcache.Cache, ds []digest.Digest) string {
	t.Helper()
	var sb strings.Builder
	for _, d := range ds {
		if has(t, c, d) {
			sb.WriteByte('1')
		} else {
			sb.WriteByte('0')
		}
	}
	return sb.String()
}

func chunks(n int, size int) ([][]byte, []digest.Digest) {
	data := make([][]byte, n)
	ds := make([]digest.Digest, n)
	for i := range n {
		data[i], ds[i] = Chunk(uint64(i+1), size)
	}
	return data, ds
}

func testPutGetHas(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(1, chunkSize)
	_, other := Chunk(2, chunkSize)
	if has(t, c, d) {
		t.Fatal("Has before Put = true")
	}
	mustMiss(t, c, d)
	put(t, c, data, d)
	if !has(t, c, d) {
		t.Fatal("Has after Put = false")
	}
	mustGet(t, c, d, data)
	mustMiss(t, c, other)
	if has(t, c, other) {
		t.Fatal("Has(other) = true")
	}
	if gi, ok := c.(interface {
		GetInto(context.Context, digest.Digest, []byte) ([]byte, error)
	}); ok {
		buf := make([]byte, 0, 2*chunkSize)
		got, err := gi.GetInto(context.Background(), d, buf)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("GetInto = %d bytes, %v", len(got), err)
		}
		if &got[0] != &buf[:1][0] {
			t.Error("GetInto did not reuse a large enough buffer")
		}
		small := make([]byte, 10)
		got, err = gi.GetInto(context.Background(), d, small)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("GetInto(small buffer) = %d bytes, %v", len(got), err)
		}
	}
}

func testCallerOwnsSlices(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(3, chunkSize)
	orig := bytes.Clone(data)
	put(t, c, data, d)
	data[0] ^= 0xff // the cache must have kept its own copy
	got, err := c.Get(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	got[1] ^= 0xff // and handed out a copy of its own
	mustGet(t, c, d, orig)
}

func testEmptyChunk(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	d := digest.FromBytes(nil)
	put(t, c, nil, d)
	got, err := c.Get(context.Background(), d)
	if err != nil || len(got) != 0 {
		t.Fatalf("Get(empty) = %d bytes, %v", len(got), err)
	}
}

func testDigestMismatch(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(4, chunkSize)
	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 1
	err := c.Put(context.Background(), d, bad)
	if !errors.Is(err, blobcache.ErrDigestMismatch) {
		t.Fatalf("Put(wrong data) = %v, want ErrDigestMismatch", err)
	}
	if actual := digest.FromBytes(bad); !strings.Contains(err.Error(), d.Encoded()) || !strings.Contains(err.Error(), actual.Encoded()) {
		t.Errorf("error %q does not name both %s and %s", err, d, actual)
	}
	if has(t, c, d) {
		t.Fatal("chunk stored despite mismatch")
	}
	mustMiss(t, c, d)
	if s := c.Stats(); s.Entries != 0 || s.Size != 0 || s.BytesIn != 0 {
		t.Fatalf("stats after mismatch: %+v", s)
	}
	put(t, c, data, d) // the right bytes are still accepted
	mustGet(t, c, d, data)
}

// InvalidDigests are digests every implementation must reject with
// ErrInvalidDigest.
var InvalidDigests = []digest.Digest{
	"",
	"sha256",
	"sha256:",
	"sha256:abc",
	digest.Digest("sha256:" + strings.Repeat("a", 63)),
	digest.Digest("sha256:" + strings.Repeat("a", 65)),
	digest.Digest("sha256:" + strings.Repeat("A", 64)),
	digest.Digest("sha256:" + strings.Repeat("g", 64)),
	digest.Digest("sha256:../../../../etc/passwd" + strings.Repeat("0", 36)),
	digest.Digest("sha256:" + strings.Repeat("0", 63) + "/"),
	digest.Digest("sha256:" + strings.Repeat("0", 63) + "\x00"),
	digest.Digest("sha512:" + strings.Repeat("a", 128)),
	digest.Digest("sha384:" + strings.Repeat("a", 96)),
	digest.Digest("md5:" + strings.Repeat("a", 32)),
	digest.Digest(strings.Repeat("a", 64)),
	digest.Digest("SHA256:" + strings.Repeat("a", 64)),
	digest.Digest(" sha256:" + strings.Repeat("a", 63)),
}

func testInvalidDigest(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	ctx := context.Background()
	for _, d := range InvalidDigests {
		if _, err := c.Get(ctx, d); !errors.Is(err, blobcache.ErrInvalidDigest) {
			t.Errorf("Get(%q) = %v, want ErrInvalidDigest", d, err)
		}
		if err := c.Put(ctx, d, []byte("x")); !errors.Is(err, blobcache.ErrInvalidDigest) {
			t.Errorf("Put(%q) = %v, want ErrInvalidDigest", d, err)
		}
		if _, err := c.Has(ctx, d); !errors.Is(err, blobcache.ErrInvalidDigest) {
			t.Errorf("Has(%q) = %v, want ErrInvalidDigest", d, err)
		}
		if p, ok := c.(blobcache.Pinner); ok {
			p.Pin(d) // ignored, must not panic
			p.Unpin(d)
		}
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Fatalf("invalid digests stored something: %+v", s)
	}
}

func testDedup(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(5, chunkSize)
	put(t, c, data, d)
	put(t, c, bytes.Clone(data), d) // same chunk from another layer
	s := c.Stats()
	if s.Entries != 1 || s.Size != chunkSize || s.BytesIn != chunkSize || s.Puts != 1 || s.Dedups != 1 {
		t.Fatalf("after storing one chunk twice: %+v", s)
	}
	mustGet(t, c, d, data)
}

func testTooLarge(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 4*chunkSize)
	data, d := Chunk(6, 4*chunkSize+1)
	if err := c.Put(context.Background(), d, data); !errors.Is(err, blobcache.ErrTooLarge) {
		t.Fatalf("Put(chunk above capacity) = %v, want ErrTooLarge", err)
	}
	data, d = Chunk(6, 4*chunkSize) // exactly the capacity fits
	put(t, c, data, d)
	mustGet(t, c, d, data)
}

func testEvictionOrder(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 4*chunkSize)
	data, ds := chunks(6, chunkSize) // A..F
	for i := range 4 {
		put(t, c, data[i], ds[i])
	}
	mustGet(t, c, ds[0], data[0]) // A is now the most recently used
	if !has(t, c, ds[1]) {        // Has must not refresh B
		t.Fatal("B missing")
	}
	put(t, c, data[4], ds[4]) // evicts B, the least recently used
	if got, want := present(t, c, ds), "101110"; got != want {
		t.Fatalf("present A..F = %s, want %s", got, want)
	}
	mustMiss(t, c, ds[1])
	put(t, c, data[5], ds[5]) // evicts C
	if got, want := present(t, c, ds), "100111"; got != want {
		t.Fatalf("present A..F = %s, want %s", got, want)
	}
	s := c.Stats()
	if s.Evictions != 2 || s.Entries != 4 || s.Size != 4*chunkSize || s.Size > s.Capacity {
		t.Fatalf("stats: %+v", s)
	}
	// A bigger chunk evicts as many of the oldest as needed: D and A.
	big, bd := Chunk(100, 2*chunkSize)
	put(t, c, big, bd)
	if got, want := present(t, c, ds), "000011"; got != want {
		t.Fatalf("present A..F = %s, want %s", got, want)
	}
	mustGet(t, c, bd, big)
}

func testPutRefreshesRecency(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 3*chunkSize)
	data, ds := chunks(4, chunkSize)
	for i := range 3 {
		put(t, c, data[i], ds[i])
	}
	put(t, c, data[0], ds[0]) // A again: now the most recently used
	put(t, c, data[3], ds[3]) // evicts B
	if got, want := present(t, c, ds), "1011"; got != want {
		t.Fatalf("present A..D = %s, want %s", got, want)
	}
}

func testPinEvictedLast(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 4*chunkSize)
	p, ok := c.(blobcache.Pinner)
	if !ok {
		t.Skip("cache does not implement blobcache.Pinner")
	}
	data, ds := chunks(9, chunkSize) // A..I
	for i := range 4 {
		put(t, c, data[i], ds[i])
	}
	p.Pin(ds[0], ds[1]) // A and B are the oldest, but pinned
	put(t, c, data[4], ds[4])
	put(t, c, data[5], ds[5]) // evict C, D
	if got, want := present(t, c, ds), "110011000"; got != want {
		t.Fatalf("present A..I = %s, want %s", got, want)
	}
	if s := c.Stats(); s.Pinned != 2 {
		t.Fatalf("Pinned = %d, want 2", s.Pinned)
	}
	p.Pin(ds[4], ds[5]) // everything pinned: the oldest pinned (A) goes
	put(t, c, data[6], ds[6])
	if got, want := present(t, c, ds), "010011100"; got != want {
		t.Fatalf("all pinned: present A..I = %s, want %s", got, want)
	}
	// Pins are counted: B pinned twice stays pinned after one Unpin.
	p.Pin(ds[1])
	p.Unpin(ds[1])
	p.Unpin(ds[4], ds[5])     // E, F unpinned; G is the only unpinned older one
	put(t, c, data[7], ds[7]) // evicts G (unpinned, least recently used)
	if got, want := present(t, c, ds), "010011010"; got != want {
		t.Fatalf("present A..I = %s, want %s", got, want)
	}
	put(t, c, data[8], ds[8]) // evicts E or F (both unpinned before H), never B
	got := present(t, c, ds)
	if got[1] != '1' || got[8] != '1' || got[7] != '1' || strings.Count(got, "1") != 4 {
		t.Fatalf("present A..I = %s: B (pinned), H, I must stay", got)
	}
	p.Unpin(ds[1])               // B's last pin
	p.Unpin(ds[1], ds[2], ds[3]) // unbalanced or unknown: ignored
	if s := c.Stats(); s.Pinned != 0 {
		t.Fatalf("Pinned = %d after unpinning all", s.Pinned)
	}
}

func testPinBeforePut(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 2*chunkSize)
	p, ok := c.(blobcache.Pinner)
	if !ok {
		t.Skip("cache does not implement blobcache.Pinner")
	}
	data, ds := chunks(5, chunkSize)
	p.Pin(ds[0]) // a profile pins chunks before they arrive
	put(t, c, data[0], ds[0])
	for i := 1; i < 5; i++ {
		put(t, c, data[i], ds[i])
	}
	if !has(t, c, ds[0]) {
		t.Fatal("chunk pinned before Put was evicted before unpinned ones")
	}
	p.Unpin(ds[0])
}

func testStats(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	const capacity = 8 * chunkSize
	c := newCache(t, capacity)
	if s := c.Stats(); s.Capacity != capacity || s.Hits|s.Misses|s.BytesIn|s.BytesOut|s.Evictions|s.Entries|s.Size != 0 {
		t.Fatalf("fresh stats: %+v", s)
	}
	a, da := Chunk(7, chunkSize)
	b, db := Chunk(8, chunkSize/2)
	put(t, c, a, da)
	put(t, c, b, db)
	mustGet(t, c, da, a)
	mustGet(t, c, da, a)
	mustGet(t, c, db, b)
	_, dx := Chunk(9, 1)
	mustMiss(t, c, dx)
	_ = c.Put(context.Background(), dx, a) // mismatch: counts nothing
	s := c.Stats()
	want := blobcache.Stats{
		Hits: 3, Misses: 1, BytesIn: chunkSize * 3 / 2, BytesOut: chunkSize * 5 / 2,
		Puts: 2, Entries: 2, Size: chunkSize * 3 / 2, Capacity: capacity,
	}
	s.DiskSize, s.DiskLimit = 0, 0 // implementation-specific
	if s != want {
		t.Fatalf("stats:\n got %+v\nwant %+v", s, want)
	}
}

func testCanceledContext(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(10, chunkSize)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Put(ctx, d, data); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put(canceled) = %v", err)
	}
	if has(t, c, d) {
		t.Fatal("Put with a canceled context stored the chunk")
	}
	put(t, c, data, d)
	if _, err := c.Get(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get(canceled) = %v", err)
	}
}

func testConcurrency(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	const (
		nChunks  = 48
		capacity = 16 * chunkSize
		workers  = 8
		ops      = 300
	)
	c := newCache(t, capacity)
	data := make([][]byte, nChunks)
	ds := make([]digest.Digest, nChunks)
	for i := range nChunks {
		data[i], ds[i] = Chunk(uint64(1000+i), chunkSize/2+i*64)
	}
	hot, hd := Chunk(999, chunkSize)
	put(t, c, hot, hd)
	p, _ := c.(blobcache.Pinner)
	if p != nil {
		p.Pin(hd)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range ops {
				i := r.IntN(nChunks)
				var err error
				switch op := r.IntN(10); {
				case op < 4:
					err = c.Put(ctx, ds[i], data[i])
				case op < 8:
					var got []byte
					got, err = c.Get(ctx, ds[i])
					if errors.Is(err, blobcache.ErrNotFound) {
						err = nil
					} else if err == nil && !bytes.Equal(got, data[i]) {
						err = fmt.Errorf("Get(%s) returned wrong bytes", ds[i])
					}
				case op < 9:
					var got []byte
					got, err = c.Get(ctx, hd) // the same chunk from every goroutine
					if err == nil && !bytes.Equal(got, hot) {
						err = errors.New("hot chunk: wrong bytes")
					}
				default:
					_, err = c.Has(ctx, ds[i])
					if p != nil {
						p.Pin(ds[i])
						p.Unpin(ds[i])
					}
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	s := c.Stats()
	if s.Size > capacity || s.Entries < 1 {
		t.Fatalf("after concurrent use: %+v", s)
	}
	var size int64
	var n int64
	for i := range nChunks {
		if has(t, c, ds[i]) {
			mustGet(t, c, ds[i], data[i])
			size += int64(len(data[i]))
			n++
		}
	}
	if has(t, c, hd) {
		size += int64(len(hot))
		n++
	}
	if n != s.Entries || size != s.Size {
		t.Fatalf("Has finds %d chunks, %d bytes; Stats says %d, %d", n, size, s.Entries, s.Size)
	}
	if !has(t, c, hd) {
		t.Fatal("pinned hot chunk was evicted")
	}
}

func testClose(t *testing.T, newCache func(*testing.T, int64) blobcache.Cache) {
	c := newCache(t, 1<<20)
	data, d := Chunk(11, chunkSize)
	put(t, c, data, d)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := context.Background()
	if _, err := c.Get(ctx, d); !errors.Is(err, blobcache.ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if err := c.Put(ctx, d, data); !errors.Is(err, blobcache.ErrClosed) {
		t.Errorf("Put after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Has(ctx, d); !errors.Is(err, blobcache.ErrClosed) {
		t.Errorf("Has after Close = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}
