package remote

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

var benchSize = flag.Int64("remote.benchsize", 1<<30, "uncompressed size of the sequential-fetch benchmark layer")

// benchBlob is a converted layer on disk, cached in the temp dir across runs.
type benchBlob struct {
	path   string
	digest v1.Hash
	size   int64
	toc    *toc.TOC
}

func makeBenchBlob(b *testing.B, size int64, chunk int) *benchBlob {
	b.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("lazyfs-remote-bench-%d-%d-v1", size, chunk))
	bb := &benchBlob{path: filepath.Join(dir, "blob")}
	if raw, err := os.ReadFile(filepath.Join(dir, "toc")); err == nil {
		if bb.toc, err = toc.Unmarshal(raw); err == nil {
			if d, err := os.ReadFile(filepath.Join(dir, "digest")); err == nil {
				if bb.digest, err = v1.NewHash(string(d)); err == nil {
					if st, err := os.Stat(bb.path); err == nil {
						bb.size = st.Size()
						return bb
					}
				}
			}
		}
	}
	b.Logf("generating a %d MiB layer in %s", size>>20, dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		const fileSize = 64 << 20
		for i := int64(0); i*fileSize < size; i++ {
			n := min(fileSize, size-i*fileSize)
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/lib/lib%03d.so", i), Mode: 0o755, Size: n, Typeflag: tar.TypeReg}); err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := tw.Write(toctest.Random(uint64(i)+1, int(n))); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	out, err := os.Create(bb.path)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	res, err := toc.Convert(context.Background(), pr, io.MultiWriter(out, h), toc.WithChunkSize(chunk))
	if err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	bb.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	bb.size, bb.toc = res.Size, res.TOC
	_ = os.WriteFile(filepath.Join(dir, "toc"), res.TOC.Marshal(), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "digest"), []byte(bb.digest.String()), 0o644)
	return bb
}

// fileRegistry serves blobs from files with Range support (sendfile), like a
// registry's blob endpoint; /v2/ answers 200 (no auth).
func fileRegistry(b *testing.B, wrap func(http.Handler) http.Handler, blobs ...*benchBlob) (*httptest.Server, string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		for _, bb := range blobs {
			if strings.HasSuffix(r.URL.Path, "/blobs/"+bb.digest.String()) {
				f, err := os.Open(bb.path)
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				defer f.Close()
				w.Header().Set("Docker-Content-Digest", bb.digest.String())
				http.ServeContent(w, r, "", time.Time{}, f)
				return
			}
		}
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	})
	var h http.Handler = mux
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	return srv, strings.TrimPrefix(srv.URL, "http://")
}

// plainGet downloads url with one GET and returns bytes/s.
func plainGet(b *testing.B, url string) float64 {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := (&http.Client{Transport: tr}).Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// curlGet downloads url with curl and returns its bytes/s, or 0 without curl.
func curlGet(b *testing.B, url string) float64 {
	out, err := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url).Output()
	if err != nil {
		b.Logf("curl: %v", err)
		return 0
	}
	v, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	return v
}

// BenchmarkSequentialFetch fetches every chunk of a 1 GiB layer (256 KiB
// chunks) through FetchChunks, and in the same run downloads the whole blob
// with one net/http GET and with curl. MB/s are of blob (compressed) bytes.
// Opt-in: skipped with -short; -remote.benchsize changes the size.
func BenchmarkSequentialFetch(b *testing.B) {
	if testing.Short() {
		b.Skip("1 GiB benchmark skipped in -short")
	}
	bb := makeBenchBlob(b, *benchSize, toc.DefaultChunkSize)
	srv, host := fileRegistry(b, nil, bb)
	url := srv.URL + "/v2/bench/blobs/" + bb.digest.String()
	f := New()
	defer f.Close()
	blob := f.Blob(repoOf(b, host, "bench"), bb.digest, bb.size)
	var tarBytes int64
	for _, c := range bb.toc.Chunks {
		tarBytes += int64(c.Size)
	}
	// Warm the connection and token path, then measure.
	if err := blob.FetchChunks(context.Background(), bb.toc.Chunks[:1], func(int, []byte) error { return nil }); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(bb.size)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := blob.FetchChunks(context.Background(), bb.toc.Chunks, func(int, []byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	fetch := float64(bb.size) * float64(b.N) / el.Seconds()
	// The transport alone: the whole blob with parallel ranges, not decoded.
	p := make([]byte, bb.size)
	start = time.Now()
	if _, err := blob.ReadAt(context.Background(), p, 0); err != nil {
		b.Fatal(err)
	}
	readAt := float64(bb.size) / time.Since(start).Seconds()
	p = nil
	get := max(plainGet(b, url), plainGet(b, url))
	curl := max(curlGet(b, url), curlGet(b, url))
	b.ReportMetric(fetch/1e6, "fetch-MB/s")
	b.ReportMetric(float64(tarBytes)*float64(b.N)/el.Seconds()/1e6, "fetch-uncompressed-MB/s")
	b.ReportMetric(get/1e6, "get-MB/s")
	b.ReportMetric(readAt/1e6, "readat-MB/s")
	if curl > 0 {
		b.ReportMetric(curl/1e6, "curl-MB/s")
		b.ReportMetric(fetch/curl, "fetch/curl")
	}
	b.ReportMetric(fetch/get, "fetch/get")
}

// BenchmarkPrefetch200 fetches 200 chunks of 256 KiB with 20 ms injected
// per blob request: adjacent chunks (coalesced) and every other chunk of a
// 400-chunk file with no gap merging (200 separate requests). It reports
// ideal-ms = 200·chunk/bandwidth + one RTT, and serial-ms = 200 RTTs.
func BenchmarkPrefetch200(b *testing.B) {
	const rtt = 20 * time.Millisecond
	bb := makeBenchBlob(b, 400*toc.DefaultChunkSize, toc.DefaultChunkSize)
	fl := &faults{}
	srv, host := fileRegistry(b, fl.wrap, bb)
	bw := max(plainGet(b, srv.URL+"/v2/bench/blobs/"+bb.digest.String()), plainGet(b, srv.URL+"/v2/bench/blobs/"+bb.digest.String()))
	fl.set(func(f *faults) { f.latency = rtt })
	all := bb.toc.Chunks
	if len(all) < 400 {
		b.Fatalf("%d chunks", len(all))
	}
	every2 := make([]toc.Chunk, 0, 200)
	for i := 0; i < 400; i += 2 {
		every2 = append(every2, all[i])
	}
	for _, tc := range []struct {
		name   string
		chunks []toc.Chunk
		opts   []Option
	}{
		{"adjacent", all[:200], nil},
		{"scattered", every2, []Option{WithMaxGap(0)}},
		{"scattered-c64", every2, []Option{WithMaxGap(0), WithConcurrency(64)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var compressed int64
			for _, c := range tc.chunks {
				compressed += int64(c.CompressedSize)
			}
			f := New(tc.opts...)
			defer f.Close()
			blob := f.Blob(repoOf(b, host, "bench"), bb.digest, bb.size)
			if err := blob.FetchChunks(context.Background(), tc.chunks[:1], func(int, []byte) error { return nil }); err != nil {
				b.Fatal(err)
			}
			before := fl.blobGets.Load()
			fl.maxInflight.Store(0)
			b.SetBytes(compressed)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if err := blob.FetchChunks(context.Background(), tc.chunks, func(int, []byte) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
			el := time.Since(start) / time.Duration(b.N)
			b.StopTimer()
			ideal := time.Duration(float64(compressed)/bw*float64(time.Second)) + rtt
			b.ReportMetric(float64(el.Microseconds())/1000, "ms")
			b.ReportMetric(float64(ideal.Microseconds())/1000, "ideal-ms")
			b.ReportMetric(float64(200*rtt/time.Millisecond), "serial-ms")
			b.ReportMetric(float64(fl.blobGets.Load()-before)/float64(b.N), "requests")
			b.ReportMetric(float64(fl.maxInflight.Load()), "max-parallel")
		})
	}
}
