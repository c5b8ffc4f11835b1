package blobcache_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
)

const benchChunk = 1 << 20

type getIntoer interface {
	blobcache.Cache
	GetInto(ctx context.Context, d digest.Digest, buf []byte) ([]byte, error)
}

// benchCaches makes each implementation under benchmark.
func benchCaches(b *testing.B) []struct {
	name string
	open func(b *testing.B, capacity int64) getIntoer
} {
	openBadger := func(v blobcache.Verify) func(*testing.B, int64) getIntoer {
		return func(b *testing.B, capacity int64) getIntoer {
			c, err := blobcache.Open(b.TempDir(), blobcache.WithCapacity(capacity), blobcache.WithVerify(v))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			return c
		}
	}
	return []struct {
		name string
		open func(b *testing.B, capacity int64) getIntoer
	}{
		{"memory", func(b *testing.B, capacity int64) getIntoer {
			return blobcache.NewMemory(blobcache.WithCapacity(capacity))
		}},
		{"badger", openBadger(blobcache.VerifyCRC32C)},
		{"badger-sha256", openBadger(blobcache.VerifySHA256)},
	}
}

func fill(b *testing.B, c blobcache.Cache, n int) []digest.Digest {
	ds := make([]digest.Digest, n)
	for i := range n {
		var data []byte
		data, ds[i] = blobcachetest.Chunk(uint64(i), benchChunk)
		if err := c.Put(context.Background(), ds[i], data); err != nil {
			b.Fatal(err)
		}
	}
	return ds
}

// BenchmarkGet measures a hit on a cached 1 MiB chunk: Get allocates the
// result, GetInto reuses the caller's buffer.
func BenchmarkGet(b *testing.B) {
	for _, impl := range benchCaches(b) {
		b.Run(impl.name, func(b *testing.B) {
			c := impl.open(b, 64*benchChunk)
			ds := fill(b, c, 16)
			ctx := context.Background()
			b.Run("Get", func(b *testing.B) {
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if _, err := c.Get(ctx, ds[i%len(ds)]); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("GetInto", func(b *testing.B) {
				buf := make([]byte, benchChunk)
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if _, err := c.GetInto(ctx, ds[i%len(ds)], buf); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("GetIntoParallel", func(b *testing.B) {
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, benchChunk)
					for pb.Next() {
						if _, err := c.GetInto(ctx, ds[next.Add(1)%int64(len(ds))], buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("GetSameParallel", func(b *testing.B) { // one hot chunk, every goroutine
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, benchChunk)
					for pb.Next() {
						if _, err := c.GetInto(ctx, ds[0], buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("Miss", func(b *testing.B) {
				_, d := blobcachetest.Chunk(1<<40, 10)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := c.Get(ctx, d); !errors.Is(err, blobcache.ErrNotFound) {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

var (
	putPoolOnce sync.Once
	putData     [][]byte
	putDigests  []digest.Digest
)

// putPool returns 512 distinct 1 MiB chunks, made once.
func putPool() ([][]byte, []digest.Digest) {
	putPoolOnce.Do(func() {
		const n = 512
		putData = make([][]byte, n)
		putDigests = make([]digest.Digest, n)
		for i := range n {
			putData[i], putDigests[i] = blobcachetest.Chunk(uint64(i), benchChunk)
		}
	})
	return putData, putDigests
}

// BenchmarkPut measures storing new 1 MiB chunks in a 256 MiB cache: sha256
// verification, the write, and (in steady state, past the first 256 Puts) the
// eviction of an old chunk and badger's value-log GC, amortised.
func BenchmarkPut(b *testing.B) {
	data, ds := putPool()
	pool := int64(len(ds))
	const capacity = 256 * benchChunk
	for _, impl := range benchCaches(b) {
		if impl.name == "badger-sha256" {
			continue // Put is the same
		}
		b.Run(impl.name, func(b *testing.B) {
			ctx := context.Background()
			b.Run("Put", func(b *testing.B) {
				c := impl.open(b, capacity)
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for i := int64(0); b.Loop(); i++ {
					if err := c.Put(ctx, ds[i%pool], data[i%pool]); err != nil {
						b.Fatal(err)
					}
				}
				if s := c.Stats(); s.Dedups != 0 {
					b.Fatalf("%d Puts were dedups", s.Dedups)
				}
			})
			b.Run("PutParallel", func(b *testing.B) {
				c := impl.open(b, capacity)
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				var next atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := next.Add(1) % pool
						if err := c.Put(ctx, ds[i], data[i]); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("PutDedup", func(b *testing.B) { // the chunk is already stored
				c := impl.open(b, capacity)
				if err := c.Put(ctx, ds[0], data[0]); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(benchChunk)
				b.ReportAllocs()
				for b.Loop() {
					if err := c.Put(ctx, ds[0], data[0]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
