package bench

import (
	"strings"
	"testing"
)

func TestParseAccessLog(t *testing.T) {
	log := `169.254.77.1 - - [29/Nov/2026:20:49:10 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "containerd/1.6.20"
time="2026-11-29T20:49:10Z" level=error msg="some registry message"
169.254.77.1 - - [29/Nov/2026:20:49:10 +0000] "HEAD /v2/bench/hello/manifests/plain HTTP/1.1" 200 0 "" "go-containerregistry"
169.254.77.1 - - [29/Nov/2026:20:49:11 +0000] "GET /v2/bench/hello/blobs/sha256:ab HTTP/1.1" 206 262144 "" "lazyfs-mount"
169.254.77.1 - - [29/Nov/2026:20:49:11 +0000] "GET /v2/bench/hello/blobs/sha256:cd HTTP/1.1" 404 - "" "x"
169.254.77.1 - - [29/Nov/2026:20:49:11 +0000] "GET /v2/bench/hello/blo`
	c, err := ParseAccessLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	want := RequestCount{Requests: 4, ResponseBytes: 2 + 262144, Errors: 1}
	if c != want {
		t.Errorf("ParseAccessLog = %+v, want %+v", c, want)
	}
	if d := want.Sub(RequestCount{Requests: 1, ResponseBytes: 2}); d != (RequestCount{3, 262144, 1}) {
		t.Errorf("Sub = %+v", d)
	}
}

func FuzzParseAccessLog(f *testing.F) {
	f.Add([]byte(`1.2.3.4 - - [29/Nov/2026:20:49:10 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "a"` + "\n"))
	f.Add([]byte(`x] "GET /" 404 -`))
	f.Add([]byte(`] "" 200 5`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseAccessLog(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		if c.Requests < 0 || c.ResponseBytes < 0 || c.Errors > c.Requests {
			t.Fatalf("impossible count %+v", c)
		}
		if lines := int64(strings.Count(string(b), "\n") + 1); c.Requests > lines {
			t.Fatalf("%d requests from %d lines", c.Requests, lines)
		}
	})
}
