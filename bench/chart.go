package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strconv"
	"strings"
)

// Chart geometry and colours.
const (
	chartWidth  = 900
	chartLeft   = 130 // mode labels
	chartRight  = 190 // value labels
	barHeight   = 22
	barGap      = 8
	panelTitle  = 34
	panelBottom = 26
	legendH     = 40
)

var phaseColours = [3]string{"#4e79a7", "#f28e2b", "#59a14f"}
var phaseNames = [3]string{"pull / mount", "create", "run to ready"}

// WriteSVG draws the report as an SVG chart: one panel per workload, one
// bar per mode that ran, the median time to ready split into its phases'
// medians (scaled to the median total), a whisker to p95, the ratio to
// the full mode and the median megabytes received over the link. Each
// panel has its own linear scale from 0.
func (r *Report) WriteSVG(w io.Writer) error {
	type bar struct {
		mode        string
		phases      [3]float64
		median, p95 float64
		ratio       float64
		linkMB      float64
		note        string
	}
	type panel struct {
		title string
		bars  []bar
		max   float64
	}
	var panels []panel
	for _, wr := range r.Workloads {
		p := panel{title: fmt.Sprintf("%s — %s", wr.Name, oneLine(strings.Join(wr.Cmd, " ")))}
		if wr.Skipped != "" {
			continue
		}
		for _, m := range wr.Modes {
			b := bar{mode: m.Mode}
			switch {
			case m.Skipped != "":
				b.note = "skipped"
			case m.Summary == nil || m.Summary.ReadySeconds.N == 0:
				b.note = "failed"
			default:
				s := m.Summary
				b.median, b.p95, b.ratio = s.ReadySeconds.Median, s.ReadySeconds.P95, m.ReadyRatioToFull
				b.linkMB = s.LinkBytesReceived.Median / 1e6
				parts := [3]float64{s.PullSeconds.Median, s.CreateSeconds.Median, s.RunSeconds.Median}
				sum := parts[0] + parts[1] + parts[2]
				for i := range parts {
					if sum > 0 {
						b.phases[i] = parts[i] / sum * b.median
					}
				}
				p.max = math.Max(p.max, b.p95)
			}
			p.bars = append(p.bars, b)
		}
		panels = append(panels, p)
	}
	height := legendH + 30
	for _, p := range panels {
		height += panelTitle + len(p.bars)*(barHeight+barGap) + panelBottom
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`+"\n", chartWidth, height, chartWidth, height)
	fmt.Fprintf(&sb, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("lazyfs bench: time to ready, link %s", r.Link.Profile)
	if r.Link.RTTMilliseconds > 0 {
		title += fmt.Sprintf(", rtt %.0f ms", r.Link.RTTMilliseconds)
	}
	title += fmt.Sprintf(" (median of %d, whisker p95)", r.SamplesPerMode)
	fmt.Fprintf(&sb, `<text x="12" y="22" font-size="16" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	// Legend.
	x := 12
	for i, n := range phaseNames {
		fmt.Fprintf(&sb, `<rect x="%d" y="34" width="14" height="14" fill="%s"/><text x="%d" y="46">%s</text>`+"\n", x, phaseColours[i], x+20, n)
		x += 40 + 8*len(n)
	}
	y := legendH + 30
	plotW := float64(chartWidth - chartLeft - chartRight)
	for _, p := range panels {
		fmt.Fprintf(&sb, `<text x="12" y="%d" font-weight="bold">%s</text>`+"\n", y+20, html.EscapeString(truncate(p.title, 110)))
		y += panelTitle
		scale := 0.0
		if p.max > 0 {
			scale = plotW / niceCeil(p.max)
		}
		top := y
		for _, b := range p.bars {
			cy := y + barHeight/2
			fmt.Fprintf(&sb, `<text x="%d" y="%d" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", chartLeft-8, cy+1, html.EscapeString(b.mode))
			if b.note != "" {
				fmt.Fprintf(&sb, `<text x="%d" y="%d" dominant-baseline="middle" fill="#888">%s</text>`+"\n", chartLeft+4, cy+1, b.note)
				y += barHeight + barGap
				continue
			}
			bx := float64(chartLeft)
			for i, v := range b.phases {
				wpx := v * scale
				if wpx <= 0 {
					continue
				}
				fmt.Fprintf(&sb, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %.3f s</title></rect>`+"\n", bx, y, wpx, barHeight, phaseColours[i], phaseNames[i], v)
				bx += wpx
			}
			mx, px := float64(chartLeft)+b.median*scale, float64(chartLeft)+b.p95*scale
			fmt.Fprintf(&sb, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-width="1.5"/>`+"\n", mx, cy, px, cy)
			fmt.Fprintf(&sb, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-width="1.5"/>`+"\n", px, cy-6, px, cy+6)
			label := fmt.Sprintf("%.2f s", b.median)
			if b.ratio > 0 && b.mode != "full" {
				label += fmt.Sprintf(" (%.2f× full)", b.ratio)
			}
			label += fmt.Sprintf(", %s MB", strconv.FormatFloat(b.linkMB, 'f', max(0, 1-int(math.Floor(math.Log10(math.Max(b.linkMB, 0.01))))), 64))
			fmt.Fprintf(&sb, `<text x="%.1f" y="%d" dominant-baseline="middle">%s</text>`+"\n", math.Max(px, mx)+8, cy+1, label)
			y += barHeight + barGap
		}
		// Axis.
		fmt.Fprintf(&sb, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999"/>`+"\n", chartLeft, top-4, chartLeft, y)
		if scale > 0 {
			top := niceCeil(p.max)
			for i := 0; i <= 4; i++ {
				v := top * float64(i) / 4
				tx := float64(chartLeft) + v*scale
				fmt.Fprintf(&sb, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/><text x="%.1f" y="%d" text-anchor="middle" font-size="11" fill="#555">%s s</text>`+"\n", tx, y, tx, y+4, tx, y+16, strconv.FormatFloat(v, 'g', 3, 64))
			}
		}
		y += panelBottom
	}
	sb.WriteString("</svg>\n")
	_, err := io.WriteString(w, sb.String())
	return err
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// oneLine collapses a multi-line command (a script) onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ; ")), " ")
}

func truncate(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
