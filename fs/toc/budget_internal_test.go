package toc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// TestTOCDecodeBudget: TOC decodes share one memory budget (by
// decompressed bytes); a decode that cannot get its share waits, and gives
// up when its context ends.
func TestTOCDecodeBudget(t *testing.T) {
	raw := (&TOC{Entries: []Entry{{Name: "d", Type: '5'}}}).Marshal()
	enc, _ := zstd.NewWriter(nil)
	payload := enc.EncodeAll(raw, nil)
	enc.Close()
	d := digest.FromBytes(payload)
	if !tocBudget.TryAcquire(TOCDecodeBudget) {
		t.Fatal("budget in use")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := decodeTOC(ctx, payload, d)
	tocBudget.Release(TOCDecodeBudget)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("decode with the budget spent: err %v, want DeadlineExceeded", err)
	}
	if _, err := decodeTOC(context.Background(), payload, d); err != nil {
		t.Fatalf("decode after the budget was released: %v", err)
	}
	if got := tocLimit(len(payload)); got < int64(len(raw)) || got > MaxTOCSize {
		t.Fatalf("limit %d for a toc of %d bytes", got, len(raw))
	}
}
