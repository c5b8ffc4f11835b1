package bench

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestDebianMirror(t *testing.T) {
	for name, tc := range map[string]struct {
		list, d822 string
		want       string
	}{
		"deb822":         {d822: "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n", want: "http://mirror.example/debian"},
		"one-line":       {list: "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main\n", want: "http://ftp.example/debian"},
		"security first": {list: "deb http://security.debian.org/debian-security bookworm-security main\ndeb http://deb.example/debian bookworm main\n", want: "http://deb.example/debian"},
		"none":           {want: "http://deb.debian.org/debian"},
	} {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
		if tc.list != "" {
			os.WriteFile(filepath.Join(dir, "sources.list"), []byte(tc.list), 0o644)
		}
		if tc.d822 != "" {
			os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(tc.d822), 0o644)
		}
		if got := DebianMirror(dir); got != tc.want {
			t.Errorf("%s: DebianMirror = %q, want %q", name, got, tc.want)
		}
	}
}

// TestWeightsFile checks the safetensors layout: a little-endian header
// length, a JSON header whose one tensor's offsets cover the rest exactly.
func TestWeightsFile(t *testing.T) {
	var b bytes.Buffer
	n, err := WeightsFile(&b, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if int64(b.Len()) != n {
		t.Fatalf("wrote %d bytes, reported %d", b.Len(), n)
	}
	hl := binary.LittleEndian.Uint64(b.Bytes()[:8])
	if hl%8 != 0 || 8+hl > uint64(b.Len()) {
		t.Fatalf("header length %d", hl)
	}
	var hdr map[string]struct {
		Dtype       string  `json:"dtype"`
		Shape       []int64 `json:"shape"`
		DataOffsets []int64 `json:"data_offsets"`
	}
	if err := json.Unmarshal(b.Bytes()[8:8+hl], &hdr); err != nil {
		t.Fatalf("header: %v", err)
	}
	w := hdr["weight"]
	if w.Dtype != "F16" || len(w.DataOffsets) != 2 || w.DataOffsets[0] != 0 || w.DataOffsets[1] != int64(b.Len())-8-int64(hl) || w.Shape[0]*2 != w.DataOffsets[1] {
		t.Errorf("tensor %+v does not cover the %d data bytes", w, int64(b.Len())-8-int64(hl))
	}
	var again bytes.Buffer
	WeightsFile(&again, 1<<20)
	if !bytes.Equal(b.Bytes(), again.Bytes()) {
		t.Error("weights are not deterministic: the image would be rebuilt differently")
	}
}
