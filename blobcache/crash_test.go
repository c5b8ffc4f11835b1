package blobcache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"
)

// Environment switches that turn the test binary into the crash test's child.
const (
	envCrashDir      = "LAZYFS_BLOBCACHE_CRASH_DIR"
	envCrashCapacity = "LAZYFS_BLOBCACHE_CRASH_CAPACITY"
	envCrashSeed     = "LAZYFS_BLOBCACHE_CRASH_SEED"
	envCrashSegments = "LAZYFS_BLOBCACHE_CRASH_SEGMENT_THRESHOLD"
	envCrashMaxChunk = "LAZYFS_BLOBCACHE_CRASH_MAX_CHUNK"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envCrashDir); dir != "" {
		crashChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// crashChild Puts chunks from two goroutines until it is killed, printing each
// acknowledged digest on stdout.
func crashChild(dir string) {
	capacity, _ := strconv.ParseInt(os.Getenv(envCrashCapacity), 10, 64)
	seed, _ := strconv.ParseUint(os.Getenv(envCrashSeed), 10, 64)
	threshold, _ := strconv.ParseInt(os.Getenv(envCrashSegments), 10, 64)
	maxChunk, _ := strconv.Atoi(os.Getenv(envCrashMaxChunk))
	c, err := Open(dir, WithCapacity(capacity), WithGCInterval(20*time.Millisecond), WithSegmentThreshold(threshold))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range uint64(2) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, g))
			for {
				data, d := randomChunk(r, 1+r.IntN(maxChunk))
				if err := c.Put(context.Background(), d, data); err != nil {
					fmt.Fprintln(os.Stderr, "child put:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintln(out, d) // only after Put returned
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestCrashSafety re-executes the test binary as a child that Puts chunks
// continuously, SIGKILLs it mid-stream, reopens the directory and checks that
// every stored chunk hashes to its digest, that no acknowledged chunk was lost
// (when nothing was evicted), and that the cache works. Chunks from 4 KiB on
// go to segment files (almost all: sizes are uniform up to 1 or 4 MiB), the
// rest to badger's value log; "badger-only" keeps every chunk in badger.
func TestCrashSafety(t *testing.T) {
	kills := 3
	if testing.Short() {
		kills = 1
	}
	for _, tc := range []struct {
		name      string
		capacity  int64
		threshold int64
		maxChunk  int
	}{
		{"no-eviction", 1 << 30, DefaultSegmentThreshold, 1 << 20},
		// evictions, segment deletion and compaction, value-log GC in flight
		// when killed
		{"evicting", 16 << 20, DefaultSegmentThreshold, 1 << 20},
		{"large-no-eviction", 1 << 30, DefaultSegmentThreshold, 4 << 20},
		{"large-evicting", 32 << 20, DefaultSegmentThreshold, 4 << 20},
		{"badger-only-evicting", 16 << 20, MaxChunkSize + 1, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			acked := map[digest.Digest]bool{}
			for i := range kills {
				for _, d := range runAndKill(t, dir, tc.capacity, tc.threshold, tc.maxChunk, uint64(i)) {
					acked[d] = true
				}
				verifyAfterCrash(t, dir, tc.capacity, acked, tc.capacity >= 1<<30)
			}
		})
	}
}

// runAndKill starts the child on dir, lets it acknowledge a few dozen Puts,
// kills it at a random instant and returns the digests it acknowledged.
func runAndKill(t *testing.T, dir string, capacity, threshold int64, maxChunk int, seed uint64) []digest.Digest {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envCrashDir+"="+dir,
		envCrashCapacity+"="+strconv.FormatInt(capacity, 10),
		envCrashSegments+"="+strconv.FormatInt(threshold, 10),
		envCrashMaxChunk+"="+strconv.Itoa(maxChunk),
		envCrashSeed+"="+strconv.FormatUint(seed, 10))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 99))
	killAfter := 40 + r.IntN(40)
	sc := bufio.NewScanner(stdout)
	var acked []digest.Digest
	for sc.Scan() {
		acked = append(acked, digest.Digest(sc.Text()))
		if len(acked) == killAfter {
			time.Sleep(time.Duration(r.IntN(5000)) * time.Microsecond) // land anywhere in a Put
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}
	t.Logf("child acknowledged %d Puts before SIGKILL", len(acked))
	return acked
}

// verifyAfterCrash reopens dir and checks it.
func verifyAfterCrash(t *testing.T, dir string, capacity int64, acked map[digest.Digest]bool, noEviction bool) {
	t.Helper()
	// First, below the cache: every chunk record in the database must hold
	// exactly the bytes of its digest.
	if err := removeEmptyLogs(dir, newConfig(nil, capacity).logger); err != nil {
		t.Fatal(err)
	}
	db, err := badger.Open(badgerOptions(dir, newConfig(nil, capacity), minVlogFile))
	if err != nil {
		t.Fatalf("badger reopen after SIGKILL: %v", err)
	}
	var raw, inSegments int
	err = db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix = []byte{prefixChunk}
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var k key
			copy(k[:], it.Item().Key()[1:])
			err := it.Item().Value(func(v []byte) error {
				if isExtent(v) {
					inSegments++
					return checkExtentOnDisk(dir, k, v)
				}
				h, payload, err := decodeChunkRecord(v)
				if err != nil {
					return err
				}
				if sha256.Sum256(payload) != k || crc32c(payload) != h.crc || h.k != k {
					return fmt.Errorf("chunk %s: %d stored bytes do not match", k.digest(), len(payload))
				}
				return nil
			})
			if err != nil {
				return err
			}
			raw++
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("after SIGKILL: %v", err)
	}

	c, err := Open(dir, WithCapacity(capacity), WithVerify(VerifySHA256))
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer c.Close()
	ctx := context.Background()
	c.mu.Lock()
	var ds []digest.Digest
	for k := range c.idx.m {
		ds = append(ds, k.digest())
	}
	c.mu.Unlock()
	for _, d := range ds {
		b, err := c.Get(ctx, d)
		if err != nil {
			t.Fatalf("chunk %s listed after reopen: %v", d, err)
		}
		if digest.FromBytes(b) != d {
			t.Fatalf("chunk %s: served bytes hash to %s", d, digest.FromBytes(b))
		}
	}
	if noEviction {
		for d := range acked {
			if ok, _ := c.Has(ctx, d); !ok {
				t.Fatalf("acknowledged chunk %s lost", d)
			}
		}
	}
	s := c.Stats()
	if s.Corrupt != 0 || s.Size > capacity || s.Entries != int64(len(ds)) {
		t.Fatalf("stats after reopen: %+v", s)
	}
	t.Logf("after reopen: %d chunk records (%d in segments), %d entries, %.1f MiB; disk %.1f MiB, limit %.1f MiB",
		raw, inSegments, s.Entries, float64(s.Size)/(1<<20), float64(s.DiskSize)/(1<<20), float64(s.DiskLimit)/(1<<20))
	data, d := randomChunk(rand.New(rand.NewPCG(7, uint64(len(ds)))), 4096)
	if err := c.Put(ctx, d, data); err != nil {
		t.Fatalf("Put after reopen: %v", err)
	}
	if _, err := c.Get(ctx, d); err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
}

// checkExtentOnDisk checks, below the cache, that the extent record v of
// chunk k points at a segment record holding exactly the chunk's bytes.
func checkExtentOnDisk(dir string, k key, v []byte) error {
	x, err := decodeExtent(v)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, segDirName, segName(x.seg)))
	if err != nil {
		return fmt.Errorf("chunk %s: %w", k.digest(), err)
	}
	if x.off+segRecLen(x.size) > int64(len(b)) {
		return fmt.Errorf("chunk %s: extent %+v beyond segment of %d bytes", k.digest(), x, len(b))
	}
	rec := b[x.off : x.off+segRecLen(x.size)]
	payload := rec[segHdrLen:]
	if err := checkSegHeader(rec[:segHdrLen], x.crc, x.size, k); err != nil {
		return fmt.Errorf("chunk %s: %w", k.digest(), err)
	}
	if sha256.Sum256(payload) != k || crc32c(payload) != x.crc {
		return fmt.Errorf("chunk %s: %d bytes in segment %s do not match", k.digest(), len(payload), segName(x.seg))
	}
	return nil
}
