package blobcache

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"
)

// randomChunk returns n pseudo-random bytes and their digest.
func randomChunk(r *rand.Rand, n int) ([]byte, digest.Digest) {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b, key(sha256.Sum256(b)).digest()
}

// TestDiskBound writes four times the capacity through the cache and checks
// that the directory's disk use stays within Stats.DiskLimit.
func TestDiskBound(t *testing.T) {
	// Chunks of 4 KiB and more go to segment files (8 MiB, or 2 MiB, like
	// the value-log files). The hot chunks keep old segments alive; whether
	// their garbage exceeds the allowance and gets compacted depends on when
	// the background collections ran (TestSegmentEvictionAndCompaction
	// checks compaction deterministically).
	t.Run("default", func(t *testing.T) { testDiskBound(t, false) })
	t.Run("vlf-2MiB", func(t *testing.T) { testDiskBound(t, false, WithValueLogFileSize(2<<20)) })
	// Every chunk in badger's value log, as before segment files.
	t.Run("badger-only", func(t *testing.T) { testDiskBound(t, true, WithSegmentThreshold(MaxChunkSize+1)) })
	t.Run("badger-only-vlf-2MiB", func(t *testing.T) {
		testDiskBound(t, true, WithSegmentThreshold(MaxChunkSize+1), WithValueLogFileSize(2<<20))
	})
}

func testDiskBound(t *testing.T, wantRewrites bool, opts ...Option) {
	const capacity = 32 << 20
	dir := t.TempDir()
	c, err := Open(dir, append(opts, WithCapacity(capacity))...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	var written, peak int64
	var hot []digest.Digest
	for written < 4*capacity {
		n := 64<<10 + r.IntN(1<<20-64<<10+1) // 64 KiB .. 1 MiB, like file tails and full chunks
		data, d := randomChunk(r, n)
		if err := c.Put(ctx, d, data); err != nil {
			t.Fatal(err)
		}
		written += int64(n)
		if len(hot) < 8 {
			hot = append(hot, d)
		}
		for _, h := range hot { // keep a few early chunks hot: they survive and get rewritten by GC
			if _, err := c.Get(ctx, h); err != nil {
				t.Fatalf("hot chunk %s: %v", h, err)
			}
		}
		s, _ := dirSize(dir)
		peak = max(peak, s)
	}
	c.collect(ctx, true)
	s := c.Stats()
	bound := s.DiskLimit
	c.mu.Lock()
	segs, created := len(c.segs), c.lastSegID
	c.mu.Unlock()
	t.Logf("capacity %d MiB, value-log files %d MiB, written %d MiB, limit %.1f MiB; peak disk %.1f MiB, after collect %.1f MiB; size %.1f MiB, %d entries, %d evictions, %d vlog/segment rewrites, %d of %d segments left",
		capacity>>20, c.vlogFileSize>>20, written>>20, float64(bound)/(1<<20), float64(peak)/(1<<20), float64(s.DiskSize)/(1<<20), float64(s.Size)/(1<<20), s.Entries, s.Evictions, s.GCRuns, segs, created)
	if s.Size > capacity {
		t.Fatalf("Size %d above capacity %d", s.Size, capacity)
	}
	if want := int64(capacity + 6*c.vlogFileSize + capacity/64 + capacity/16 + 256*s.Entries + 16<<20); bound != want {
		t.Fatalf("DiskLimit %d, documented formula gives %d", bound, want)
	}
	if s.DiskSize > bound {
		t.Fatalf("disk use %d after collection above capacity + slack %d", s.DiskSize, bound)
	}
	if peak > bound+c.vlogFileSize {
		t.Fatalf("peak disk use %d above capacity + slack + one value-log file %d", peak, bound+c.vlogFileSize)
	}
	if wantRewrites && s.GCRuns == 0 {
		t.Fatal("no value-log or segment file was rewritten")
	}
}
