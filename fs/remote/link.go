package remote

import (
	"sync/atomic"
	"time"
)

// LinkSampleBytes is the smallest range response (compressed bytes) the
// link's measure counts; at least half of it must come after the first chunk.
const LinkSampleBytes = 1 << 20

// linkMeter measures the link to one registry: the fastest rate at which
// a range response of at least LinkSampleBytes delivered its body after its
// first chunk, and how many such responses it measured (Blob.LinkRate).
//
// The clock starts when the first chunk of a response has arrived, so the
// round trip and the registry's time to first byte are not in it: a fast
// link to a registry tens of milliseconds away measures as fast, where a
// response's whole duration would make it look slow (1 MiB at 1 Gbit/s with
// a 30 ms round trip: 26-28 MB/s over the whole request against ~110 MB/s
// for the body). The fastest response is a lower bound of the link's rate
// whatever else shared the link at the time.
//
// It also keeps the shortest time from a range request to its response's
// headers: the round trip plus the registry's own time.
type linkMeter struct {
	max, samples atomic.Int64
	rtt          atomic.Int64 // ns; 0: none yet
}

// observeRTT records that a response's headers came d after its request.
func (m *linkMeter) observeRTT(d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	for {
		cur := m.rtt.Load()
		if cur != 0 && int64(d) >= cur || m.rtt.CompareAndSwap(cur, int64(d)) {
			break
		}
	}
}

// observe records a response of total bytes whose last n bytes (those after
// its first chunk) took d.
func (m *linkMeter) observe(total, n int64, d time.Duration) {
	if m == nil || total < LinkSampleBytes || 2*n < LinkSampleBytes || d <= 0 {
		return
	}
	rate := int64(float64(n) / d.Seconds())
	for {
		cur := m.max.Load()
		if rate <= cur || m.max.CompareAndSwap(cur, rate) {
			break
		}
	}
	m.samples.Add(1)
}

// linkFor returns the meter of the link to registry host reg (created on
// first use).
func (f *Fetcher) linkFor(reg string) *linkMeter {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.links[reg]
	if m == nil {
		m = &linkMeter{}
		f.links[reg] = m
	}
	return m
}

// LinkRate returns what the Fetcher measured of the link to the blob's
// registry, shared by every blob of that registry: the fastest rate in
// compressed bytes per second (0 before any sample), the number of
// responses measured, and the shortest round trip (0 before any response).
// fs.Root takes it as fs.LinkMeter.
func (b *Blob) LinkRate() (bytesPerSecond, samples int64, rtt time.Duration) {
	return b.link.max.Load(), b.link.samples.Load(), time.Duration(b.link.rtt.Load())
}
