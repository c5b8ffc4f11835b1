package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// SchemaVersion is the version of the JSON report (docs/bench.md). It
// changes when a field is renamed, removed or changes meaning; new fields
// may appear without a change.
const SchemaVersion = 1

// Report is the result of a run, as `lazyfs bench --json` prints it.
type Report struct {
	SchemaVersion int       `json:"schemaVersion"`
	StartedAt     time.Time `json:"startedAt"`
	WallSeconds   float64   `json:"wallSeconds"`
	Command       string    `json:"command,omitempty"`
	Machine       Machine   `json:"machine"`
	Versions      Versions  `json:"versions"`
	Link          LinkInfo  `json:"link"`
	// SamplesPerMode is the number of rounds; each round runs every mode of
	// every workload once, in an order that rotates between rounds.
	SamplesPerMode int              `json:"samplesPerMode"`
	Workloads      []WorkloadResult `json:"workloads"`
	Notes          []string         `json:"notes,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs        int    `json:"cpus"`
	MemoryBytes int64  `json:"memoryBytes"`
	Kernel      string `json:"kernel"`
	OS          string `json:"os"`
}

// Versions of the components in the run.
type Versions struct {
	Lazyfs     string `json:"lazyfs"`
	Containerd string `json:"containerd,omitempty"`
	Runc       string `json:"runc,omitempty"`
	Registry   string `json:"registry"`
	Go         string `json:"go"`
}

// LinkInfo is the link between registry and node.
type LinkInfo struct {
	Profile           string  `json:"profile"`
	RateBitsPerSecond int64   `json:"rateBitsPerSecond"`
	BurstBytes        int64   `json:"burstBytes,omitempty"`
	RTTMilliseconds   float64 `json:"rttMilliseconds"`
	// Kind is "veth+tbf" (shaped), "veth" (a namespace, unshaped) or
	// "loopback".
	Kind string `json:"kind"`
}

// WorkloadResult is one workload's results in every mode.
type WorkloadResult struct {
	Name    string       `json:"name"`
	Image   string       `json:"image"`
	Cmd     []string     `json:"cmd"`
	Ready   string       `json:"ready"`
	Refs    ImageRefs    `json:"refs"`
	Modes   []ModeResult `json:"modes"`
	Skipped string       `json:"skipped,omitempty"`
}

// ModeResult is one mode's samples of one workload and their summary.
type ModeResult struct {
	Mode    string   `json:"mode"`
	Skipped string   `json:"skipped,omitempty"`
	Samples []Sample `json:"samples"`
	Summary *Summary `json:"summary,omitempty"`
	// ReadyRatioToFull is this mode's median ready time over the full
	// mode's median, when both ran.
	ReadyRatioToFull float64 `json:"readyRatioToFull,omitempty"`
}

// Sample is one cold start.
type Sample struct {
	Round int `json:"round"`
	// ReadySeconds = PullSeconds + CreateSeconds + RunSeconds.
	ReadySeconds  float64 `json:"readySeconds"`
	PullSeconds   float64 `json:"pullSeconds"`
	CreateSeconds float64 `json:"createSeconds"`
	RunSeconds    float64 `json:"runSeconds"`
	// LinkBytesReceived is what crossed the link from the registry (the
	// node's veth rx_bytes, Ethernet frames); LinkBytesSent the other way.
	LinkBytesReceived int64 `json:"linkBytesReceived"`
	LinkBytesSent     int64 `json:"linkBytesSent"`
	// Requests is the number of HTTP requests the registry served;
	// ResponseBytes the body bytes it sent.
	Requests      int64 `json:"requests"`
	ResponseBytes int64 `json:"responseBytes"`
	// Connections is the TCP connections through the latency proxy (only
	// with an RTT).
	Connections        int64   `json:"connections,omitempty"`
	DaemonCPUSeconds   float64 `json:"daemonCpuSeconds"`
	DaemonPeakRSSBytes int64   `json:"daemonPeakRssBytes"`
	ClientCPUSeconds   float64 `json:"clientCpuSeconds"`
	// Mount is what the lazyfs mount said of itself when the workload
	// was ready (mount modes; nil where the binary could not say).
	Mount *MountStats `json:"mount,omitempty"`
	Error string      `json:"error,omitempty"`
}

// MountStats are a few of a mount's own counters (lazyfs stats --json):
// why it fetched what it did.
type MountStats struct {
	ChunkMisses      int64 `json:"chunkMisses"`
	FetchedChunks    int64 `json:"fetchedChunks"`
	LibraryJobs      int64 `json:"libraryJobs"`
	PartialLibraries int64 `json:"partialLibraries"`
	// LinkBytesPerSecond, LinkRTTSeconds and SlowLink are the mount's view
	// of the link.
	LinkBytesPerSecond int64   `json:"linkBytesPerSecond"`
	LinkRTTSeconds     float64 `json:"linkRttSeconds"`
	SlowLink           bool    `json:"slowLink"`
	FarLink            bool    `json:"farLink"`
}

// Summary holds the median and p95 of each measure over a mode's samples
// that succeeded.
type Summary struct {
	ReadySeconds       Stat `json:"readySeconds"`
	PullSeconds        Stat `json:"pullSeconds"`
	CreateSeconds      Stat `json:"createSeconds"`
	RunSeconds         Stat `json:"runSeconds"`
	LinkBytesReceived  Stat `json:"linkBytesReceived"`
	Requests           Stat `json:"requests"`
	DaemonCPUSeconds   Stat `json:"daemonCpuSeconds"`
	DaemonPeakRSSBytes Stat `json:"daemonPeakRssBytes"`
	Failed             int  `json:"failed"`
}

// Summarize fills in the summaries and the ratios to the full mode.
func (r *Report) Summarize() {
	for wi := range r.Workloads {
		w := &r.Workloads[wi]
		full := math.NaN()
		for mi := range w.Modes {
			m := &w.Modes[mi]
			if m.Skipped != "" {
				continue
			}
			m.Summary = summarize(m.Samples)
			if m.Mode == "full" && m.Summary.ReadySeconds.N > 0 {
				full = m.Summary.ReadySeconds.Median
			}
		}
		for mi := range w.Modes {
			m := &w.Modes[mi]
			if m.Summary != nil && m.Summary.ReadySeconds.N > 0 && full > 0 {
				m.ReadyRatioToFull = m.Summary.ReadySeconds.Median / full
			}
		}
	}
}

func summarize(ss []Sample) *Summary {
	col := func(f func(Sample) float64) Stat {
		var xs []float64
		for _, s := range ss {
			if s.Error == "" {
				xs = append(xs, f(s))
			}
		}
		return Summarize(xs)
	}
	s := &Summary{
		ReadySeconds:       col(func(s Sample) float64 { return s.ReadySeconds }),
		PullSeconds:        col(func(s Sample) float64 { return s.PullSeconds }),
		CreateSeconds:      col(func(s Sample) float64 { return s.CreateSeconds }),
		RunSeconds:         col(func(s Sample) float64 { return s.RunSeconds }),
		LinkBytesReceived:  col(func(s Sample) float64 { return float64(s.LinkBytesReceived) }),
		Requests:           col(func(s Sample) float64 { return float64(s.Requests) }),
		DaemonCPUSeconds:   col(func(s Sample) float64 { return s.DaemonCPUSeconds }),
		DaemonPeakRSSBytes: col(func(s Sample) float64 { return float64(s.DaemonPeakRSSBytes) }),
	}
	for _, x := range ss {
		if x.Error != "" {
			s.Failed++
		}
	}
	return s
}

// WriteTable writes the human-readable summary: one row per workload and
// mode, medians with p95 in parentheses.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "workload\tmode\tready s (p95)\tpull s\tcreate s\trun s\tvs full\tMB over link\trequests\tdaemon CPU s\tdaemon RSS MiB\tok\t\n")
	for _, wr := range r.Workloads {
		if wr.Skipped != "" {
			fmt.Fprintf(tw, "%s\t-\tskipped: %s\t\t\t\t\t\t\t\t\t\t\n", wr.Name, wr.Skipped)
			continue
		}
		for _, m := range wr.Modes {
			if m.Skipped != "" {
				fmt.Fprintf(tw, "%s\t%s\tskipped\t\t\t\t\t\t\t\t\t\t\n", wr.Name, m.Mode)
				continue
			}
			s := m.Summary
			if s == nil || s.ReadySeconds.N == 0 {
				fmt.Fprintf(tw, "%s\t%s\tfailed\t\t\t\t\t\t\t\t\t0/%d\t\n", wr.Name, m.Mode, len(m.Samples))
				continue
			}
			ratio := "-"
			if m.ReadyRatioToFull > 0 {
				ratio = fmt.Sprintf("%.2f×", m.ReadyRatioToFull)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f (%.2f)\t%.2f\t%.2f\t%.2f\t%s\t%.1f\t%.0f\t%.2f\t%.0f\t%d/%d\t\n",
				wr.Name, m.Mode, s.ReadySeconds.Median, s.ReadySeconds.P95, s.PullSeconds.Median, s.CreateSeconds.Median,
				s.RunSeconds.Median, ratio, s.LinkBytesReceived.Median/1e6, s.Requests.Median,
				s.DaemonCPUSeconds.Median, s.DaemonPeakRSSBytes.Median/(1<<20), s.ReadySeconds.N, len(m.Samples))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var skips []string
	seen := map[string]bool{}
	for _, wr := range r.Workloads {
		for _, m := range wr.Modes {
			if note := fmt.Sprintf("%s skipped: %s", m.Mode, m.Skipped); m.Skipped != "" && !seen[note] {
				seen[note] = true
				skips = append(skips, note)
			}
			for _, s := range m.Samples {
				if s.Error != "" {
					skips = append(skips, fmt.Sprintf("%s/%s round %d failed: %s", wr.Name, m.Mode, s.Round, firstLine(s.Error)))
				}
			}
		}
	}
	for _, n := range append(r.Notes, skips...) {
		if _, err := fmt.Fprintln(w, "note:", n); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "link: %s (%s), rtt %.0f ms; %d samples per mode; medians, p95 in parentheses\n",
		r.Link.Profile, r.Link.Kind, r.Link.RTTMilliseconds, r.SamplesPerMode)
	return err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
