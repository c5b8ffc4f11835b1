package blobcache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

func openT(t *testing.T, dir string, opts ...Option) *Badger {
	t.Helper()
	c, err := Open(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func closeT(t *testing.T, c *Badger) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func chunksT(n, size int, seed uint64) ([][]byte, []digest.Digest) {
	r := rand.New(rand.NewPCG(seed, 1))
	data := make([][]byte, n)
	ds := make([]digest.Digest, n)
	for i := range n {
		data[i], ds[i] = randomChunk(r, size)
	}
	return data, ds
}

func presentT(t *testing.T, c Cache, ds []digest.Digest) string {
	t.Helper()
	var sb strings.Builder
	for _, d := range ds {
		ok, err := c.Has(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		sb.WriteByte("01"[btoi(ok)])
	}
	return sb.String()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReopenKeepsLRUOrder checks that entries, sizes and the recency order
// survive Close and Open.
func TestReopenKeepsLRUOrder(t *testing.T) {
	const size = 8 << 10
	dir := t.TempDir()
	ctx := context.Background()
	data, ds := chunksT(10, size, 1)
	c := openT(t, dir, WithCapacity(8*size))
	for i := range 8 {
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 2} { // A and C become the most recently used
		if _, err := c.Get(ctx, ds[i]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, c)

	c = openT(t, dir, WithCapacity(8*size))
	if s := c.Stats(); s.Entries != 8 || s.Size != 8*size {
		t.Fatalf("after reopen: %+v", s)
	}
	for i := 8; i < 10; i++ { // evicts B and D, the least recently used
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := presentT(t, c, ds), "1010111111"; got != want {
		t.Fatalf("present A..J = %s, want %s", got, want)
	}
	for i, d := range ds {
		if got, err := c.Get(ctx, d); err == nil && !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d: wrong bytes after reopen", i)
		}
	}
	closeT(t, c)

	// A smaller capacity on the next Open evicts the oldest down to it.
	c = openT(t, dir, WithCapacity(4*size))
	if got, want := presentT(t, c, ds), "0000001111"; got != want {
		t.Fatalf("reopened with half the capacity: present A..J = %s, want %s", got, want)
	}
	if s := c.Stats(); s.Size != 4*size || s.Evictions != 4 {
		t.Fatalf("after shrinking: %+v", s)
	}
}

// TestAccessTimesSavedPeriodically checks that the background goroutine
// persists recency without a Close (what a crash would leave behind).
func TestAccessTimesSavedPeriodically(t *testing.T) {
	const size = 4 << 10
	c := openT(t, t.TempDir(), WithCapacity(4*size))
	ctx := context.Background()
	data, ds := chunksT(2, size, 2)
	for i := range ds {
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Get(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.saveAccessTimes(); err != nil {
		t.Fatal(err)
	}
	k0, _ := parseDigest(ds[0])
	k1, _ := parseDigest(ds[1])
	var m0, m1 meta
	err := c.db.View(func(txn *badger.Txn) error {
		for _, x := range []struct {
			k key
			m *meta
		}{{k0, &m0}, {k1, &m1}} {
			item, err := txn.Get(dbKey(prefixMeta, x.k))
			if err != nil {
				return err
			}
			if err := item.Value(func(v []byte) (err error) { *x.m, err = decodeMeta(v); return err }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if m0.atime <= m1.atime || m0.size != size {
		t.Fatalf("saved meta: A %+v, B %+v; A was used last", m0, m1)
	}
}

// corruptFiles flips one byte of every copy of needle found in the files of
// dir and its subdirectories (segments), writing just that byte (safe while
// badger has the file mapped).
func corruptFiles(t *testing.T, dir string, needle []byte, off int) int {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; {
			j := bytes.Index(b[i:], needle)
			if j < 0 {
				break
			}
			at := i + j + off
			if _, err := f.WriteAt([]byte{b[at] ^ 0x40}, int64(at)); err != nil {
				t.Fatal(err)
			}
			i += j + len(needle)
			n++
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestCorruptChunkIsDropped damages stored bytes on disk and checks that Get
// reports a miss, counts and deletes the chunk, and never serves the damage.
func TestCorruptChunkIsDropped(t *testing.T) {
	for _, v := range []struct {
		name   string
		verify Verify
	}{{"crc32c", VerifyCRC32C}, {"sha256", VerifySHA256}} {
		for _, tc := range []struct {
			name string
			size int  // below valueThreshold: in the LSM tree; above: in the value log; from DefaultSegmentThreshold: in a segment file
			open bool // damage while the cache is open, else while closed
			// loseNext: damage in the value log's tail while closed makes
			// badger truncate the log there on Open, taking later chunks too.
			loseNext bool
		}{
			{"lsm-closed", 100, false, false},
			{"vlog-open", 2 << 10, true, false},
			{"vlog-closed", 2 << 10, false, true},
			{"segment-open", 256 << 10, true, false},
			{"segment-closed", 256 << 10, false, false},
		} {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				ctx := context.Background()
				data, ds := chunksT(2, tc.size, uint64(tc.size))
				var logs bytes.Buffer
				opts := []Option{WithCapacity(1 << 20), WithVerify(v.verify),
					WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))}
				c := openT(t, dir, opts...)
				for i := range ds {
					if err := c.Put(ctx, ds[i], data[i]); err != nil {
						t.Fatal(err)
					}
				}
				if !tc.open {
					closeT(t, c)
				}
				if n := corruptFiles(t, dir, data[0][:32], tc.size/2); n == 0 {
					t.Fatal("chunk bytes not found on disk")
				}
				if !tc.open {
					c = openT(t, dir, opts...)
				}
				if tc.loseNext {
					// New chunks of the same size: had badger reused the
					// truncated offsets (it starts a new file instead), the
					// lost chunks' stale value pointers would now point at
					// other chunks' intact records.
					more, mds := chunksT(3, tc.size, 77)
					for i := range mds {
						if err := c.Put(ctx, mds[i], more[i]); err != nil {
							t.Fatal(err)
						}
					}
				}
				got, err := c.Get(ctx, ds[0])
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Get(corrupt) = %d bytes (equal: %v), %v; want ErrNotFound", len(got), bytes.Equal(got, data[0]), err)
				}
				if ok, _ := c.Has(ctx, ds[0]); ok {
					t.Fatal("corrupt chunk still listed")
				}
				if s := c.Stats(); s.Corrupt != 1 || s.Misses != 1 || s.Entries != int64(1+3*btoi(tc.loseNext)) {
					t.Fatalf("stats: %+v", s)
				}
				if !strings.Contains(logs.String(), "corrupt chunk") {
					t.Errorf("no warning logged: %q", logs.String())
				}
				got, err = c.Get(ctx, ds[1])
				switch {
				case err == nil && !bytes.Equal(got, data[1]):
					t.Fatal("served wrong bytes for the other chunk")
				case err != nil && !(tc.loseNext && errors.Is(err, ErrNotFound)):
					t.Fatalf("other chunk: %v", err)
				}
				if err := c.Put(ctx, ds[0], data[0]); err != nil { // can be fetched again
					t.Fatal(err)
				}
				if got, err := c.Get(ctx, ds[0]); err != nil || !bytes.Equal(got, data[0]) {
					t.Fatalf("re-put chunk: %v", err)
				}
				closeT(t, c)
				// Badger truncates the value log's last file at the damaged entry
				// on the next Open, so later chunks in that file may be gone: they
				// must then be misses, never wrong bytes.
				c = openT(t, dir, opts...)
				for i, d := range ds {
					if got, err := c.Get(ctx, d); err == nil && !bytes.Equal(got, data[i]) || err != nil && !errors.Is(err, ErrNotFound) {
						t.Fatalf("chunk %d after reopen: %d bytes, %v", i, len(got), err)
					}
					if err := c.Put(ctx, d, data[i]); err != nil {
						t.Fatal(err)
					}
					if got, err := c.Get(ctx, d); err != nil || !bytes.Equal(got, data[i]) {
						t.Fatalf("chunk %d put again after reopen: %v", i, err)
					}
				}
			})
		}
	}
}

// TestCorruptRecordsDroppedOnOpen writes records that break the cache's
// invariants directly into badger and checks that Open removes them.
func TestCorruptRecordsDroppedOnOpen(t *testing.T) {
	dir := t.TempDir()
	data, ds := chunksT(4, 1000, 3)
	c := openT(t, dir, WithCapacity(1<<20))
	for i := range ds {
		if err := c.Put(context.Background(), ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, c)
	ks := make([]key, len(ds))
	for i, d := range ds {
		ks[i], _ = parseDigest(d)
	}
	db, err := badger.Open(badgerOptions(dir, newConfig(nil, 1<<20), minVlogFile))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		return errors.Join(
			txn.Delete(dbKey(prefixMeta, ks[0])),              // chunk without meta
			txn.Delete(dbKey(prefixChunk, ks[1])),             // meta without chunk
			txn.Set(dbKey(prefixMeta, ks[2]), []byte("junk")), // undecodable meta
		)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	c = openT(t, dir, WithCapacity(1<<20))
	if got, want := presentT(t, c, ds), "0001"; got != want {
		t.Fatalf("present = %s, want %s", got, want)
	}
	if s := c.Stats(); s.Entries != 1 || s.Size != 1000 {
		t.Fatalf("stats: %+v", s)
	}
	var left int
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := it.Item().Key(); len(k) == keyLen && (k[0] == prefixChunk || k[0] == prefixMeta) {
				left++
			}
		}
		return nil
	})
	if err != nil || left != 2 {
		t.Fatalf("%d records left (want 2: one chunk, one meta): %v", left, err)
	}
}

func TestOpenTwiceFails(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir, WithCapacity(1<<20))
	c, err := Open(dir, WithCapacity(1<<20))
	if err == nil {
		c.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

// TestOpenAfterCrashLeftEmptyLogs reproduces what SIGKILL between creating a
// write-ahead or value-log file and sizing it leaves behind (found by
// TestCrashSafety): zero-length .mem and .vlog files. Open must succeed.
func TestOpenAfterCrashLeftEmptyLogs(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	data, ds := chunksT(3, 8<<10, 4)
	c := openT(t, dir, WithCapacity(1<<20))
	for i := range ds {
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, c)
	for _, name := range []string{"00099.mem", "000099.vlog"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c = openT(t, dir, WithCapacity(1<<20))
	for i, d := range ds {
		if got, err := c.Get(ctx, d); err != nil || !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d after reopen: %v", i, err)
		}
	}
}

func TestOpenRejectsBadCapacity(t *testing.T) {
	if _, err := Open(t.TempDir(), WithCapacity(0)); err == nil {
		t.Fatal("Open with capacity 0 succeeded")
	}
	if _, err := Open("", WithCapacity(1<<20)); err == nil {
		t.Fatal("Open of an empty path succeeded")
	}
}

// TestBadgerLogger checks that badger's info chatter is dropped and its
// warnings and errors reach slog.
func TestBadgerLogger(t *testing.T) {
	var buf bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Infof("Replaying file id: %d\n", 1)
	l.Debugf("noise")
	l.Warningf("value log %s: truncated\n", "000001.vlog")
	l.Errorf("compaction failed: %v", errors.New("boom"))
	out := buf.String()
	if strings.Contains(out, "Replaying") || strings.Contains(out, "noise") {
		t.Errorf("info/debug forwarded: %q", out)
	}
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "000001.vlog: truncated") ||
		!strings.Contains(out, "level=ERROR") || !strings.Contains(out, "boom") {
		t.Errorf("warnings/errors not forwarded: %q", out)
	}
}

// TestRecordMissingBehindTheCachesBack checks that a chunk the index lists
// but the database lost is reported as a miss and forgotten. (Only for a
// chunk kept in badger: Get of a chunk in a segment reads the extent from the
// in-memory index, not from badger.)
func TestRecordMissingBehindTheCachesBack(t *testing.T) {
	c := openT(t, t.TempDir(), WithCapacity(1<<20))
	ctx := context.Background()
	data, ds := chunksT(1, DefaultSegmentThreshold-1, 9)
	if err := c.Put(ctx, ds[0], data[0]); err != nil {
		t.Fatal(err)
	}
	k, _ := parseDigest(ds[0])
	if err := c.db.Update(func(txn *badger.Txn) error { return txn.Delete(dbKey(prefixChunk, k)) }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, ds[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	if ok, _ := c.Has(ctx, ds[0]); ok {
		t.Fatal("lost chunk still listed")
	}
	if s := c.Stats(); s.Corrupt != 1 || s.Entries != 0 || s.Size != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestChunkSizeLimit checks that chunks up to the value-log file size (badger
// refuses larger values) are stored and evicted, and larger ones refused.
func TestChunkSizeLimit(t *testing.T) {
	ctx := context.Background()
	c := openT(t, t.TempDir(), WithCapacity(16<<20)) // VLF 8 MiB
	if c.vlogFileSize != 8<<20 {
		t.Fatalf("value-log file size %d, want 8 MiB", c.vlogFileSize)
	}
	data, ds := chunksT(3, 8<<20-chunkHeaderLen, 11)
	for i := range ds {
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := presentT(t, c, ds), "011"; got != want {
		t.Fatalf("present = %s, want %s", got, want)
	}
	for i := 1; i < 3; i++ {
		if got, err := c.Get(ctx, ds[i]); err != nil || !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	big := make([]byte, 8<<20-chunkHeaderLen+1)
	if err := c.Put(ctx, digest.FromBytes(big), big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Put above the value-log file size = %v", err)
	}

	// A small explicit file size keeps small caches tight but bounds chunks.
	c = openT(t, t.TempDir(), WithCapacity(16<<20), WithValueLogFileSize(1<<20))
	ok := make([]byte, 1<<20-chunkHeaderLen)
	if err := c.Put(ctx, digest.FromBytes(ok), ok); err != nil {
		t.Fatal(err)
	}
	big = make([]byte, 1<<20)
	if err := c.Put(ctx, digest.FromBytes(big), big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("1 MiB chunk with 1 MiB value-log files = %v", err)
	}
}

// TestBigChunkEvictsManySmall evicts more chunks than one transaction takes
// and checks they stay gone after reopen.
func TestBigChunkEvictsManySmall(t *testing.T) {
	const n, small = maxVictimsPerTxn + 44, 100
	dir := t.TempDir()
	ctx := context.Background()
	c := openT(t, dir, WithCapacity(n*small))
	data, ds := chunksT(n, small, 12)
	for i := range ds {
		if err := c.Put(ctx, ds[i], data[i]); err != nil {
			t.Fatal(err)
		}
	}
	big, bd := randomChunk(rand.New(rand.NewPCG(1, 1)), n*small)
	if err := c.Put(ctx, bd, big); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 1 || s.Evictions != n || s.Size != n*small {
		t.Fatalf("stats: %+v", s)
	}
	closeT(t, c)
	c = openT(t, dir, WithCapacity(n*small))
	if s := c.Stats(); s.Entries != 1 || s.Evictions != 0 {
		t.Fatalf("after reopen: %+v", s)
	}
	if got, err := c.Get(ctx, bd); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big chunk: %v", err)
	}
}

// PutVerifiedChecksum stores a chunk with the caller's checksum: the right
// one reads back, a wrong one makes the record fail its check on Get
// (dropped, a miss), in each place a chunk can live.
func TestPutVerifiedChecksum(t *testing.T) {
	for _, size := range []int{100, 2 << 10, 256 << 10} { // LSM tree, value log, segment
		c := openT(t, t.TempDir(), WithCapacity(4<<20))
		ctx := context.Background()
		data, ds := chunksT(2, size, uint64(size)+7)
		if err := c.PutVerifiedChecksum(ctx, ds[0], data[0], Checksum(data[0])); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Get(ctx, ds[0]); err != nil || !bytes.Equal(got, data[0]) {
			t.Fatalf("%d bytes, right checksum: Get = %d bytes, %v", size, len(got), err)
		}
		if err := c.PutVerifiedChecksum(ctx, ds[1], data[1], Checksum(data[1])^1); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Get(ctx, ds[1]); err == nil {
			t.Fatalf("%d bytes, wrong checksum: Get served %d bytes", size, len(got))
		}
		if ok, _ := c.Has(ctx, ds[1]); ok {
			t.Errorf("%d bytes: a record that failed its check is still there", size)
		}
	}
}
