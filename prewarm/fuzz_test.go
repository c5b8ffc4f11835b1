package prewarm

import (
	"bufio"
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzReadReady feeds arbitrary child output to the READY-line parser: it
// must never panic and must accept only READY lines.
func FuzzReadReady(f *testing.F) {
	f.Add([]byte("READY {\"pid\":12,\"uuid\":\"GPU-1\",\"alloc_bytes\":0,\"init_ms\":1.5}\n"))
	f.Add([]byte("READY\n"))
	f.Add([]byte("ERROR cuInit: CUDA_ERROR_NO_DEVICE\n"))
	f.Add([]byte("READY {\"pid\":\"x\"}\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := readReady(bufio.NewReader(bytes.NewReader(b)))
		if err == nil && !strings.HasPrefix(strings.TrimSpace(string(b)), "READY") {
			t.Fatalf("accepted %q as ready: %+v", b, r)
		}
	})
}

// FuzzClaimRequest feeds arbitrary bodies to the API decoder.
func FuzzClaimRequest(f *testing.F) {
	f.Add([]byte(`{"uuid":"GPU-1","owner":"job","release":"now"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"uuid": 5}`))
	f.Add([]byte(`{"extra": true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req := httptest.NewRequest("POST", "/v1/claim", bytes.NewReader(b))
		var c ClaimRequest
		readJSON(req, &c)
	})
}
