package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

// poisonChunk replaces ref's last layer with a copy in which one byte of
// chunk n of file path is flipped. The TOC still verifies, so the layer is
// mounted lazily; the chunk does not.
func poisonChunk(t *testing.T, ref, path string, n int) {
	t.Helper()
	editLastLayer(t, ref, func(r name.Reference, ld map[string]any) {
		h, err := v1.NewHash(ld["digest"].(string))
		if err != nil {
			t.Fatal(err)
		}
		l, err := remote.Layer(r.Context().Digest(h.String()))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		tc, _, err := toc.ReadTOC(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
		if err != nil {
			t.Fatal(err)
		}
		var chunk *toc.Chunk
		for i := range tc.Entries {
			if e := &tc.Entries[i]; e.Name == path {
				cs := tc.EntryChunks(e)
				if len(cs) <= n {
					t.Fatalf("%s has %d chunks", path, len(cs))
				}
				chunk = &cs[n]
			}
		}
		if chunk == nil {
			t.Fatalf("%s not in the TOC", path)
		}
		blob[chunk.CompressedOffset+int64(chunk.CompressedSize)/2] ^= 0xff
		bad := static.NewLayer(blob, types.MediaType(ld["mediaType"].(string)))
		if err := remote.WriteLayer(r.Context(), bad); err != nil {
			t.Fatal(err)
		}
		d, _ := bad.Digest()
		ld["digest"] = d.String()
	})
}

// TestCorruptChunkIsEIO: in a container over a lazy layer, a chunk whose
// bytes do not match the TOC is an I/O error for the reads that need it,
// and only those: the rest of the file and other files read correctly.
func TestCorruptChunkIsEIO(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	poisoned := toctest.Random(11, 1<<20)
	fine := toctest.Random(12, 200<<10)
	push(t, r.ref("src/chunk:1"),
		busyboxLayer(t, busybox),
		layer(t, []toctest.File{dir("data/"), reg("data/poisoned", 0o644, poisoned), reg("data/fine", 0o644, fine)}))
	ref := r.ref("lazy/chunk:1")
	if _, err := convert.Image(ctx, r.ref("src/chunk:1"), ref, convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	const bad = 12 // of 16 chunks: far from the start, so the first chunks' read-ahead does not reach it
	poisonChunk(t, ref, "data/poisoned", bad)

	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})
	if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
		t.Fatal(err)
	}
	if got := d.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers: %v, want 2 (a bad chunk does not make the layer fall back)", got)
	}
	script := "busybox head -c 65536 /data/poisoned | busybox md5sum; busybox md5sum /data/fine; " +
		"busybox cat /data/poisoned > /dev/null 2>&1; echo whole=$?; " +
		fmt.Sprintf("busybox dd if=/data/poisoned bs=65536 skip=%d count=1 2>/dev/null | busybox wc -c", bad)
	out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", ref, fmt.Sprintf("chunk-%d", os.Getpid()), "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	t.Logf("container output:\n%s", out)
	for _, want := range []string{md5hex(poisoned[:65536]), md5hex(fine), "whole=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q", want)
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != "0" {
		t.Errorf("reading the corrupt chunk alone returned %s bytes, want 0 (EIO)", last)
	}
	if strings.Contains(out, md5hex(poisoned)) {
		t.Error("the corrupt file read whole with the right digest: the flipped byte was not where the test put it")
	}
}
