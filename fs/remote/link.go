package remote

import (
	"sync"
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
// So is what all responses together delivered while at least one was
// streaming: a response's sample is the faster of its own rate and that
// one (the bytes that the responses ended since such a busy period began
// delivered after their first chunks, over the period's time so far).
// Responses in parallel share the link, and on a busy node they share the
// CPU that reads them, so each alone can measure under what they move
// together: a cold 1 GiB read on loopback, whose mount read ~200 MB/s as a
// whole, was judged slow by fs.Root (none of its first eight responses
// reached 48 MiB/s alone).
//
// It also keeps the shortest time from a range request to its response's
// headers: the round trip plus the registry's own time.
//
// A link changes while a daemon runs (another route, a congested uplink),
// so the measure ages: it keeps what it saw in the current and the previous
// LinkWindow, and forgets what is older.
type linkMeter struct {
	now func() time.Time // time.Now; tests set it

	mu    sync.Mutex
	start time.Time     // of the current window
	win   [2]linkWindow // [0] current, [1] previous

	// The busy period: streaming counts the responses past their first
	// chunk and not yet ended; busySince is when it last went from 0 to 1,
	// busyBytes what the responses ended since delivered after their first
	// chunks.
	streaming int
	busySince time.Time
	busyBytes int64
}

// LinkWindow is how long a measure of the link counts: what LinkRate
// reports comes from the last one to two windows.
const LinkWindow = 5 * time.Minute

// linkWindow is what one window saw.
type linkWindow struct {
	max, samples int64
	rtt          time.Duration // 0: none
}

// roll moves to the window holding t (m.mu held).
func (m *linkMeter) roll(t time.Time) {
	switch age := t.Sub(m.start); {
	case m.start.IsZero():
		m.start = t
	case age >= 2*LinkWindow:
		m.win = [2]linkWindow{}
		m.start = t
	case age >= LinkWindow:
		m.win[1], m.win[0] = m.win[0], linkWindow{}
		m.start = m.start.Add(LinkWindow)
	}
}

func (m *linkMeter) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// observeRTT records that a response's headers came d after its request.
func (m *linkMeter) observeRTT(d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roll(m.clock())
	if w := &m.win[0]; w.rtt == 0 || d < w.rtt {
		w.rtt = d
	}
}

// begin records that a response's first chunk has arrived; every begin is
// followed by one end.
func (m *linkMeter) begin() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streaming == 0 {
		m.busySince, m.busyBytes = m.clock(), 0
	}
	m.streaming++
}

// end records the end of a response begun with begin. When it delivered all
// of its total bytes (ok), of which the last n (those after its first
// chunk) took d, it is a sample: the faster of its own rate and its busy
// period's.
func (m *linkMeter) end(total, n int64, d time.Duration, ok bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	m.streaming--
	if !ok {
		return
	}
	m.busyBytes += n
	if total < LinkSampleBytes || 2*n < LinkSampleBytes || d <= 0 {
		return
	}
	rate := int64(float64(n) / d.Seconds())
	if busy := now.Sub(m.busySince); busy > 0 {
		rate = max(rate, int64(float64(m.busyBytes)/busy.Seconds()))
	}
	m.roll(now)
	w := &m.win[0]
	w.max = max(w.max, rate)
	w.samples++
}

// rate returns the fastest rate, the samples and the shortest round trip of
// the current and the previous window.
func (m *linkMeter) rate() (int64, int64, time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.roll(m.clock())
	a, b := m.win[0], m.win[1]
	rtt := a.rtt
	if rtt == 0 || b.rtt != 0 && b.rtt < rtt {
		rtt = b.rtt
	}
	return max(a.max, b.max), a.samples + b.samples, rtt
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
// registry in the last LinkWindow or two, shared by every blob of that
// registry: the fastest rate in compressed bytes per second (0 without a
// sample), the number of responses measured, and the shortest round trip
// (0 without a response).
// fs.Root takes it as fs.LinkMeter.
func (b *Blob) LinkRate() (bytesPerSecond, samples int64, rtt time.Duration) {
	return b.link.rate()
}
