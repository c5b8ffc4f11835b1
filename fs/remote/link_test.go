package remote

import (
	"context"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// TestLinkRate: the link's rate is timed from a response's first chunk, so
// a registry that answers late but sends fast measures fast; a slow body
// measures slow; responses under LinkSampleBytes are not samples; each
// registry has its own measure.
func TestLinkRate(t *testing.T) {
	const cs = 256 << 10
	l := newLayer(t, []toctest.File{{Hdr: toctest.AllTypes(0)[2].Hdr, Data: toctest.Random(3, 8*cs)}}, cs)
	chunks := l.res.TOC.Chunks
	if len(chunks) != 8 {
		t.Fatalf("%d chunks, want 8", len(chunks))
	}
	fl := &faults{}
	_, host := newRegistry(t, fl.wrap)
	push(t, host, "lazy/img:v1", l)
	_, other := newRegistry(t, nil)
	push(t, other, "lazy/img:v1", l)
	ctx := context.Background()

	f := newFetcher(t)
	b := f.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	b2 := f.Blob(repoOf(t, other, "lazy/img"), l.digest(), l.res.Size)

	// Under LinkSampleBytes (two 256 KiB incompressible chunks): no sample.
	if _, err := fetchAll(ctx, b, chunks[:2]); err != nil {
		t.Fatal(err)
	}
	rate0, n0, rtt0 := b.LinkRate()
	if rate0 != 0 || n0 != 0 || rtt0 <= 0 {
		t.Fatalf("after a 512 KiB response: LinkRate() = %d, %d, %v; want no sample and a round trip", rate0, n0, rtt0)
	}

	// A late answer (300 ms before the headers), then the body at
	// loopback speed: the measure leaves the wait out.
	const late = 300 * time.Millisecond
	fl.set(func(f *faults) { f.latency = late })
	start := time.Now()
	if _, err := fetchAll(ctx, b, chunks[2:8]); err != nil {
		t.Fatal(err)
	}
	whole := time.Since(start)
	rate, n, rtt := b.LinkRate()
	if n != 1 {
		t.Fatalf("after a 1.5 MiB response: %d samples, want 1", n)
	}
	if rtt != rtt0 {
		t.Errorf("round trip %v after a late answer, want the shortest, %v", rtt, rtt0)
	}
	body := int64(chunks[7].CompressedOffset + int64(chunks[7].CompressedSize) - chunks[2].CompressedOffset)
	if wholeRate := float64(body) / whole.Seconds(); float64(rate) < 2*wholeRate {
		// rate ≈ body/T and wholeRate ≤ body/(late+T): twice it unless the
		// body itself took longer than the 300 ms wait.
		t.Errorf("late answer: LinkRate() = %d B/s, the whole request's rate %.0f B/s: the wait is in the measure", rate, wholeRate)
	}
	if r2, n2, rtt2 := b2.LinkRate(); r2 != 0 || n2 != 0 || rtt2 != 0 {
		t.Errorf("another registry's blob: LinkRate() = %d, %d, %v; want its own, empty measure", r2, n2, rtt2)
	}

	// A slow body (a pause before every 8 KiB: at most 8 MiB/s at 1 ms)
	// after a late answer, on a second fetcher: slower than 8 MiB/s,
	// whatever the machine, and a round trip of at least the wait.
	fl.set(func(f *faults) { f.trickle = time.Millisecond })
	f2 := newFetcher(t)
	slow := f2.Blob(repoOf(t, host, "lazy/img"), l.digest(), l.res.Size)
	if _, err := fetchAll(ctx, slow, chunks[:6]); err != nil {
		t.Fatal(err)
	}
	if rate, n, rtt := slow.LinkRate(); n != 1 || rate <= 0 || rate > 8<<20 || rtt < late {
		t.Errorf("slow body after %v: LinkRate() = %d B/s over %d samples, round trip %v; want one sample of at most %d, a round trip of at least the wait",
			late, rate, n, rtt, 8<<20)
	}

	// A response cut after its first chunks ends its part of the busy
	// period too: a meter left counting it would credit every later
	// response with a period that never ends.
	fl.set(func(f *faults) { f.trickle, f.latency, f.midResets = 0, 0, 1 })
	if _, err := fetchAll(ctx, b, chunks); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*linkMeter{b.link, slow.link} {
		m.mu.Lock()
		n := m.streaming
		m.mu.Unlock()
		if n != 0 {
			t.Errorf("after every fetch ended (one cut short): %d responses still streaming", n)
		}
	}
}

// observe records a response alone on the link: total bytes, the last n of
// which took d.
func (m *linkMeter) observe(total, n int64, d time.Duration) {
	m.begin()
	m.end(total, n, d, true)
}

// TestLinkMeterBusyPeriod: responses that overlap are measured together
// (the link carried all their bytes in the time they shared), a response
// after a quiet gap only by itself, and one that failed is no sample and
// adds nothing.
func TestLinkMeterBusyPeriod(t *testing.T) {
	now := time.Unix(1700000000, 0)
	m := &linkMeter{now: func() time.Time { return now }}
	const n = 4 << 20
	d := 400 * time.Millisecond
	alone := int64(float64(n) / d.Seconds()) // ~10.5 MB/s
	for range 4 {
		m.begin()
	}
	now = now.Add(d)
	for range 4 {
		m.end(n, n, d, true)
	}
	if r, k, _ := m.rate(); k != 4 || r < 4*alone*99/100 {
		t.Errorf("four 4 MiB responses in the same 400 ms: %d B/s over %d samples; want about %d (each alone: %d)", r, k, 4*alone, alone)
	}

	m = &linkMeter{now: func() time.Time { return now }}
	m.begin()
	now = now.Add(d)
	m.end(n, n, d, true)
	now = now.Add(time.Second) // quiet
	m.begin()
	now = now.Add(d)
	m.end(n, n, d, true)
	if r, k, _ := m.rate(); k != 2 || r > alone*101/100 {
		t.Errorf("two 4 MiB responses a second apart: %d B/s over %d samples; want each alone's, %d", r, k, alone)
	}

	m = &linkMeter{now: func() time.Time { return now }}
	m.begin()
	m.begin()
	now = now.Add(d)
	m.end(n, n, d, false) // failed: no sample, no bytes
	m.end(n, n, d, true)
	if r, k, _ := m.rate(); k != 1 || r > alone*101/100 || m.streaming != 0 {
		t.Errorf("a failed and a whole response together: %d B/s over %d samples, %d streaming; want the whole one's %d over 1, none streaming", r, k, m.streaming, alone)
	}
}

// TestLinkMeterAges: the measure keeps the current and the previous
// LinkWindow: a fast link that turned slow reads slow once its fast
// responses are two windows old, and a quiet link forgets everything.
func TestLinkMeterAges(t *testing.T) {
	now := time.Unix(1700000000, 0)
	m := &linkMeter{now: func() time.Time { return now }}
	if r, n, rtt := m.rate(); r != 0 || n != 0 || rtt != 0 {
		t.Fatalf("new meter: %d, %d, %v", r, n, rtt)
	}
	fast := func() { m.observe(4<<20, 4<<20, 40*time.Millisecond) }  // ~105 MB/s
	slow := func() { m.observe(4<<20, 4<<20, 400*time.Millisecond) } // ~10 MB/s
	fast()
	m.observeRTT(2 * time.Millisecond)
	fastRate, _, _ := m.rate()

	now = now.Add(LinkWindow + time.Second) // the previous window still counts
	slow()
	m.observeRTT(30 * time.Millisecond)
	if r, n, rtt := m.rate(); r != fastRate || n != 2 || rtt != 2*time.Millisecond {
		t.Errorf("one window later: %d B/s over %d, %v; want the fast %d over 2, 2ms", r, n, rtt, fastRate)
	}

	now = now.Add(LinkWindow) // the fast response is two windows old
	slow()
	if r, n, rtt := m.rate(); r >= fastRate/2 || n != 2 || rtt != 30*time.Millisecond {
		t.Errorf("two windows later: %d B/s over %d, %v; want the slow rate over 2, 30ms", r, n, rtt)
	}

	now = now.Add(2 * LinkWindow) // quiet: nothing counts
	if r, n, rtt := m.rate(); r != 0 || n != 0 || rtt != 0 {
		t.Errorf("after two quiet windows: %d, %d, %v; want nothing", r, n, rtt)
	}
}
