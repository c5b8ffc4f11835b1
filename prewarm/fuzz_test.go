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

// FuzzWorkerAnswer feeds arbitrary worker answers to the parser the
// device check and clients use: no panic, and only "ok <ns> [sum]" passes.
func FuzzWorkerAnswer(f *testing.F) {
	f.Add("ok 1700000000000000000\n")
	f.Add("ok 1700000000000000000 1234567890\n")
	f.Add("error checksum mismatch in tensor 3: 1 != 2\n")
	f.Add("ok -5\n")
	f.Add("ok x y z\n")
	f.Fuzz(func(t *testing.T, line string) {
		n, _, err := parseWorkerAnswer(line)
		if err == nil && (n <= 0 || !strings.HasPrefix(strings.TrimSpace(line), "ok")) {
			t.Fatalf("accepted %q", line)
		}
	})
}

// TestReadReadyBounded: a child whose first line never ends is refused
// after maxWorkerLine bytes, not buffered without bound.
func TestReadReadyBounded(t *testing.T) {
	long := strings.Repeat("x", maxWorkerLine+1)
	if _, err := readReady(bufio.NewReader(strings.NewReader(long))); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("endless line: %v", err)
	}
	if _, err := readReady(bufio.NewReader(strings.NewReader("READY " + strings.Repeat(" ", 5000) + "\n"))); err != nil {
		t.Fatalf("READY line longer than bufio's buffer: %v", err)
	}
}
