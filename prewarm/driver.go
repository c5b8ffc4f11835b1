package prewarm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Driver is the slice of the CUDA driver API that holders, warm workers and
// the first-op probe need. The cgo implementation dlopens libcuda.so.1; the
// device is always ordinal 0 because the daemon starts each child with
// CUDA_VISIBLE_DEVICES set to one GPU or MIG UUID.
type Driver interface {
	// Init runs cuInit(0).
	Init() error
	// Retain retains device 0's primary context and, when allocBytes > 0,
	// allocates that much device memory in it.
	Retain(allocBytes uint64) (Context, error)
}

// Context is a retained primary context.
type Context interface {
	// UUID is the device UUID as CUDA reports it ("GPU-…").
	UUID() string
	// Op runs one small device operation (alloc, memset, synchronise,
	// free) and returns when it completed.
	Op() error
	// Release frees the allocation and releases the primary context.
	Release() error
}

// EnvFakeCUDA, when set in a holder's or worker's environment, replaces the
// CUDA driver with FakeDriver: "1" holds by sleeping, "fail-init" fails
// cuInit, "fail-retain" fails the context, "hang" never gets ready. It is
// for tests and demos without a GPU.
const EnvFakeCUDA = "LAZYFS_PREWARM_FAKE_CUDA"

// DriverFromEnv returns FakeDriver when EnvFakeCUDA is set and the libcuda
// driver otherwise.
func DriverFromEnv() Driver {
	if v := os.Getenv(EnvFakeCUDA); v != "" {
		return &FakeDriver{Mode: v}
	}
	return NewCUDADriver()
}

// FakeDriver is a Driver that touches no GPU.
type FakeDriver struct {
	// Mode: "" or "1" works; "fail-init", "fail-retain", "hang" fail as named.
	Mode string
}

// Init implements Driver.
func (f *FakeDriver) Init() error {
	switch f.Mode {
	case "fail-init":
		return fmt.Errorf("fake cuInit: CUDA_ERROR_NO_DEVICE: %w", ErrNoDriver)
	case "hang":
		select {}
	}
	return nil
}

// Retain implements Driver.
func (f *FakeDriver) Retain(allocBytes uint64) (Context, error) {
	if f.Mode == "fail-retain" {
		return nil, fmt.Errorf("fake cuDevicePrimaryCtxRetain: CUDA_ERROR_OUT_OF_MEMORY")
	}
	uuid := os.Getenv("CUDA_VISIBLE_DEVICES")
	if uuid == "" {
		uuid = "GPU-fake"
	}
	return fakeContext(uuid), nil
}

type fakeContext string

func (c fakeContext) UUID() string   { return string(c) }
func (c fakeContext) Op() error      { return nil }
func (c fakeContext) Release() error { return nil }

// HolderReady is what a holder or worker child reports on its first stdout
// line, after "READY ".
type HolderReady struct {
	PID        int     `json:"pid"`
	UUID       string  `json:"uuid"`
	AllocBytes uint64  `json:"alloc_bytes"`
	InitMs     float64 `json:"init_ms"`
	RetainMs   float64 `json:"retain_ms"`
}

// HoldOptions configures RunHolder.
type HoldOptions struct {
	// UUID is the GPU or MIG device the parent asked for; it is checked
	// against what CUDA reports for whole GPUs.
	UUID       string
	AllocBytes uint64
}

// RunHolder is the body of the holder child process: it initialises the
// driver, retains the primary context (plus an optional allocation), writes
// "READY {json}" to out, and then sleeps until ctx is done or stdin reaches
// EOF (the daemon died), when it releases and returns. On failure it writes
// "ERROR msg" to out and returns the error.
func RunHolder(ctx context.Context, drv Driver, opts HoldOptions, stdin io.Reader, out io.Writer) error {
	fail := func(err error) error {
		fmt.Fprintf(out, "ERROR %s\n", oneLine(err.Error()))
		return err
	}
	t0 := time.Now()
	if err := drv.Init(); err != nil {
		return fail(fmt.Errorf("gpu %s: %w", opts.UUID, err))
	}
	t1 := time.Now()
	c, err := drv.Retain(opts.AllocBytes)
	if err != nil {
		return fail(fmt.Errorf("gpu %s: %w", opts.UUID, err))
	}
	defer c.Release()
	if err := checkUUID(opts.UUID, c.UUID()); err != nil {
		return fail(err)
	}
	r := HolderReady{PID: os.Getpid(), UUID: c.UUID(), AllocBytes: opts.AllocBytes,
		InitMs: ms(t1.Sub(t0)), RetainMs: ms(time.Since(t1))}
	b, _ := json.Marshal(r)
	if _, err := fmt.Fprintf(out, "READY %s\n", b); err != nil {
		return err
	}
	eof := make(chan struct{})
	if stdin != nil {
		go func() { io.Copy(io.Discard, stdin); close(eof) }()
	}
	select {
	case <-ctx.Done():
	case <-eof:
	}
	return nil
}

// checkUUID compares the UUID asked for with the one CUDA reports. MIG
// devices are not checked: CUDA and NVML format their UUIDs differently
// across driver versions, and CUDA_VISIBLE_DEVICES already selects them.
func checkUUID(want, got string) error {
	if want == "" || !strings.HasPrefix(want, "GPU-") || !strings.HasPrefix(got, "GPU-") {
		return nil
	}
	if !strings.EqualFold(want, got) {
		return fmt.Errorf("gpu %s: cuda device 0 is %s (CUDA_VISIBLE_DEVICES not honoured?)", want, got)
	}
	return nil
}

// readReady reads the child's first line.
func readReady(r *bufio.Reader) (HolderReady, error) {
	line, err := readLine(r, maxWorkerLine)
	if err != nil {
		return HolderReady{}, fmt.Errorf("no READY line: %w", err)
	}
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "READY"):
		var h HolderReady
		if rest := strings.TrimSpace(strings.TrimPrefix(line, "READY")); rest != "" {
			if err := json.Unmarshal([]byte(rest), &h); err != nil {
				return HolderReady{}, fmt.Errorf("bad READY line %q: %w", line, err)
			}
		}
		return h, nil
	case strings.HasPrefix(line, "ERROR"):
		return HolderReady{}, fmt.Errorf("%s", strings.TrimSpace(strings.TrimPrefix(line, "ERROR")))
	}
	return HolderReady{}, fmt.Errorf("unexpected first line %q", line)
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// readLine reads one line of at most max bytes: a child that never ends
// its first line cannot make the daemon buffer without bound.
func readLine(r *bufio.Reader, max int) (string, error) {
	var b []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(b)+len(frag) > max {
			return "", fmt.Errorf("line longer than %d bytes", max)
		}
		b = append(b, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		return string(b), err
	}
}
