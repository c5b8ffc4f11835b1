package blobcache_test

import (
	"testing"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
)

func TestMemoryConformance(t *testing.T) {
	blobcachetest.TestCache(t, func(t *testing.T, capacity int64) blobcache.Cache {
		c := blobcache.NewMemory(blobcache.WithCapacity(capacity))
		t.Cleanup(func() { c.Close() })
		return c
	})
}

func TestBadgerConformance(t *testing.T) {
	for _, v := range []struct {
		name   string
		verify blobcache.Verify
	}{{"crc32c", blobcache.VerifyCRC32C}, {"sha256", blobcache.VerifySHA256}} {
		t.Run(v.name, func(t *testing.T) {
			blobcachetest.TestCache(t, func(t *testing.T, capacity int64) blobcache.Cache {
				c, err := blobcache.Open(t.TempDir(), blobcache.WithCapacity(capacity), blobcache.WithVerify(v.verify))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := c.Close(); err != nil {
						t.Error(err)
					}
				})
				return c
			})
		})
	}
}
