package blobcache

import "github.com/prometheus/client_golang/prometheus"

// NewCollector returns a Prometheus collector that exports c.Stats() at each
// scrape as lazyfs_blobcache_* metrics, with constLabels (for example the
// cache directory) on every series. Register it once per cache.
func NewCollector(c Cache, constLabels prometheus.Labels) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("lazyfs", "blobcache", name), help, nil, constLabels)
	}
	return &collector{c: c, descs: []metricDesc{
		{d("hits_total", "Get calls that returned a chunk."), prometheus.CounterValue, func(s *Stats) int64 { return s.Hits }},
		{d("misses_total", "Get calls that found no (intact) chunk."), prometheus.CounterValue, func(s *Stats) int64 { return s.Misses }},
		{d("stored_bytes_total", "Chunk bytes newly stored by Put."), prometheus.CounterValue, func(s *Stats) int64 { return s.BytesIn }},
		{d("served_bytes_total", "Chunk bytes returned by Get."), prometheus.CounterValue, func(s *Stats) int64 { return s.BytesOut }},
		{d("puts_total", "Put calls that stored a new chunk."), prometheus.CounterValue, func(s *Stats) int64 { return s.Puts }},
		{d("dedups_total", "Put calls for a chunk already stored."), prometheus.CounterValue, func(s *Stats) int64 { return s.Dedups }},
		{d("evictions_total", "Chunks evicted to make room."), prometheus.CounterValue, func(s *Stats) int64 { return s.Evictions }},
		{d("evicted_bytes_total", "Bytes of the chunks evicted."), prometheus.CounterValue, func(s *Stats) int64 { return s.EvictedBytes }},
		{d("corrupt_total", "Chunks found corrupt on Get and dropped."), prometheus.CounterValue, func(s *Stats) int64 { return s.Corrupt }},
		{d("gc_rewrites_total", "Value-log and segment files rewritten by garbage collection."), prometheus.CounterValue, func(s *Stats) int64 { return s.GCRuns }},
		{d("nospace_total", "Put calls refused because the disk was below the free-space reserve or full."), prometheus.CounterValue, func(s *Stats) int64 { return s.NoSpace }},
		{d("entries", "Chunks stored."), prometheus.GaugeValue, func(s *Stats) int64 { return s.Entries }},
		{d("size_bytes", "Bytes of chunk data stored."), prometheus.GaugeValue, func(s *Stats) int64 { return s.Size }},
		{d("capacity_bytes", "Bound on size_bytes."), prometheus.GaugeValue, func(s *Stats) int64 { return s.Capacity }},
		{d("pinned_entries", "Stored chunks that are pinned."), prometheus.GaugeValue, func(s *Stats) int64 { return s.Pinned }},
		{d("disk_bytes", "Disk space the cache directory occupies."), prometheus.GaugeValue, func(s *Stats) int64 { return s.DiskSize }},
		{d("disk_limit_bytes", "Bound on disk_bytes after a collection."), prometheus.GaugeValue, func(s *Stats) int64 { return s.DiskLimit }},
	}}
}

type metricDesc struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*Stats) int64
}

type collector struct {
	c     Cache
	descs []metricDesc
}

func (x *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range x.descs {
		ch <- m.desc
	}
}

func (x *collector) Collect(ch chan<- prometheus.Metric) {
	s := x.c.Stats()
	for _, m := range x.descs {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, float64(m.value(&s)))
	}
}
