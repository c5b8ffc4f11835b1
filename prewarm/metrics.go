package prewarm

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lazyfs/lazyfs/prewarm/api"
)

// Metrics holds the daemon's Prometheus collectors on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	state       *prometheus.GaugeVec
	heldBytes   *prometheus.GaugeVec
	freeBytes   *prometheus.GaugeVec
	claim       *prometheus.HistogramVec
	release     *prometheus.HistogramVec
	holderExits *prometheus.CounterVec
	reportOnly  prometheus.Gauge
	imageWarms  *prometheus.CounterVec

	workerState          *prometheus.GaugeVec
	workerSuspendedBytes *prometheus.GaugeVec
	workerResume         *prometheus.HistogramVec
	workerSuspend        *prometheus.HistogramVec
	workerEvents         *prometheus.CounterVec
}

// NewMetrics registers the collectors on a fresh registry (plus the Go and
// process collectors).
func NewMetrics() *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_gpu_state", Help: "1 for the GPU's current state, 0 for the others.",
		}, []string{"uuid", "state"}),
		heldBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_gpu_held_bytes", Help: "GPU memory used by the daemon's own holder or warm worker.",
		}, []string{"uuid"}),
		freeBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_gpu_free_bytes", Help: "GPU memory free, as NVML reports it.",
		}, []string{"uuid"}),
		claim: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lazyfs_prewarm_claim_seconds", Help: "Time to serve a claim, holder release included.", Buckets: buckets,
		}, []string{"uuid"}),
		release: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lazyfs_prewarm_holder_release_seconds", Help: "Time from killing a holder to its exit (context torn down).", Buckets: buckets,
		}, []string{"uuid"}),
		holderExits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazyfs_prewarm_holder_failures_total", Help: "Holders or warm workers that failed to start or exited on their own.",
		}, []string{"uuid", "reason"}),
		reportOnly: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_report_only", Help: "1 when the daemon manages no GPU (no driver or no GPU).",
		}),
		imageWarms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazyfs_prewarm_image_warms_total", Help: "Image warm attempts by result (ok, error).",
		}, []string{"ref", "result"}),
		workerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_worker_state", Help: "1 for the model worker's current state, 0 for the others.",
		}, []string{"worker", "state"}),
		workerSuspendedBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lazyfs_prewarm_worker_suspended_bytes", Help: "Host memory the suspended model worker's GPU checkpoint takes.",
		}, []string{"worker"}),
		workerResume: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lazyfs_prewarm_worker_resume_seconds", Help: "Time to restore a suspended model worker's GPU memory and unlock it.", Buckets: buckets,
		}, []string{"worker"}),
		workerSuspend: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lazyfs_prewarm_worker_suspend_seconds", Help: "Time to lock and checkpoint a model worker into host memory.", Buckets: buckets,
		}, []string{"worker"}),
		workerEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazyfs_prewarm_worker_events_total", Help: "Model worker events: cold_start, resume, eviction, failure.",
		}, []string{"worker", "event"}),
	}
	m.Registry.MustRegister(m.workerState, m.workerSuspendedBytes, m.workerResume, m.workerSuspend, m.workerEvents)
	m.Registry.MustRegister(m.state, m.heldBytes, m.freeBytes, m.claim, m.release, m.holderExits, m.reportOnly, m.imageWarms,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) setState(uuid string, s State) {
	if m == nil {
		return
	}
	for _, st := range AllStates {
		v := 0.0
		if st == s {
			v = 1
		}
		m.state.WithLabelValues(uuid, string(st)).Set(v)
	}
}

func (m *Metrics) forget(uuid string) {
	if m == nil {
		return
	}
	m.state.DeletePartialMatch(prometheus.Labels{"uuid": uuid})
	m.heldBytes.DeleteLabelValues(uuid)
	m.freeBytes.DeleteLabelValues(uuid)
}

func (m *Metrics) setWorkerState(name string, s WorkerState) {
	if m == nil {
		return
	}
	for _, st := range api.AllWorkerStates {
		v := 0.0
		if st == s {
			v = 1
		}
		m.workerState.WithLabelValues(name, string(st)).Set(v)
	}
}

func (m *Metrics) workerEvent(name, event string) {
	if m == nil {
		return
	}
	m.workerEvents.WithLabelValues(name, event).Inc()
}
