package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Registry is a registry server the harness pushes to and the modes pull from.
type Registry interface {
	// Host is host:port as the node reaches it.
	Host() string
	// Requests returns the cumulative count of HTTP requests served and of
	// response body bytes sent.
	Requests() (RequestCount, error)
	Close() error
}

// RequestCount is a cumulative count of a registry's HTTP requests.
type RequestCount struct {
	Requests      int64
	ResponseBytes int64
	// Errors counts responses with status ≥ 400.
	Errors int64
}

// Sub returns c - o.
func (c RequestCount) Sub(o RequestCount) RequestCount {
	return RequestCount{c.Requests - o.Requests, c.ResponseBytes - o.ResponseBytes, c.Errors - o.Errors}
}

// ParseAccessLog counts the requests in an access log in the Apache combined
// format, as distribution's registry writes it to stdout, one line per
// request: `HOST - - [TIME] "METHOD URI PROTO" STATUS BYTES "REFERER" "AGENT"`.
// Lines that are not access log entries (the registry's own messages) are
// skipped; a line cut short at the end is not counted.
func ParseAccessLog(r io.Reader) (RequestCount, error) {
	var c RequestCount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		status, size, ok := parseAccessLine(sc.Bytes())
		if !ok {
			continue
		}
		c.Requests++
		c.ResponseBytes += size
		if status >= 400 {
			c.Errors++
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return c, fmt.Errorf("access log: %w", err)
	}
	return c, nil
}

// parseAccessLine parses the status and size after the quoted request line.
func parseAccessLine(line []byte) (status int, size int64, ok bool) {
	i := bytes.Index(line, []byte(`] "`))
	if i < 0 {
		return 0, 0, false
	}
	rest := line[i+3:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return 0, 0, false
	}
	req := bytes.Fields(rest[:j])
	if len(req) < 2 {
		return 0, 0, false
	}
	f := bytes.Fields(rest[j+1:])
	if len(f) < 2 {
		return 0, 0, false
	}
	st, err := strconv.Atoi(string(f[0]))
	if err != nil || st < 100 || st > 999 {
		return 0, 0, false
	}
	if string(f[1]) != "-" {
		if size, err = strconv.ParseInt(string(f[1]), 10, 64); err != nil || size < 0 {
			return 0, 0, false
		}
	}
	return st, size, true
}

// Distribution runs distribution's registry (Debian's docker-registry) as a
// process, inside a Link's namespace when one is given. Its storage
// directory may outlive it, so images are pushed once for many runs.
type Distribution struct {
	host    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
}

// DistributionOptions configure StartDistribution.
type DistributionOptions struct {
	Binary  string // docker-registry binary
	Storage string // storage root directory
	WorkDir string // config and logs
	Link    *Link  // nil: listen on 127.0.0.1
	Port    int    // 0: 5000 in a link's namespace, a free port on loopback
}

// StartDistribution starts the registry and waits until it answers /v2/.
func StartDistribution(ctx context.Context, o DistributionOptions) (*Distribution, error) {
	host := ""
	switch {
	case o.Link != nil:
		host = net.JoinHostPort(o.Link.PeerIP.String(), strconv.Itoa(orDefault(o.Port, 5000)))
	case o.Port != 0:
		host = net.JoinHostPort("127.0.0.1", strconv.Itoa(o.Port))
	default:
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		host = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	if err := os.MkdirAll(o.Storage, 0o755); err != nil {
		return nil, fmt.Errorf("registry storage: %w", err)
	}
	cfg := filepath.Join(o.WorkDir, "registry.yml")
	conf := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: %q}\n", o.Storage, host)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("registry config: %w", err)
	}
	d := &Distribution{host: host, logPath: filepath.Join(o.WorkDir, "registry-access.log"), done: make(chan struct{})}
	out, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	errf, err := os.Create(filepath.Join(o.WorkDir, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer errf.Close()
	if o.Link != nil {
		d.cmd = o.Link.Command(context.WithoutCancel(ctx), o.Binary, "serve", cfg)
	} else {
		d.cmd = exec.Command(o.Binary, "serve", cfg)
	}
	d.cmd.Stdout, d.cmd.Stderr = out, errf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start registry %s: %w", o.Binary, err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	cl := http.Client{Timeout: time.Second}
	err = waitFor(ctx, "registry "+host, 30*time.Second, 50*time.Millisecond, func() error {
		select {
		case <-d.done:
			b, _ := os.ReadFile(filepath.Join(o.WorkDir, "registry.log"))
			return permanent(fmt.Errorf("registry exited: %s", lastLines(string(b), 5)))
		default:
		}
		resp, err := cl.Get("http://" + host + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Host implements Registry.
func (d *Distribution) Host() string { return d.host }

// Requests implements Registry by counting the access log's lines.
func (d *Distribution) Requests() (RequestCount, error) {
	f, err := os.Open(d.logPath)
	if err != nil {
		return RequestCount{}, fmt.Errorf("registry access log: %w", err)
	}
	defer f.Close()
	return ParseAccessLog(f)
}

// Close stops the registry process.
func (d *Distribution) Close() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	return nil
}

// InProcess is go-containerregistry's registry served from this process,
// counting its requests. Tests use it; so can a run without docker-registry.
type InProcess struct {
	srv   *http.Server
	ln    net.Listener
	reqs  atomic.Int64
	bytes atomic.Int64
	errs  atomic.Int64
	wg    sync.WaitGroup
}

// StartInProcess serves the registry on ln (for example Link.Listen).
func StartInProcess(ln net.Listener) *InProcess {
	r := &InProcess{ln: ln}
	h := registry.New(registry.Logger(nopLogger()))
	r.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(cw, req)
		r.reqs.Add(1)
		r.bytes.Add(cw.n)
		if cw.status >= 400 {
			r.errs.Add(1)
		}
	})}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); _ = r.srv.Serve(ln) }()
	return r
}

// Host implements Registry.
func (r *InProcess) Host() string { return r.ln.Addr().String() }

// Requests implements Registry.
func (r *InProcess) Requests() (RequestCount, error) {
	return RequestCount{Requests: r.reqs.Load(), ResponseBytes: r.bytes.Load(), Errors: r.errs.Load()}, nil
}

// Close stops serving.
func (r *InProcess) Close() error {
	err := r.srv.Close()
	r.wg.Wait()
	return err
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(s int) { c.status = s; c.ResponseWriter.WriteHeader(s) }
func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := bytes.Split(bytes.TrimSpace([]byte(s)), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

func netListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
