package blobcache_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
)

// BenchmarkPut256K stores new 256 KiB chunks (the format's default chunk
// size) into a cache big enough to hold them all, as a cold read of a big
// file does: Put (sha256 + write) and PutVerified (write only, what package
// fs uses). MB/s is the cache's write path: 256 KiB chunks go to segment
// files (docs/blobcache.md, "Segment store"). (Before segment files, with
// the chunks in badger's value log, a batched variant, 32 chunks per
// transaction, measured 416 MB/s against PutVerified's 505 MB/s in the same
// run: badger's cost is the copy into its mmapped value log and its CRC, not
// the transaction.)
func BenchmarkPut256K(b *testing.B) {
	const chunk = 256 << 10
	const pool = 1024 // 256 MiB
	data, ds := chunkPool(pool, chunk)
	ctx := context.Background()
	open := func(b *testing.B) *blobcache.Badger {
		c, err := blobcache.Open(b.TempDir(), blobcache.WithCapacity(2<<30))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	for _, mode := range []string{"Put", "PutVerified"} {
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(chunk)
			var c *blobcache.Badger
			i := 0
			b.ResetTimer()
			for b.Loop() {
				if i%pool == 0 { // a fresh cache: every chunk is new
					b.StopTimer()
					if c != nil {
						c.Close()
					}
					c = open(b)
					b.StartTimer()
				}
				switch mode {
				case "Put":
					if err := c.Put(ctx, ds[i%pool], data[i%pool]); err != nil {
						b.Fatal(err)
					}
				case "PutVerified":
					if err := c.PutVerified(ctx, ds[i%pool], data[i%pool]); err != nil {
						b.Fatal(err)
					}
				}
				i++
			}
		})
	}
}

// BenchmarkPutBySize stores new chunks of several sizes with PutVerified,
// each size into badger's value log and into segment files: where the
// default segment threshold (4 KiB) comes from: segments are as fast at
// 1 KiB (the badger transaction dominates) and faster from 4 KiB on.
func BenchmarkPutBySize(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20} {
		pool := max(64, (64<<20)/size) // 64 MiB of distinct chunks
		data, ds := chunkPool(pool, size)
		for _, store := range []struct {
			name      string
			threshold int64
		}{{"badger", blobcache.MaxChunkSize + 1}, {"segment", 1}} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, store.name), func(b *testing.B) {
				b.SetBytes(int64(size))
				var c *blobcache.Badger
				i := 0
				for b.Loop() {
					if i%pool == 0 { // a fresh cache: every chunk is new
						b.StopTimer()
						if c != nil {
							c.Close()
						}
						var err error
						c, err = blobcache.Open(b.TempDir(), blobcache.WithCapacity(1<<30), blobcache.WithSegmentThreshold(store.threshold))
						if err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					if err := c.PutVerified(ctx, ds[i%pool], data[i%pool]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.StopTimer()
				c.Close()
			})
		}
	}
}

// BenchmarkGetBySize reads stored chunks of several sizes with GetInto (the
// FUSE read path), from badger and from segment files: the other half of the
// segment threshold's choice.
func BenchmarkGetBySize(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10} {
		const pool = 256
		data, ds := chunkPool(pool, size)
		for _, store := range []struct {
			name      string
			threshold int64
		}{{"badger", blobcache.MaxChunkSize + 1}, {"segment", 1}} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, store.name), func(b *testing.B) {
				c, err := blobcache.Open(b.TempDir(), blobcache.WithCapacity(1<<30), blobcache.WithSegmentThreshold(store.threshold))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				for i := range ds {
					if err := c.PutVerified(ctx, ds[i], data[i]); err != nil {
						b.Fatal(err)
					}
				}
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := c.GetInto(ctx, ds[i%pool], buf); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// chunkPool returns n distinct chunks of size bytes and their digests.
func chunkPool(n, size int) ([][]byte, []digest.Digest) {
	data, ds := make([][]byte, n), make([]digest.Digest, n)
	for i := range n {
		data[i], ds[i] = blobcachetest.Chunk(uint64(i), size)
	}
	return data, ds
}
