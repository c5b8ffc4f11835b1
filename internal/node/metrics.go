package node

import (
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/fs/image"
)

// metrics are the node's own Prometheus metrics; they live in the Node (no
// global registry) and are exported by Collectors.
type metrics struct {
	n            *Node
	fetchLatency prometheus.Histogram
	remoteLayers prometheus.Counter
	fallbacks    *prometheus.CounterVec
	pinned       prometheus.Counter

	fetched, requests, chunks, verify, errs, retries      *prometheus.Desc
	mounts, imageSize, imageFetched                       *prometheus.Desc
	profileChunks, profileLocal, mountChunks, localChunks *prometheus.Desc
}

func newMetrics(n *Node) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("lazyfs", "node", name), help, labels, nil)
	}
	return &metrics{
		n: n,
		fetchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "lazyfs", Subsystem: "node", Name: "fetch_duration_seconds",
			Help:    "Time of each fetch of chunks for a mount (reads and read-ahead), from the call to the last chunk.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		remoteLayers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "node", Name: "remote_layers_total",
			Help: "Layers mounted lazily for the snapshotter.",
		}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "node", Name: "layer_fallbacks_total",
			Help: "Layers that could not be mounted lazily, by reason (the snapshotter pulls them normally).",
		}, []string{"reason"}),
		pinned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "lazyfs", Subsystem: "node", Name: "pinned_unmounts_total",
			Help: "Unmounts whose mount another mount namespace still held (its FUSE connection was aborted).",
		}),
		fetched:       d("fetched_bytes_total", "Body bytes fetched from registries by the node's fetcher."),
		requests:      d("requests_total", "HTTP requests the node's fetcher sent."),
		chunks:        d("fetched_mountChunkstotal", "Chunks fetched from registries and verified."),
		verify:        d("verify_failures_total", "Chunks whose bytes did not match their digest."),
		errs:          d("fetch_errors_total", "Fetches that failed after all retries and hosts."),
		retries:       d("fetch_retries_total", "Fetch attempts repeated after a transient failure."),
		mounts:        d("mounts", "Mounts the node serves, by kind.", "kind"),
		imageSize:     d("mount_size_bytes", "Compressed size of what a mount serves.", "dir", "image", "layer"),
		imageFetched:  d("mount_fetched_bytes", "Compressed bytes a mount fetched.", "dir", "image", "layer"),
		profileChunks: d("mount_profile_chunks", "Chunks of a mount's start-up profile (mounts that prefetch).", "dir", "image", "layer"),
		profileLocal:  d("mount_profile_local_chunks", "Chunks of a mount's start-up profile in the cache.", "dir", "image", "layer"),
		mountChunks:   d("mount_chunks", "Chunks of what a mount serves (mounts that prefetch).", "dir", "image", "layer"),
		localChunks:   d("mount_local_chunks", "Chunks of what a mount serves known to be in the cache (mounts that prefetch).", "dir", "image", "layer"),
	}
}

func (m *metrics) observeFetch(e image.FetchEvent) {
	if e.Err == nil {
		m.fetchLatency.Observe(e.Duration.Seconds())
	}
}

// fallback counts a layer that could not be mounted lazily.
func (m *metrics) fallback(err error) {
	reason := "error"
	switch {
	case errors.Is(err, image.ErrNotConverted):
		reason = "not_converted"
	case errors.Is(err, image.ErrNoLayer):
		reason = "no_such_layer"
	case errors.Is(err, fs.ErrLowerHardlink):
		reason = "lower_hardlink"
	}
	m.fallbacks.WithLabelValues(reason).Inc()
}

// Collectors returns the node's Prometheus collectors: the fetcher's
// counters, the fetch latency histogram, remote and fallback layer counts,
// per-mount progress (size, fetched, local), and the block cache's
// lazyfs_blobcache_* metrics. Register them on the registry of your choice.
func (n *Node) Collectors() []prometheus.Collector {
	return []prometheus.Collector{n.metrics, n.metrics.fetchLatency, n.metrics.remoteLayers, n.metrics.fallbacks, n.metrics.pinned,
		blobcache.NewCollector(n.cache, nil)}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.fetched, m.requests, m.chunks, m.verify, m.errs, m.retries, m.mounts, m.imageSize, m.imageFetched,
		m.profileChunks, m.profileLocal, m.mountChunks, m.localChunks} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	st := m.n.fetcher.Stats()
	c := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	c(m.fetched, st.BytesFetched)
	c(m.requests, st.Requests)
	c(m.chunks, st.ChunksFetched)
	c(m.verify, st.VerifyFailures)
	c(m.errs, st.Errors)
	c(m.retries, st.Retries)
	kinds := map[Kind]int{KindImage: 0, KindLayer: 0}
	m.n.mu.Lock()
	es := make(map[string]*mountEntry, len(m.n.mounts))
	for d, e := range m.n.mounts {
		es[d] = e
		kinds[e.kind]++
	}
	m.n.mu.Unlock()
	for k, v := range kinds {
		ch <- prometheus.MustNewConstMetric(m.mounts, prometheus.GaugeValue, float64(v), string(k))
	}
	for d, e := range es {
		s := e.m.Stats()
		ch <- prometheus.MustNewConstMetric(m.imageSize, prometheus.GaugeValue, float64(s.ImageSize), d, e.ref, e.layer)
		ch <- prometheus.MustNewConstMetric(m.imageFetched, prometheus.GaugeValue, float64(s.Fetched.Bytes), d, e.ref, e.layer)
		if p := s.Prefetch; p != nil {
			g := func(desc *prometheus.Desc, v int64) {
				ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(v), d, e.ref, e.layer)
			}
			g(m.profileChunks, p.ProfileChunks)
			g(m.profileLocal, p.ProfileLocal)
			g(m.mountChunks, p.ImageChunks)
			g(m.localChunks, p.ImageLocal)
		}
	}
}

// MetricsHandler serves the node's collectors in the Prometheus text format
// from a registry of its own (no global state).
func (n *Node) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	for _, c := range n.Collectors() {
		reg.MustRegister(c)
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
