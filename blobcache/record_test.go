package blobcache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"
)

func chunkRecord(data []byte) []byte {
	rec := make([]byte, chunkHeaderLen+len(data))
	chunkHeader{crc: crc32c(data), k: sha256.Sum256(data)}.encode(rec)
	copy(rec[chunkHeaderLen:], data)
	return rec
}

// TestVerifyRecord checks every way a stored record can fail to be the chunk
// asked for, including another chunk's intact record of the same size (what a
// misdirected value pointer would find).
func TestVerifyRecord(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	a, _ := randomChunk(r, 4096)
	b, _ := randomChunk(r, 4096)
	ka := key(sha256.Sum256(a))
	recA, recB := chunkRecord(a), chunkRecord(b)
	flipped := bytes.Clone(recA)
	flipped[chunkHeaderLen+100] ^= 1
	badMagic := bytes.Clone(recA)
	badMagic[0] = 'X'
	for _, v := range []Verify{VerifyCRC32C, VerifySHA256} {
		c := &Badger{cfg: config{verify: v}}
		got, err := c.verifyRecord(ka, int64(len(a)), recA, nil)
		if err != nil || !bytes.Equal(got, a) {
			t.Fatalf("verify %d: intact record: %v", v, err)
		}
		for name, tc := range map[string]struct {
			rec  []byte
			size int64
		}{
			"other chunk's record": {recB, int64(len(b))},
			"flipped byte":         {flipped, int64(len(a))},
			"bad magic":            {badMagic, int64(len(a))},
			"truncated":            {recA[:len(recA)-1], int64(len(a))},
			"empty":                {nil, int64(len(a))},
			"size differs":         {recA, int64(len(a)) + 1},
		} {
			if got, err := c.verifyRecord(ka, tc.size, tc.rec, nil); err == nil {
				t.Errorf("verify %d: %s accepted (%d bytes)", v, name, len(got))
			}
		}
	}
}

func FuzzDecodeChunkRecord(f *testing.F) {
	f.Add(chunkRecord([]byte("hello, chunk")))
	f.Add(chunkRecord(nil))
	f.Add([]byte{chunkMagic, chunkVersion, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		h, payload, err := decodeChunkRecord(rec)
		if err != nil {
			if !errors.Is(err, errCorruptRecord) {
				t.Fatalf("error %v does not wrap errCorruptRecord", err)
			}
			return
		}
		// A record that decodes re-encodes to the same bytes.
		again := make([]byte, chunkHeaderLen+len(payload))
		h.encode(again)
		copy(again[chunkHeaderLen:], payload)
		if !bytes.Equal(again, rec) {
			t.Fatalf("decode/encode round trip differs")
		}
		// And verification never accepts a payload that does not hash to the key.
		c := &Badger{cfg: config{verify: VerifySHA256}}
		if out, err := c.verifyRecord(h.k, int64(len(payload)), rec, nil); err == nil && key(sha256.Sum256(out)) != h.k {
			t.Fatal("verified payload does not hash to its key")
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add(meta{size: 1 << 20, atime: 1700000000000000000}.encode())
	f.Add(meta{}.encode())
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			if !errors.Is(err, errCorruptRecord) {
				t.Fatalf("error %v does not wrap errCorruptRecord", err)
			}
			return
		}
		if m.size < 0 || m.size > MaxChunkSize {
			t.Fatalf("decoded size %d out of range", m.size)
		}
		if !bytes.Equal(m.encode(), b) {
			t.Fatal("decode/encode round trip differs")
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	f.Add("sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	f.Add("sha256:../../etc/passwd")
	f.Add("sha512:abc")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := parseDigest(digestOf(s))
		if err != nil {
			if !errors.Is(err, ErrInvalidDigest) {
				t.Fatalf("error %v does not wrap ErrInvalidDigest", err)
			}
			return
		}
		if string(k.digest()) != s {
			t.Fatalf("parse(%q) round-trips to %q", s, k.digest())
		}
	})
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }
