package toc_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestVerify: an honest converted blob verifies; a blob whose TOC lies about
// the tar (metadata, chunk bytes, chunk placement) is refused.
func TestVerify(t *testing.T) {
	tarball := toctest.Tar(t, toctest.AllTypes(20<<10))
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(toc.MinChunkSize))
	ctx := context.Background()
	tc, diffID, err := toc.Verify(ctx, bytes.NewReader(blob), int64(len(blob)), &res.Location)
	if err != nil || diffID != res.DiffID || len(tc.Entries) != len(res.TOC.Entries) {
		t.Fatalf("honest blob: %v (diffID %s, want %s)", err, diffID, res.DiffID)
	}
	if _, _, err := toc.Verify(ctx, bytes.NewReader(blob), int64(len(blob)), nil); err != nil {
		t.Fatalf("honest blob through the footer: %v", err)
	}
	lies := map[string]func(*toc.TOC){
		"setuid added": func(tc *toc.TOC) {
			for i := range tc.Entries {
				if tc.Entries[i].Name == "etc/hostname" {
					tc.Entries[i].Mode |= 0o4000
				}
			}
		},
		"renamed": func(tc *toc.TOC) {
			for i := range tc.Entries {
				if tc.Entries[i].Name == "etc/hostname" {
					tc.Entries[i].Name = "etc/hostnamf"
				}
			}
		},
		"chunk sum":       func(tc *toc.TOC) { tc.Chunks[0].Sum[0] ^= 1 },
		"frame cut short": func(tc *toc.TOC) { tc.Chunks[0].CompressedSize-- },
	}
	for name, lie := range lies {
		bad, loc := toctest.Relabel(t, blob, res, lie)
		if _, _, err := toc.ReadTOC(ctx, bytes.NewReader(bad), int64(len(bad)), &loc); err != nil {
			t.Fatalf("%s: the lying toc does not even read: %v", name, err)
		}
		if _, _, err := toc.Verify(ctx, bytes.NewReader(bad), int64(len(bad)), &loc); !errors.Is(err, toc.ErrTOCMismatch) {
			t.Errorf("%s: err %v, want ErrTOCMismatch", name, err)
		}
	}
}
