package size

import (
	"testing"

	"github.com/spf13/pflag"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "256KiB": 256 << 10, "256kib": 256 << 10, "1MiB": 1 << 20, "10GiB": 10 << 30,
		"10G": 10 << 30, "512K": 512 << 10, "64M": 64 << 20, "1.5GB": 1_500_000_000, "1GB": 1e9, "1KB": 1000,
		"1.5GiB": 3 << 29, "512 KiB": 512 << 10, " 7B ": 7, "2TiB": 2 << 40, "0.5KiB": 512,
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "-1KiB", "KiB", "1e3", "0x10", "inf", "NaN", "1..5G", "1 2", "16EiB", "9999999PiB", "1.5.5"} {
		if n, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %d; want an error", bad, n)
		}
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 1: "1B", 1000: "1000B", 256 << 10: "256KiB", 10 << 30: "10GiB", 1536: "1536B"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q; want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0B", 512: "512B", 256 << 10: "256KiB", 1363148: "1.3MiB", 10 << 30: "10GiB"} {
		if got := Human(n); got != want {
			t.Errorf("Human(%d) = %q; want %q", n, got, want)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	s := Size(256 << 10)
	o := Off{Default: 1 << 20}
	fs.Var(&s, "chunk-size", "")
	fs.Var(&o, "window", "")
	if d := fs.Lookup("chunk-size").DefValue; d != "256KiB" {
		t.Errorf("default printed as %q", d)
	}
	if d := fs.Lookup("window").DefValue; d != "1MiB" || o.Bytes() != 1<<20 {
		t.Errorf("off default printed as %q, bytes %d", d, o.Bytes())
	}
	for _, off := range []string{"0", "off", "OFF"} {
		if err := fs.Parse([]string{"--window", off}); err != nil || o.Bytes() != -1 || o.String() != "off" {
			t.Errorf("--window %s: bytes %d, %q, %v", off, o.Bytes(), o.String(), err)
		}
	}
	if err := fs.Parse([]string{"--window", "64KiB", "--chunk-size", "1MiB"}); err != nil || o.Bytes() != 64<<10 || s != 1<<20 {
		t.Errorf("parsed %d %d %v", o.Bytes(), s, err)
	}
	if err := fs.Parse([]string{"--chunk-size", "ten"}); err == nil {
		t.Error("--chunk-size ten accepted")
	}
	var txt Size
	if err := txt.UnmarshalText([]byte("10G")); err != nil || txt != 10<<30 {
		t.Errorf("UnmarshalText: %d %v", txt, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "256KiB", "1.5GB", "10G", "-1", "1e3", "9223372036854775807", "8EiB", " 3 mib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("Parse(%q) = %d: negative", s, n)
		}
		back, err := Parse(Format(n))
		if err != nil || back != n {
			t.Fatalf("Parse(Format(%d)) = %d, %v (from %q)", n, back, err, s)
		}
	})
}

func FuzzFormat(f *testing.F) {
	f.Add(int64(0))
	f.Add(int64(1 << 40))
	f.Add(int64(1<<63 - 1))
	f.Fuzz(func(t *testing.T, n int64) {
		if n < 0 {
			return
		}
		if back, err := Parse(Format(n)); err != nil || back != n {
			t.Fatalf("Parse(Format(%d)=%q) = %d, %v", n, Format(n), back, err)
		}
	})
}
