package blobcache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
)

// TestOpenRefusesCapacityAboveFreeSpace: a cache that cannot fit its
// filesystem is refused at Open with a message naming the directory, the
// capacity and the free space, before badger creates any file.
func TestOpenRefusesCapacityAboveFreeSpace(t *testing.T) {
	dir := filepath.Join(blobcachetest.Tmpfs(t, 96<<20), "cache")
	_, err := blobcache.Open(dir, blobcache.WithCapacity(1<<30))
	if !errors.Is(err, blobcache.ErrNoSpace) {
		t.Fatalf("Open of a 1 GiB cache on a 96 MiB tmpfs: %v, want ErrNoSpace", err)
	}
	for _, want := range []string{dir, "capacity 1.0 GiB", "96.0 MiB", "free"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused Open left %d files in %s", len(ents), dir)
	}
	// A capacity that fits opens.
	c, err := blobcache.Open(dir, blobcache.WithCapacity(4<<20), blobcache.WithValueLogFileSize(1<<20))
	if err != nil {
		t.Fatalf("Open of a 4 MiB cache on a 96 MiB tmpfs: %v", err)
	}
	c.Close()
}

// TestPutStopsBelowReserve: when another process fills the disk, Put stores
// nothing below the free-space reserve (no SIGBUS from badger's mmap writes),
// and caching resumes once space is freed.
func TestPutStopsBelowReserve(t *testing.T) {
	fsdir := blobcachetest.Tmpfs(t, 160<<20)
	dir := filepath.Join(fsdir, "cache")
	// Reserve: 3 × 1 MiB + 24 MiB + 16 MiB = 43 MiB.
	c, err := blobcache.Open(dir, blobcache.WithCapacity(64<<20), blobcache.WithValueLogFileSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	filler := filepath.Join(fsdir, "filler")
	blobcachetest.Fill(t, filler, 50<<20) // 7 MiB above the reserve
	var stored, refused int
	for i := range 256 { // 64 MiB of 256 KiB chunks: far more than the disk has
		data, d := blobcachetest.Chunk(uint64(i), 256<<10)
		switch err := c.Put(ctx, d, data); {
		case err == nil:
			stored++
		case errors.Is(err, blobcache.ErrNoSpace):
			refused++
		default:
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if stored == 0 || refused == 0 {
		t.Fatalf("stored %d, refused %d chunks: want some of each", stored, refused)
	}
	if s := c.Stats(); s.NoSpace != int64(refused) {
		t.Errorf("Stats.NoSpace = %d, want %d", s.NoSpace, refused)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(fsdir, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * int64(st.Bsize); free < 16<<20 {
		t.Errorf("only %d bytes left free: the cache wrote into its reserve", free)
	}
	// Space comes back: caching resumes (after the stopped guard's recheck delay).
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	data, d := blobcachetest.Chunk(1000, 256<<10)
	if err := c.Put(ctx, d, data); err != nil {
		t.Fatalf("Put after freeing space: %v", err)
	}
	if got, err := c.Get(ctx, d); err != nil || len(got) != len(data) {
		t.Fatalf("Get after freeing space: %d bytes, %v", len(got), err)
	}
}
