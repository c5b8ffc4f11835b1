package convert_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestKeptLayerVerified: a layer already in the lazyfs format is kept only
// after its TOC is checked against its tar; one whose TOC lies (a setuid
// bit the tar does not have) is refused and nothing is pushed, unless the
// caller trusts chunked layers, which the report then says.
func TestKeptLayerVerified(t *testing.T) {
	reg := newRegistry(t)
	tarball := toctest.Tar(t, toctest.AllTypes(40<<10))
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(toc.MinChunkSize))
	lying, loc := toctest.Relabel(t, blob, res, func(tc *toc.TOC) {
		for i := range tc.Entries {
			if tc.Entries[i].Name == "etc/hostname" {
				tc.Entries[i].Mode |= 0o4000
			}
		}
	})
	for _, tc := range []struct {
		tag   string
		blob  []byte
		loc   toc.Location
		trust bool
		ok    bool
		want  string
	}{
		{"honest", blob, res.Location, false, true, "verified"},
		{"lying", lying, loc, false, false, ""},
		{"lying-trusted", lying, loc, true, true, "trusted"},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			r := toc.Result{TOC: res.TOC, Location: tc.loc}
			l := newRawLayer(tc.blob, tarball, types.MediaType(toc.MediaTypeLayer))
			img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
				mutate.Addendum{Layer: l, Annotations: r.Annotations(), MediaType: types.MediaType(toc.MediaTypeLayer)})
			if err != nil {
				t.Fatal(err)
			}
			push(t, reg.ref("kept:"+tc.tag), img)
			dst := reg.ref("kept-out:" + tc.tag)
			rep, err := convert.Image(context.Background(), reg.ref("kept:"+tc.tag), dst, convert.WithTrustChunked(tc.trust))
			if !tc.ok {
				if !errors.Is(err, convert.ErrKeptLayerMismatch) || !errors.Is(err, toc.ErrTOCMismatch) {
					t.Fatalf("err %v, want ErrKeptLayerMismatch and toc.ErrTOCMismatch", err)
				}
				ref, _ := name.ParseReference(dst)
				if _, err := remote.Head(ref); err == nil {
					t.Error("a manifest was pushed for a refused layer")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			lr := rep.Images[0].Layers[0]
			if lr.Kept != "already chunked" || lr.KeptTOC != tc.want {
				t.Errorf("layer report kept %q, toc %q; want already chunked, %q", lr.Kept, lr.KeptTOC, tc.want)
			}
		})
	}
}

// TestKeptLegacySparseLayer: a layer converted before sparse maps, whose
// TOC has a sparse file without one, fails the kept-layer check with an
// error that says why and what to do.
func TestKeptLegacySparseLayer(t *testing.T) {
	reg := newRegistry(t)
	tarball := toctest.GNUSparseTar(t, "d", "-H", "posix", "--sparse-version=1.0")
	blob, res := toctest.Convert(t, tarball, toc.WithChunkSize(toc.MinChunkSize))
	legacy, loc := toctest.Relabel(t, blob, res, func(tc *toc.TOC) {
		var chunks []toc.Chunk
		for i := range tc.Entries {
			e := &tc.Entries[i]
			if e.Flags&toc.FlagSparseMap != 0 {
				e.Flags &^= toc.FlagSparseMap
				e.NumChunks = 0
				ext := *e.Ext
				ext.Sparse = nil
				e.Ext = &ext
				continue
			}
			chunks = append(chunks, res.TOC.EntryChunks(e)...)
		}
		tc.Chunks = chunks
	})
	r := toc.Result{TOC: res.TOC, Location: loc}
	l := newRawLayer(legacy, tarball, types.MediaType(toc.MediaTypeLayer))
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: l, Annotations: r.Annotations(), MediaType: types.MediaType(toc.MediaTypeLayer)})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.ref("kept:legacy-sparse"), img)
	_, err = convert.Image(context.Background(), reg.ref("kept:legacy-sparse"), reg.ref("kept-out:legacy-sparse"))
	if !errors.Is(err, convert.ErrKeptLayerMismatch) || !strings.Contains(err.Error(), "predates sparse maps") {
		t.Fatalf("err %v, want ErrKeptLayerMismatch saying the TOC predates sparse maps", err)
	}
}
