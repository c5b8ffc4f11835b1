package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// needLink skips unless this test can make network namespaces.
func needLink(t *testing.T) *Link {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, veth, tc")
	}
	for _, b := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (iproute2)", b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := NewLink(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat("/run/netns/" + l.Namespace); err == nil {
			t.Errorf("namespace %s left behind", l.Namespace)
		}
	})
	return l
}

// serveBytes serves n bytes to every connection, from inside the link's
// namespace.
func serveBytes(t *testing.T, l *Link, n int64) string {
	t.Helper()
	ln, err := l.Listen(l.PeerIP.String() + ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for left := n; left > 0; {
					k, err := c.Write(buf[:min(int64(len(buf)), left)])
					if err != nil {
						return
					}
					left -= int64(k)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestLinkShapingAccuracy checks the shaper, not our code's speed: a fixed
// amount moved through a link shaped to R arrives at R within 10%, measured
// on the wire (the veth's byte counter, what tbf meters) over the transfer.
// The bucket's burst is subtracted: it leaves at line rate.
func TestLinkShapingAccuracy(t *testing.T) {
	l := needLink(t)
	ctx := context.Background()
	const rate = 100e6 // bits/s
	if err := l.Shape(ctx, rate); err != nil {
		t.Fatal(err)
	}
	const size = 12 << 20 // ~1 s at 100 Mbit/s
	addr := serveBytes(t, l, size)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	// Start the clock after the first bucket's worth has arrived.
	burst := Burst(rate)
	if _, err := io.CopyN(io.Discard, c, burst); err != nil {
		t.Fatal(err)
	}
	c0, err := l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	c1, _ := l.Counters()
	if got != size-burst {
		t.Fatalf("received %d bytes, want %d", got, size-burst)
	}
	wire := float64(c1.Sub(c0).RxBytes) * 8 / elapsed.Seconds()
	payload := float64(got) * 8 / elapsed.Seconds()
	t.Logf("set %.0f Mbit/s: wire %.1f Mbit/s, payload %.1f Mbit/s (%d bytes in %v)", rate/1e6, wire/1e6, payload/1e6, got, elapsed)
	if wire < 0.9*rate || wire > 1.1*rate {
		t.Errorf("wire rate %.1f Mbit/s is not within 10%% of the set %.0f Mbit/s", wire/1e6, rate/1e6)
	}

	// Unshaping lifts the limit (checked as well above the set rate, so a
	// loaded machine does not fail it).
	if err := l.Shape(ctx, 0); err != nil {
		t.Fatal(err)
	}
	c2, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	start = time.Now()
	if _, err := io.Copy(io.Discard, c2); err != nil {
		t.Fatal(err)
	}
	if r := float64(size) * 8 / time.Since(start).Seconds(); r < 2*rate {
		t.Errorf("unshaped link moved only %.0f Mbit/s", r/1e6)
	}
}

// TestLinkCounting checks that a sample's bytes and requests are counted:
// the veth counters see at least the payload and no more than the payload
// plus header overhead, the registry counts each request exactly once.
func TestLinkCounting(t *testing.T) {
	l := needLink(t)
	ln, err := l.Listen(l.PeerIP.String() + ":0")
	if err != nil {
		t.Fatal(err)
	}
	reg := StartInProcess(ln)
	defer reg.Close()
	img, err := random.Image(3<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(reg.Host()+"/count/me:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	var want int64
	for _, ly := range layers {
		n, _ := ly.Size()
		want += n
	}

	c0, _ := l.Counters()
	r0, _ := reg.Requests()
	client := &http.Client{Timeout: 30 * time.Second}
	for _, ly := range layers {
		d, _ := ly.Digest()
		resp, err := client.Get(fmt.Sprintf("http://%s/v2/count/me/blobs/%s", reg.Host(), d))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := client.Get("http://" + reg.Host() + "/v2/count/me/blobs/sha256:" + strings.Repeat("0", 64))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c1, _ := l.Counters()
	r1, _ := reg.Requests()

	reqs := r1.Sub(r0)
	if reqs.Requests != 3 || reqs.Errors != 1 {
		t.Errorf("requests %+v, want 3 with 1 error", reqs)
	}
	if reqs.ResponseBytes < want || reqs.ResponseBytes > want+1024 {
		t.Errorf("response bytes %d, want %d (+ a small error body)", reqs.ResponseBytes, want)
	}
	rx := c1.Sub(c0).RxBytes
	if rx < want || float64(rx) > float64(want)*1.10+64<<10 {
		t.Errorf("link counted %d bytes received for %d bytes of payload", rx, want)
	}
	t.Logf("payload %d bytes, link %d bytes (%.1f%% overhead), %d requests", want, rx, 100*float64(rx-want)/float64(want), reqs.Requests)
}

// TestProxyLatency checks the latency proxy's emulation: a request/response
// through it takes at least the set RTT plus one for the handshake, and the
// proxy counts the connection and the bytes.
func TestProxyLatency(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const rtt = 40 * time.Millisecond
	p, err := StartProxy("127.0.0.1:0", ln.Addr().String(), rtt)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The emulated handshake starts when the proxy accepts, which can be
	// before Dial returns, so the first round trip is timed from the dial.
	start := time.Now()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 5)
	for i := range 3 {
		if i > 0 {
			start = time.Now()
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		want := rtt
		if i == 0 {
			want += rtt // the emulated handshake
		}
		if d := time.Since(start); d < want {
			t.Errorf("round trip %d took %v, want at least %v", i, d, want)
		}
	}
	c.Close()
	if err := waitFor(context.Background(), "proxy counts", 5*time.Second, 10*time.Millisecond, func() error {
		if got := p.Counts(); got != (ProxyCounts{Connections: 1, BytesUp: 15, BytesDown: 15}) {
			return fmt.Errorf("counts %+v", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if _, err := StartProxy("127.0.0.1:0", "x", -time.Second); err == nil {
		t.Error("negative rtt accepted")
	}
}
