package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP forwarder that adds round-trip latency: every byte is held
// for half the RTT in each direction, and each new connection waits one RTT
// before it is forwarded (the handshake a real path would cost). Throughput
// is not limited by the delay: data in flight is queued, not stopped.
// It counts connections and bytes in both directions.
type Proxy struct {
	ln       net.Listener
	target   string
	rtt      time.Duration
	conns    atomic.Int64
	up, down atomic.Int64
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// ProxyCounts are a proxy's cumulative counts.
type ProxyCounts struct {
	Connections int64
	BytesUp     int64 // client to target
	BytesDown   int64 // target to client
}

// StartProxy listens on listen (e.g. "127.0.0.1:0") and forwards to target.
func StartProxy(listen, target string, rtt time.Duration) (*Proxy, error) {
	if rtt < 0 {
		return nil, fmt.Errorf("proxy to %s: negative rtt %v", target, rtt)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, rtt: rtt, ctx: ctx, cancel: cancel}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is host:port where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Counts returns the cumulative counts.
func (p *Proxy) Counts() ProxyCounts {
	return ProxyCounts{Connections: p.conns.Load(), BytesUp: p.up.Load(), BytesDown: p.down.Load()}
}

// Close stops listening and closes every forwarded connection.
func (p *Proxy) Close() error {
	p.cancel()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(c)
		}()
	}
}

func (p *Proxy) forward(c net.Conn) {
	defer c.Close()
	if !sleepCtx(p.ctx, p.rtt) {
		return
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	t, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		return
	}
	defer t.Close()
	stop := context.AfterFunc(p.ctx, func() { c.Close(); t.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	go func() { delayCopy(t, c, p.rtt/2, &p.up); done <- struct{}{} }()
	go func() { delayCopy(c, t, p.rtt/2, &p.down); done <- struct{}{} }()
	<-done
	// One direction ended: let the other drain for a moment, then close both.
	select {
	case <-done:
	case <-time.After(p.rtt + 5*time.Second):
	}
}

type packet struct {
	b  []byte
	at time.Time
}

// delayCopy copies src to dst, releasing each read delay after it arrived.
// When src ends, dst's write side is closed after the queue drains.
func delayCopy(dst, src net.Conn, delay time.Duration, n *atomic.Int64) {
	q := make(chan packet, 4096)
	go func() {
		defer close(q)
		buf := make([]byte, 64<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				// Copy only what arrived: a shaped stream comes in
				// segments, and a 64 KiB buffer each would be garbage.
				q <- packet{append([]byte(nil), buf[:k]...), time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for pk := range q {
		if w := time.Until(pk.at); w > 0 {
			time.Sleep(w)
		}
		k, err := dst.Write(pk.b)
		n.Add(int64(k))
		if err != nil {
			for range q { // unblock the reader
			}
			return
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// permanentError stops waitFor: waiting longer cannot help (the process
// being waited for exited).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// permanent marks err as one waitFor must not retry.
func permanent(err error) error { return &permanentError{err} }

// waitFor polls cond every interval until it returns nil or a permanent
// error, ctx ends or timeout passes; it returns cond's last error wrapped
// with what.
func waitFor(ctx context.Context, what string, timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if pe, ok := err.(*permanentError); ok {
			return fmt.Errorf("%s: %w", what, pe.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v: %w", what, timeout, err)
		}
		if !sleepCtx(ctx, interval) {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
	}
}

var _ io.Closer = (*Proxy)(nil)
