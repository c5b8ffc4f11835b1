package snapshotter

import (
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Fallback reasons set by the snapshotter itself. A FileSystem names its own
// reason by returning an error that has a FallbackReason() string method
// anywhere in its chain (see Reasoner).
const (
	ReasonNoLabels     = "no_labels"     // the layer came without the cri.* labels (e.g. ctr pull)
	ReasonNoFileSystem = "no_filesystem" // the snapshotter runs without a FileSystem
	ReasonMountFailed  = "mount_failed"  // Mount failed and its error named no reason
	ReasonTimeout      = "timeout"       // Mount ran past its deadline
	ReasonCommitFailed = "commit_failed" // the lazy mount worked, recording it did not

	// ReasonRegistryNotFound is the reason a FileSystem names when the
	// registry has no such image or layer (service.Reason).
	ReasonRegistryNotFound = "registry_not_found"
)

// Reasoner is implemented by errors that name why a layer cannot be mounted
// lazily, in a short lower-case word ("not_chunked", "toc_invalid",
// "registry"). It becomes the value of the fallback counter's reason label, so
// it must come from a small fixed set; anything else is counted as
// ReasonMountFailed.
type Reasoner interface {
	FallbackReason() string
}

// reasonOf maps a Mount error to a bounded label value.
func reasonOf(err error) string {
	var r Reasoner
	if errors.As(err, &r) {
		if s := r.FallbackReason(); validReason(s) {
			return s
		}
	}
	if errors.Is(err, errDeadline) {
		return ReasonTimeout
	}
	return ReasonMountFailed
}

func validReason(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == ""
}

// Metrics counts the snapshotter's decisions. Create it with NewMetrics and
// register it where the daemon registers its other collectors.
type Metrics struct {
	remote    prometheus.Counter
	located   prometheus.Counter
	fallback  *prometheus.CounterVec
	restored  prometheus.Counter
	restoreKO prometheus.Counter
	prepare   prometheus.Histogram
}

// NewMetrics returns the snapshotter's metrics (lazyfs_snapshotter_*).
func NewMetrics() *Metrics {
	return &Metrics{
		remote: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "remote_layers_total",
			Help: "Layers mounted lazily and committed as remote snapshots.",
		}),
		located: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "located_layers_total",
			Help: "Layers that came without image labels and were found in containerd's content store (a remote layer when they mount).",
		}),
		fallback: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "fallback_layers_total",
			Help: "Layers left to containerd to download and unpack, by reason.",
		}, []string{"reason"}),
		restored: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "restored_mounts_total",
			Help: "Lazy mounts of remote snapshots restored after a restart or a failed check.",
		}),
		restoreKO: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "restore_failures_total",
			Help: "Remote snapshots whose lazy mount could not be restored.",
		}),
		prepare: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "lazyfs", Subsystem: "snapshotter", Name: "remote_prepare_seconds",
			Help:    "Time to mount and commit a remote layer in Prepare.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.remote.Describe(ch)
	m.located.Describe(ch)
	m.fallback.Describe(ch)
	m.restored.Describe(ch)
	m.restoreKO.Describe(ch)
	m.prepare.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.remote.Collect(ch)
	m.located.Collect(ch)
	m.fallback.Collect(ch)
	m.restored.Collect(ch)
	m.restoreKO.Collect(ch)
	m.prepare.Collect(ch)
}

// Fallbacks returns how many layers fell back for reason.
func (m *Metrics) Fallbacks(reason string) float64 {
	return counterValue(m.fallback.WithLabelValues(reason))
}

// RemoteLayers returns how many layers were committed as remote snapshots.
func (m *Metrics) RemoteLayers() float64 { return counterValue(m.remote) }

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}
