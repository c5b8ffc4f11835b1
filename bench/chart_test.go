package bench

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
)

type svgRect struct {
	X, Y, Width, Height float64
	Fill, Title         string
}

// parseSVG checks that the chart is well-formed XML and returns its bars
// (the rects that carry a title) and its text.
func parseSVG(t *testing.T, b []byte) (bars []svgRect, text string) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	var texts []string
	var cur *svgRect
	inText := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			switch el.Name.Local {
			case "rect":
				r := svgRect{}
				for _, a := range el.Attr {
					v, _ := strconv.ParseFloat(a.Value, 64)
					switch a.Name.Local {
					case "x":
						r.X = v
					case "y":
						r.Y = v
					case "width":
						r.Width = v
					case "height":
						r.Height = v
					case "fill":
						r.Fill = a.Value
					}
				}
				cur = &r
			case "text", "title":
				inText = true
			}
		case xml.CharData:
			if inText {
				texts = append(texts, string(el))
				if cur != nil {
					cur.Title += string(el)
				}
			}
		case xml.EndElement:
			switch el.Name.Local {
			case "rect":
				if cur != nil && cur.Title != "" {
					bars = append(bars, *cur)
				}
				cur = nil
			case "text", "title":
				inText = false
			}
		}
	}
	return bars, strings.Join(texts, "\n")
}

func TestWriteSVG(t *testing.T) {
	r := testReport()
	var b bytes.Buffer
	if err := r.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	bars, text := parseSVG(t, b.Bytes())
	// full and mount ran (3 phases each); lazy is skipped.
	if len(bars) != 6 {
		t.Fatalf("%d bar segments, want 6 (3 phases × 2 modes): %+v", len(bars), bars)
	}
	width := map[float64]float64{} // bar y → total width
	for _, s := range bars {
		width[s.Y] += s.Width
	}
	if len(width) != 2 {
		t.Fatalf("bars on %d rows, want 2", len(width))
	}
	var rows []float64
	for y, w := range width {
		_ = y
		rows = append(rows, w)
	}
	full, mount := math.Max(rows[0], rows[1]), math.Min(rows[0], rows[1])
	// The bars are to scale: their lengths are in the ratio of the medians.
	if got, want := mount/full, 1.71/6.5; math.Abs(got-want) > 0.01 {
		t.Errorf("bar length ratio %.3f, want %.3f", got, want)
	}
	// Segments of a bar are its phases, in proportion.
	for _, s := range bars {
		if s.Width <= 0 || s.X < chartLeft {
			t.Errorf("bad segment %+v", s)
		}
	}
	for _, want := range []string{"python", "full", "mount", "lazy", "skipped", "6.50 s", "0.26× full", "9.0 MB", "200mbit"} {
		if !strings.Contains(text, want) {
			t.Errorf("chart text lacks %q", want)
		}
	}
	if strings.Contains(text, "torch") {
		t.Error("a skipped workload got a panel")
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[float64]float64{0.33: 0.5, 1: 1, 6.95: 10, 32.7: 50, 0.011: 0.02, 0: 1, 2.2: 2.5} {
		if got := niceCeil(in); math.Abs(got-want) > 1e-9 {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
}
