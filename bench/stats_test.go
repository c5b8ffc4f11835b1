package bench

import (
	"math"
	"testing"
)

func TestQuantile(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		q    float64
		want float64
	}{
		// Values from numpy.quantile (linear, the default).
		{[]float64{3, 1, 2}, 0.5, 2},
		{[]float64{4, 1, 3, 2}, 0.5, 2.5},
		{[]float64{1, 2, 3, 4}, 0.95, 3.85},
		{[]float64{1, 2, 3, 4, 5}, 0.95, 4.8},
		{[]float64{10, 20, 30}, 0.95, 29},
		{[]float64{7}, 0.95, 7},
		{[]float64{1, 2}, 0, 1},
		{[]float64{1, 2}, 1, 2},
		{[]float64{1, 2}, 2, 2}, // clamped
	} {
		if got := Quantile(tc.xs, tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("Quantile(%v, %v) = %v, want %v", tc.xs, tc.q, got, tc.want)
		}
	}
	if !math.IsNaN(Quantile(nil, 0.5)) {
		t.Error("Quantile of no samples is not NaN")
	}
	xs := []float64{3, 1, 2}
	Median(xs)
	if xs[0] != 3 {
		t.Error("Quantile reordered its input")
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{5, 1, 3, 2, 4})
	if s.Median != 3 || s.Min != 1 || s.Max != 5 || s.N != 5 || math.Abs(s.P95-4.8) > 1e-9 {
		t.Errorf("Summarize = %+v", s)
	}
	if z := Summarize(nil); z != (Stat{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", z)
	}
}

func TestParseProfile(t *testing.T) {
	for in, want := range map[string]int64{"200mbit": 200e6, "1gbit": 1e9, "50mbit": 50e6, "off": 0, "1.5Gbit": 1.5e9, "800kbit": 800e3} {
		p, err := ParseProfile(in)
		if err != nil || p.RateBitsPerSecond != want {
			t.Errorf("ParseProfile(%q) = %+v, %v; want rate %d", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "fast", "200", "200mb", "-1mbit", "0mbit", "1kbit"} {
		if _, err := ParseProfile(bad); err == nil {
			t.Errorf("ParseProfile(%q) accepted", bad)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 0 0"
	d, err := parseStatCPU([]byte(line))
	if err != nil || d.Seconds() != 3.25 {
		t.Fatalf("parseStatCPU = %v, %v; want 3.25s", d, err)
	}
	if _, err := parseStatCPU([]byte("1 (x) S 1")); err == nil {
		t.Error("short stat line accepted")
	}
}
