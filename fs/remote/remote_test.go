package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func TestResolveTOCAndChunks(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	ref := push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	ctx := context.Background()

	img, err := f.Resolve(ctx, ref.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 1 || !img.Layers[0].Chunked() || img.Layers[0].Digest != l.digest() {
		t.Fatalf("layers = %+v", img.Layers)
	}
	if img.Config != img.Manifest.Config.Digest || img.Digest.Hex == "" {
		t.Fatalf("config %v digest %v", img.Config, img.Digest)
	}
	// By digest: verified against the digest.
	img2, err := f.Resolve(ctx, ref.Context().Digest(img.Digest.String()).String(), nil)
	if err != nil || img2.Digest != img.Digest {
		t.Fatalf("by digest: %v %v", img2, err)
	}

	b := f.LayerBlob(img, 0)
	before := fl.blobGets.Load()
	tc, err := b.TOC(ctx, img.Layers[0].Annotations)
	if err != nil {
		t.Fatal(err)
	}
	if got := fl.blobGets.Load() - before; got != 1 {
		t.Errorf("TOC took %d blob requests, want 1", got)
	}
	if diff := cmp.Diff(l.res.TOC, tc); diff != "" {
		t.Fatalf("toc differs (-want +got):\n%s", diff)
	}

	got, err := fetchAll(ctx, b, tc.Chunks)
	if err != nil {
		t.Fatal(err)
	}
	want := l.want(t)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	// The file reassembled from fetched chunks is the original file.
	for _, e := range tc.Entries {
		if e.Name != "bin/tool" {
			continue
		}
		var file []byte
		for i := e.FirstChunk; i < e.FirstChunk+e.NumChunks; i++ {
			file = append(file, got[i]...)
		}
		if !bytes.Equal(file, l.files[2].Data) {
			t.Fatal("bin/tool differs from the original")
		}
	}
	st := f.Stats()
	if st.ChunksFetched != int64(len(tc.Chunks)) || st.BytesFetched == 0 || st.Errors != 0 {
		t.Errorf("stats %+v", st)
	}
	for _, r := range fl.rangesSeen() {
		if strings.Contains(r, ",") || !strings.HasPrefix(r, "bytes=") {
			t.Errorf("range header %q is not a single range", r)
		}
	}
}

func TestTOCFromFooter(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	tc, err := b.TOC(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Chunks) != len(l.res.TOC.Chunks) {
		t.Fatalf("%d chunks, want %d", len(tc.Chunks), len(l.res.TOC.Chunks))
	}
	// Small blob: footer and TOC come with one tail read.
	if n := fl.blobGets.Load(); n != 1 {
		t.Errorf("%d blob requests, want 1", n)
	}
	// Bad annotations are an error, not a guess.
	_, err = b.TOC(context.Background(), map[string]string{toc.AnnotationTOCOffset: "12"})
	if !errors.Is(err, toc.ErrBadTOC) {
		t.Errorf("incomplete annotations: %v", err)
	}
}

func TestReadAt(t *testing.T) {
	l := allTypesLayer(t)
	_, host := newRegistry(t, nil)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t, WithMaxRequestSize(64<<10))
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	ctx := context.Background()
	p := make([]byte, l.res.Size) // split into parallel 64 KiB requests
	n, err := b.ReadAt(ctx, p, 0)
	if err != nil || n != len(p) || !bytes.Equal(p, l.blob) {
		t.Fatalf("whole blob: n=%d err=%v equal=%v", n, err, bytes.Equal(p, l.blob))
	}
	p = make([]byte, 100)
	n, err = b.ReadAt(ctx, p, l.res.Size-40)
	if n != 40 || err == nil || !bytes.Equal(p[:40], l.blob[len(l.blob)-40:]) {
		t.Fatalf("read past end: n=%d err=%v", n, err)
	}
	if _, err := b.ReadAt(ctx, p, l.res.Size); err == nil {
		t.Fatal("read at end: no error")
	}
}

// 64 concurrent readers of one chunk cause one request.
func TestSingleflight(t *testing.T) {
	l := allTypesLayer(t)
	gate := make(chan struct{})
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	fl.set(func(f *faults) { f.gate = gate })
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	c := l.res.TOC.Chunks[3]
	want := l.want(t)[3]
	const readers = 64
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			got, err := fetchAll(context.Background(), b, []toc.Chunk{c})
			if err == nil && !bytes.Equal(got[0], want) {
				err = errors.New("wrong bytes")
			}
			errs <- err
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.Stats().ChunksShared < readers-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := fl.blobGets.Load(); n != 1 {
		t.Errorf("%d blob requests for %d readers of one chunk, want 1", n, readers)
	}
}

// A waiter whose owner gives up (context cancelled) fetches the chunk itself.
func TestSingleflightOwnerCancelled(t *testing.T) {
	l := allTypesLayer(t)
	gate := make(chan struct{})
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	fl.set(func(f *faults) { f.gate = gate })
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	c := l.res.TOC.Chunks[5]
	octx, cancel := context.WithCancel(context.Background())
	ownerDone := make(chan error, 1)
	go func() { _, err := fetchAll(octx, b, []toc.Chunk{c}); ownerDone <- err }()
	for fl.blobGets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waiterDone := make(chan error, 1)
	var got [][]byte
	go func() { var err error; got, err = fetchAll(context.Background(), b, []toc.Chunk{c}); waiterDone <- err }()
	for f.Stats().ChunksShared == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-ownerDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("owner: %v, want context.Canceled", err)
	}
	close(gate)
	if err := <-waiterDone; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if !bytes.Equal(got[0], l.want(t)[5]) {
		t.Fatal("waiter got wrong bytes")
	}
}

// Neighbouring chunks are coalesced into ceil(bytes/bound) single-range requests.
func TestCoalescing(t *testing.T) {
	const cs = 64 << 10
	block := toctest.Random(7, cs)
	data := bytes.Repeat(block, 32) // 32 chunks with identical frames: equal compressed sizes
	l := newLayer(t, []toctest.File{{Hdr: toctest.AllTypes(0)[2].Hdr, Data: data}}, cs)
	chunks := l.res.TOC.Chunks
	if len(chunks) != 32 {
		t.Fatalf("%d chunks", len(chunks))
	}
	frame := int64(chunks[0].CompressedSize)
	total := chunks[31].CompressedOffset + int64(chunks[31].CompressedSize) - chunks[0].CompressedOffset
	if total != 32*frame {
		t.Fatalf("chunks not adjacent: total %d, frame %d", total, frame)
	}
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	want := l.want(t)
	for _, k := range []int64{1, 5, 8, 32, 100} {
		t.Run(fmt.Sprintf("bound=%dframes", k), func(t *testing.T) {
			bound := k * frame
			f := newFetcher(t, WithMaxRequestSize(bound))
			b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
			before := fl.blobGets.Load()
			// Reverse order: the fetcher sorts.
			rev := make([]toc.Chunk, len(chunks))
			for i := range chunks {
				rev[i] = chunks[len(chunks)-1-i]
			}
			got, err := fetchAll(context.Background(), b, rev)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rev {
				if !bytes.Equal(got[i], want[len(chunks)-1-i]) {
					t.Fatalf("chunk %d differs", i)
				}
			}
			wantReq := (total + bound - 1) / bound
			if n := fl.blobGets.Load() - before; n != wantReq {
				t.Errorf("%d requests, want ceil(%d/%d) = %d", n, total, bound, wantReq)
			}
		})
	}
}

// Chunks of different files, separated by metadata frames, merge only within the gap bound.
func TestCoalescingGap(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	for _, tc := range []struct {
		gap     int64
		maxReqs int64
		minReqs int64
	}{{gap: 1 << 20, minReqs: 1, maxReqs: 1}, {gap: 0, minReqs: 2, maxReqs: 100}} {
		f := newFetcher(t, WithMaxGap(tc.gap), WithMaxRequestSize(64<<20))
		b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
		before := fl.blobGets.Load()
		if _, err := fetchAll(context.Background(), b, l.res.TOC.Chunks); err != nil {
			t.Fatal(err)
		}
		if n := fl.blobGets.Load() - before; n < tc.minReqs || n > tc.maxReqs {
			t.Errorf("gap %d: %d requests, want %d..%d", tc.gap, n, tc.minReqs, tc.maxReqs)
		}
	}
}

func TestPlatformIndex(t *testing.T) {
	_, host := newRegistry(t, nil)
	refs := map[string]v1.Hash{}
	for _, arch := range []string{"amd64", "arm64"} {
		l := newLayer(t, []toctest.File{{Hdr: toctest.AllTypes(0)[2].Hdr, Data: []byte("arch " + arch)}}, 64<<10)
		ref := push(t, host, "lazy/multi:"+arch, l)
		img, err := newFetcher(t).Resolve(context.Background(), ref.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		refs[arch] = img.Digest
	}
	idxRef := pushIndex(t, host, "lazy/multi:latest", refs)
	f := newFetcher(t)
	for arch, d := range refs {
		img, err := f.Resolve(context.Background(), idxRef, &v1.Platform{OS: "linux", Architecture: arch})
		if err != nil {
			t.Fatal(err)
		}
		if img.Digest != d || img.IndexDigest.Hex == "" || img.Platform.Architecture != arch {
			t.Errorf("%s: got %v (index %v), want %v", arch, img.Digest, img.IndexDigest, d)
		}
	}
	_, err := f.Resolve(context.Background(), idxRef, &v1.Platform{OS: "linux", Architecture: "s390x"})
	if !errors.Is(err, ErrNoPlatform) {
		t.Errorf("s390x: %v, want ErrNoPlatform", err)
	}
	_, err = f.Resolve(context.Background(), host+"/lazy/multi:missing", nil)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tag: %v, want ErrNotFound", err)
	}
	if st := f.Stats(); st.Retries != 0 {
		t.Errorf("404 was retried: %+v", st)
	}
}

func TestBadChunkRequest(t *testing.T) {
	f := newFetcher(t)
	b := f.Blob(repoOf(t, "127.0.0.1:1", "x/y"), v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}, 1000)
	for _, c := range []toc.Chunk{{CompressedOffset: 990, CompressedSize: 20}, {CompressedOffset: -1, CompressedSize: 1}, {CompressedSize: 0}} {
		err := b.FetchChunks(context.Background(), []toc.Chunk{c}, func(int, []byte) error { return nil })
		if !errors.Is(err, ErrBadChunkRequest) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// The same chunk twice in one call is fetched once and delivered to both indices.
func TestDuplicateChunks(t *testing.T) {
	l := allTypesLayer(t)
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	c := l.res.TOC.Chunks[2]
	got, err := fetchAll(context.Background(), b, []toc.Chunk{c, l.res.TOC.Chunks[0], c})
	if err != nil {
		t.Fatal(err)
	}
	want := l.want(t)
	if !bytes.Equal(got[0], want[2]) || !bytes.Equal(got[1], want[0]) || !bytes.Equal(got[2], want[2]) {
		t.Fatal("wrong bytes")
	}
	if st := f.Stats(); st.ChunksFetched != 2 {
		t.Errorf("chunks fetched %d, want 2", st.ChunksFetched)
	}
}

// gatedBlob pushes a layer to a registry whose blob GETs wait until gate
// is closed, and returns its blob through a fetcher of 4 request slots
// (3 for background work) that makes one request per chunk.
func gatedBlob(t *testing.T) (*layer, *faults, chan struct{}, *Blob) {
	l := allTypesLayer(t)
	gate := make(chan struct{})
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	fl.set(func(f *faults) { f.gate = gate })
	f := newFetcher(t, WithConcurrency(4), WithMaxGap(0), WithMaxRequestSize(1))
	return l, fl, gate, f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
}

// Background fetches leave a quarter of the request slots to on-demand
// reads, and chunks queued behind them are fetched by whoever asks first.
func TestBackgroundPriority(t *testing.T) {
	l, fl, gate, b := gatedBlob(t)
	chunks := l.res.TOC.Chunks
	bgDone := make(chan error, 1)
	go func() {
		_, err := fetchAll(Background(context.Background()), b, chunks)
		bgDone <- err
	}()
	waitFor(t, func() bool { return fl.inflight.Load() == 3 })
	time.Sleep(20 * time.Millisecond)
	if n := fl.inflight.Load(); n != 3 {
		t.Fatalf("background holds %d of 4 slots, want 3", n)
	}
	// The last chunk is queued behind the background fetch; an on-demand
	// read of it starts at once in the reserved slot.
	last := chunks[len(chunks)-1]
	fgDone := make(chan error, 1)
	go func() {
		got, err := fetchAll(context.Background(), b, []toc.Chunk{last})
		if err == nil && !bytes.Equal(got[0], l.want(t)[len(chunks)-1]) {
			err = errors.New("wrong bytes")
		}
		fgDone <- err
	}()
	waitFor(t, func() bool { return fl.inflight.Load() == 4 })
	want := fmt.Sprintf("bytes=%d-", last.CompressedOffset)
	found := false
	for _, r := range fl.rangesSeen() {
		found = found || strings.HasPrefix(r, want)
	}
	if !found {
		t.Errorf("on-demand read of the last chunk not sent while background work was queued; ranges %v", fl.rangesSeen())
	}
	close(gate)
	if err := <-fgDone; err != nil {
		t.Fatal(err)
	}
	if err := <-bgDone; err != nil {
		t.Fatal(err)
	}
}

// FetchChunksClaimed claims each chunk only when its request has a slot:
// background runs queued behind others claim nothing, and a chunk the
// caller declines by then is neither requested nor delivered, and is no
// error.
func TestFetchChunksClaimedAtSlot(t *testing.T) {
	l, fl, gate, b := gatedBlob(t)
	chunks := l.res.TOC.Chunks
	var mu sync.Mutex
	claims := map[int]int{}
	decline := -1
	claim := func(i int) bool {
		mu.Lock()
		defer mu.Unlock()
		claims[i]++
		return i != decline
	}
	delivered := make([]atomic.Int64, len(chunks))
	want := l.want(t)
	done := make(chan error, 1)
	go func() {
		done <- b.FetchChunksClaimed(Background(context.Background()), chunks, claim, nil, func(i int, data []byte, _ bool) error {
			if !bytes.Equal(data, want[i]) {
				return fmt.Errorf("chunk %d: wrong bytes", i)
			}
			delivered[i].Add(1)
			return nil
		})
	}()
	waitFor(t, func() bool { return fl.inflight.Load() == 3 })
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	claimedEarly := len(claims)
	for i := len(chunks) - 1; i >= 0 && decline < 0; i-- {
		if claims[i] == 0 {
			decline = i
		}
	}
	mu.Unlock()
	close(gate)
	if claimedEarly != 3 {
		<-done
		t.Fatalf("%d chunks claimed while 3 requests had slots: runs waiting for a slot claimed theirs", claimedEarly)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		n := delivered[i].Load()
		switch {
		case claims[i] != 1:
			t.Errorf("chunk %d claimed %d times", i, claims[i])
		case i == decline && n != 0:
			t.Errorf("declined chunk %d delivered", i)
		case i != decline && n != 1:
			t.Errorf("chunk %d delivered %d times", i, n)
		}
	}
	skipped := fmt.Sprintf("bytes=%d-", chunks[decline].CompressedOffset)
	for _, r := range fl.rangesSeen() {
		if strings.HasPrefix(r, skipped) {
			t.Errorf("declined chunk %d requested: %s", decline, r)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// FetchChunksOwned decodes into the caller's buffers and gives one to the
// caller only when nothing else uses it: a chunk asked for twice in one call,
// or joined by another caller, is delivered with own false.
func TestFetchChunksOwned(t *testing.T) {
	l := allTypesLayer(t)
	gate := make(chan struct{})
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	want := l.want(t)
	cs := l.res.TOC.Chunks
	type got struct {
		data []byte
		own  bool
	}
	var mu sync.Mutex
	gave := map[*byte]bool{} // first bytes of the buffers get returned
	get := func(n int) []byte {
		b := make([]byte, 0, n+1)
		mu.Lock()
		gave[&b[:1][0]] = true
		mu.Unlock()
		return b
	}
	fetch := func(ctx context.Context, chunks []toc.Chunk) (map[int]got, error) {
		out := map[int]got{}
		err := b.FetchChunksOwned(ctx, chunks, get, func(i int, data []byte, own bool) error {
			mu.Lock()
			defer mu.Unlock()
			if !own {
				data = bytes.Clone(data)
			} else if !gave[&data[0]] {
				t.Errorf("chunk %d: owned data is not a buffer from get", i)
			}
			out[i] = got{data, own}
			return nil
		})
		return out, err
	}

	res, err := fetch(context.Background(), []toc.Chunk{cs[1], cs[2], cs[1]})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []int{1, 2, 1} {
		if !bytes.Equal(res[i].data, want[k]) {
			t.Fatalf("index %d: wrong bytes", i)
		}
	}
	if res[0].own || res[2].own || !res[1].own {
		t.Errorf("own = %v %v %v, want false true false (chunk 1 is asked for twice)", res[0].own, res[1].own, res[2].own)
	}

	// A second caller joins the first one's fetch of chunk 4: neither may
	// keep a buffer the other reads.
	fl.set(func(f *faults) { f.gate = gate })
	first := make(chan map[int]got, 1)
	go func() { r, _ := fetch(context.Background(), []toc.Chunk{cs[4]}); first <- r }()
	for fl.blobGets.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan map[int]got, 1)
	go func() { r, _ := fetch(context.Background(), []toc.Chunk{cs[4]}); second <- r }()
	for f.Stats().ChunksShared == 0 {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	for _, r := range []map[int]got{<-first, <-second} {
		if !bytes.Equal(r[0].data, want[4]) {
			t.Fatal("shared chunk: wrong bytes")
		}
		if r[0].own {
			t.Error("a shared chunk was delivered as owned")
		}
	}
}
