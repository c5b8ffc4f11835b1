package prewarm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// FirstOpResult times one process's way to its first completed CUDA
// operation. DoneUnixNano is the wall clock (CLOCK_REALTIME) when the
// operation completed, so a parent that noted the time before starting the
// process can compute time-to-first-op across the exec.
type FirstOpResult struct {
	UUID         string  `json:"uuid,omitempty"`
	InitMs       float64 `json:"init_ms"`
	RetainMs     float64 `json:"retain_ms"`
	OpMs         float64 `json:"op_ms"`
	ClaimMs      float64 `json:"claim_ms,omitempty"`
	DoneUnixNano int64   `json:"done_unix_nano"`
}

// FirstOp runs cuInit, retains the primary context and runs one small
// operation (1 MiB alloc, memset, synchronise, free).
func FirstOp(drv Driver) (FirstOpResult, error) {
	var r FirstOpResult
	t0 := time.Now()
	if err := drv.Init(); err != nil {
		return r, err
	}
	t1 := time.Now()
	c, err := drv.Retain(0)
	if err != nil {
		return r, err
	}
	defer c.Release()
	t2 := time.Now()
	if err := c.Op(); err != nil {
		return r, err
	}
	t3 := time.Now()
	r.UUID = c.UUID()
	r.InitMs, r.RetainMs, r.OpMs = ms(t1.Sub(t0)), ms(t2.Sub(t1)), ms(t3.Sub(t2))
	r.DoneUnixNano = t3.UnixNano()
	return r, nil
}

// ServeWorker is the reference warm worker: it retains the primary context
// (plus allocBytes), listens on socket, prints "READY {json}" to out and
// answers one line per request until ctx is done:
//
//	"op"    → runs Context.Op, answers "ok <unix-nanoseconds when done>"
//	"check" → the same op, answers "ok <unix-nanoseconds> 0" (a worker
//	          holding data answers its checksum, verified, instead of 0)
//	"ping"  → "pong"
//	"exit" → "bye", then ServeWorker returns
//
// Anything else answers "error unknown command".
func ServeWorker(ctx context.Context, drv Driver, socket string, allocBytes uint64, out io.Writer) error {
	if socket == "" {
		return fmt.Errorf("worker: LAZYFS_WORKER_SOCKET not set: %w", ErrBadRequest)
	}
	t0 := time.Now()
	if err := drv.Init(); err != nil {
		fmt.Fprintf(out, "ERROR %s\n", oneLine(err.Error()))
		return err
	}
	t1 := time.Now()
	c, err := drv.Retain(allocBytes)
	if err != nil {
		fmt.Fprintf(out, "ERROR %s\n", oneLine(err.Error()))
		return err
	}
	defer c.Release()
	l, err := workerListener(socket)
	if err != nil {
		fmt.Fprintf(out, "ERROR %s\n", oneLine(err.Error()))
		return err
	}
	b, _ := json.Marshal(HolderReady{PID: os.Getpid(), UUID: c.UUID(), AllocBytes: allocBytes, InitMs: ms(t1.Sub(t0)), RetainMs: ms(time.Since(t1))})
	fmt.Fprintf(out, "READY %s\n", b)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			br := bufio.NewReader(conn)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				switch strings.TrimSpace(line) {
				case "op":
					if err := c.Op(); err != nil {
						fmt.Fprintf(conn, "error %s\n", oneLine(err.Error()))
						continue
					}
					fmt.Fprintf(conn, "ok %d\n", time.Now().UnixNano())
				case "check":
					if err := c.Op(); err != nil {
						fmt.Fprintf(conn, "error %s\n", oneLine(err.Error()))
						continue
					}
					fmt.Fprintf(conn, "ok %d 0\n", time.Now().UnixNano())
				case "ping":
					fmt.Fprintln(conn, "pong")
				case "exit":
					fmt.Fprintln(conn, "bye")
					cancel()
					return
				default:
					fmt.Fprintln(conn, "error unknown command")
				}
			}
		}()
	}
}

// WorkerOp asks a warm worker on socket to run one operation and returns
// the wall clock (unix nanoseconds) at which the worker finished it.
func WorkerOp(ctx context.Context, socket string) (int64, error) {
	n, _, err := workerRequest(ctx, socket, "op")
	return n, err
}

// WorkerCheck asks a warm worker to verify the data it holds on the GPU
// (recomputing its checksum there) and run one op; it returns when the
// worker finished and the checksum it reported.
func WorkerCheck(ctx context.Context, socket string) (int64, string, error) {
	return workerRequest(ctx, socket, "check")
}

func workerRequest(ctx context.Context, socket, req string) (int64, string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, "", fmt.Errorf("worker %s: %w", socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, req+"\n"); err != nil {
		return 0, "", fmt.Errorf("worker %s: %w", socket, err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, maxWorkerLine)).ReadString('\n')
	if err != nil {
		return 0, "", fmt.Errorf("worker %s: %s: %w", socket, req, err)
	}
	n, sum, err := parseWorkerAnswer(line)
	if err != nil {
		return 0, "", fmt.Errorf("worker %s: %s: %w", socket, req, err)
	}
	return n, sum, nil
}

// maxWorkerLine bounds one line a worker sends (READY or an answer).
const maxWorkerLine = 64 << 10

// parseWorkerAnswer parses "ok <unix-ns> [checksum]".
func parseWorkerAnswer(line string) (int64, string, error) {
	f := strings.Fields(line)
	if len(f) < 2 || len(f) > 3 || f[0] != "ok" {
		return 0, "", fmt.Errorf("answered %q", strings.TrimSpace(line))
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n <= 0 {
		return 0, "", errors.Join(fmt.Errorf("bad answer %q", strings.TrimSpace(line)), err)
	}
	sum := ""
	if len(f) == 3 {
		sum = f[2]
	}
	return n, sum, nil
}

// workerListener returns the listening socket the daemon passed in
// (EnvWorkerFD), or binds socket itself when run by hand.
func workerListener(socket string) (net.Listener, error) {
	if v := os.Getenv(EnvWorkerFD); v != "" {
		fd, err := strconv.Atoi(v)
		if err != nil || fd < 3 {
			return nil, fmt.Errorf("worker: %s=%q: want an inherited fd >= 3: %w", EnvWorkerFD, v, ErrBadRequest)
		}
		f := os.NewFile(uintptr(fd), "worker-socket")
		defer f.Close()
		l, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("worker: listening socket fd %d: %w", fd, err)
		}
		return l, nil
	}
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	os.Chmod(socket, 0o600)
	return l, nil
}
