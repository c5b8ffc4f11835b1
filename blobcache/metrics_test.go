package blobcache_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazyfs/lazyfs/blobcache"
	"github.com/lazyfs/lazyfs/blobcache/blobcachetest"
)

func TestCollector(t *testing.T) {
	c := blobcache.NewMemory(blobcache.WithCapacity(1 << 20))
	data, d := blobcachetest.Chunk(1, 1000)
	ctx := context.Background()
	if err := c.Put(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, d); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(blobcache.NewCollector(c, prometheus.Labels{"dir": "/var/lib/lazyfs/cache"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if l := m.GetLabel(); len(l) != 1 || l[0].GetValue() != "/var/lib/lazyfs/cache" {
			t.Errorf("%s: labels %v", mf.GetName(), l)
		}
		if m.Counter != nil {
			got[mf.GetName()] = m.Counter.GetValue()
		} else {
			got[mf.GetName()] = m.Gauge.GetValue()
		}
	}
	for name, want := range map[string]float64{
		"lazyfs_blobcache_hits_total":         1,
		"lazyfs_blobcache_misses_total":       0,
		"lazyfs_blobcache_nospace_total":      0,
		"lazyfs_blobcache_stored_bytes_total": 1000,
		"lazyfs_blobcache_served_bytes_total": 1000,
		"lazyfs_blobcache_entries":            1,
		"lazyfs_blobcache_size_bytes":         1000,
		"lazyfs_blobcache_capacity_bytes":     1 << 20,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if len(got) != 17 {
		t.Errorf("%d metrics exported, want 17", len(got))
	}
}
