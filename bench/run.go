package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Config is a benchmark run.
type Config struct {
	Workloads []*Workload
	Modes     []Mode
	// Samples is the number of rounds (default 5).
	Samples int
	Profile Profile
	// RTT adds round-trip latency through a proxy (0: none).
	RTT time.Duration
	// CacheDir keeps images and the registry's storage (default DefaultCacheDir).
	CacheDir string
	// TempDir is where the run's work directory is made ("": os.TempDir()).
	TempDir string
	// Lazyfs is the lazyfs binary that converts and mounts.
	Lazyfs string
	// Registry is the docker-registry binary; "" finds or fetches it,
	// "inprocess" serves go-containerregistry's registry from this process.
	Registry string
	// WeightsBytes sizes the weights workload's file (0: 1 GiB).
	WeightsBytes int64
	// Timeout bounds each wait of a sample (default 10 minutes).
	Timeout time.Duration
	// Logf receives progress messages (nil: silent).
	Logf func(format string, args ...any)
	// Progress is called before the first sample and after each, with the
	// count done, the total and the sample just done.
	Progress func(done, total int, label string)
}

func (c *Config) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Run sets up the link and the registry, prepares the images, and runs
// Samples interleaved rounds of every mode of every workload. Each sample
// starts cold: the mode wipes its state and restarts its daemons, and the
// page cache is dropped. Everything it started is stopped and removed before
// it returns, also when ctx is cancelled.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Samples <= 0 {
		cfg.Samples = 5
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = DefaultCacheDir
	}
	if len(cfg.Workloads) == 0 || len(cfg.Modes) == 0 {
		return nil, errors.New("bench: no workloads or no modes")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: needs root (network namespaces, mounts, containerd, drop_caches)")
	}
	lazyfs, err := filepath.Abs(cfg.Lazyfs)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(lazyfs); err != nil {
		return nil, fmt.Errorf("lazyfs binary: %w (make build)", err)
	}
	rep = &Report{SchemaVersion: SchemaVersion, StartedAt: time.Now().UTC(), SamplesPerMode: cfg.Samples, Machine: machine()}
	started := time.Now()
	work, err := os.MkdirTemp(cfg.TempDir, fmt.Sprintf("lazyfs-bench-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	defer func() {
		// Cleanup must finish even when ctx was cancelled.
		if uerr := unmountUnder(work); uerr != nil && err == nil {
			err = uerr
		}
		os.RemoveAll(work)
	}()

	// The link.
	var link *Link
	rep.Link = LinkInfo{Profile: cfg.Profile.Name, RateBitsPerSecond: cfg.Profile.RateBitsPerSecond, RTTMilliseconds: float64(cfg.RTT) / 1e6, Kind: "veth"}
	link, err = NewLink(ctx)
	if err != nil {
		if cfg.Profile.RateBitsPerSecond > 0 {
			return nil, err
		}
		rep.Link.Kind = "loopback"
		rep.Notes = append(rep.Notes, fmt.Sprintf("no network namespace (%v): registry on loopback, bytes over the link not counted", err))
		link = nil
	} else {
		defer link.Close()
	}

	// The registry.
	var reg Registry
	if cfg.Registry == "inprocess" {
		if link != nil {
			l, lerr := link.Listen(link.PeerIP.String() + ":0")
			if lerr != nil {
				return nil, lerr
			}
			reg = StartInProcess(l)
		} else {
			l, lerr := netListen("127.0.0.1:0")
			if lerr != nil {
				return nil, lerr
			}
			reg = StartInProcess(l)
		}
		rep.Versions.Registry = "go-containerregistry pkg/registry (in process)"
	} else {
		bin := cfg.Registry
		if bin == "" {
			if bin, err = EnsureRegistryBinary(ctx, cfg.CacheDir, lazyfs); err != nil {
				return nil, err
			}
		}
		rep.Versions.Registry = commandVersion(bin, "--version")
		d, derr := StartDistribution(ctx, DistributionOptions{Binary: bin, Storage: filepath.Join(cfg.CacheDir, "registry"), WorkDir: work, Link: link})
		if derr != nil {
			return nil, derr
		}
		reg = d
	}
	defer reg.Close()
	rep.Versions.Lazyfs = commandVersion(lazyfs, "version")
	rep.Versions.Containerd = commandVersion("containerd", "--version")
	rep.Versions.Runc = commandVersion("runc", "--version")
	rep.Versions.Go = runtime.Version()

	// The images, over the unshaped link.
	images := &Images{CacheDir: cfg.CacheDir, Lazyfs: lazyfs, WeightsBytes: cfg.WeightsBytes, Logf: cfg.Logf}
	// The stargz modes run: convert to eStargz too.
	estargz, estargzProfiled := false, false
	for _, m := range cfg.Modes {
		if sm, ok := m.(StargzMode); ok && m.Check(&Env{Lazyfs: lazyfs}) == nil {
			estargz = estargz || !sm.Profile
			estargzProfiled = estargzProfiled || sm.Profile
		}
	}
	refs := map[string]ImageRefs{}
	imgErr := map[string]error{}
	for _, w := range cfg.Workloads {
		if _, ok := refs[w.Image]; ok || imgErr[w.Image] != nil {
			continue
		}
		cfg.logf("preparing image %s", w.Image)
		r, err := images.Prepare(ctx, w.Image, reg)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("bench interrupted preparing image %s: %w", w.Image, ctx.Err())
			}
			imgErr[w.Image] = err
			continue
		}
		if estargz {
			if r, err = images.Estargz(ctx, r); err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("bench interrupted converting image %s to eStargz: %w", w.Image, ctx.Err())
				}
				rep.Notes = append(rep.Notes, fmt.Sprintf("image %s: no eStargz copy, the stargz mode fails on it: %v", w.Image, err))
			}
		}
		refs[w.Image] = r
	}
	// The workloads' start-up profiles, also over the unshaped link.
	wrefs := map[string]ImageRefs{}
	record := slices.ContainsFunc(cfg.Modes, usesProfile)
	for _, w := range cfg.Workloads {
		r, ok := refs[w.Image]
		if !ok {
			continue
		}
		if !record {
			wrefs[w.Name] = r
			continue
		}
		p, err := images.Record(ctx, w, r)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("bench interrupted recording %s: %w", w.Name, ctx.Err())
			}
			rep.Notes = append(rep.Notes, fmt.Sprintf("workload %s: no start-up profile: %v", w.Name, err))
		}
		r.Profiled = p
		if estargzProfiled && p != "" {
			if r, err = images.EstargzProfiled(ctx, w, r); err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("bench interrupted converting %s's image to eStargz: %w", w.Name, ctx.Err())
				}
				rep.Notes = append(rep.Notes, fmt.Sprintf("workload %s: no prioritized eStargz copy, the stargz+profile mode fails on it: %v", w.Name, err))
			}
		}
		wrefs[w.Name] = r
	}

	// Shape, and put the latency proxy in front.
	if link != nil && cfg.Profile.RateBitsPerSecond > 0 {
		if err := link.Shape(ctx, cfg.Profile.RateBitsPerSecond); err != nil {
			return nil, err
		}
		rep.Link.Kind = "veth+tbf"
		rep.Link.BurstBytes = Burst(cfg.Profile.RateBitsPerSecond)
	}
	var proxy *Proxy
	if cfg.RTT > 0 {
		if proxy, err = StartProxy("127.0.0.1:0", reg.Host(), cfg.RTT); err != nil {
			return nil, err
		}
		defer proxy.Close()
		for k, r := range wrefs {
			r.Plain = proxy.Addr() + strings.TrimPrefix(r.Plain, reg.Host())
			r.Lazy = proxy.Addr() + strings.TrimPrefix(r.Lazy, reg.Host())
			if r.Profiled != "" {
				r.Profiled = proxy.Addr() + strings.TrimPrefix(r.Profiled, reg.Host())
			}
			if r.Stargz != "" {
				r.Stargz = proxy.Addr() + strings.TrimPrefix(r.Stargz, reg.Host())
			}
			if r.StargzProfiled != "" {
				r.StargzProfiled = proxy.Addr() + strings.TrimPrefix(r.StargzProfiled, reg.Host())
			}
			wrefs[k] = r
		}
	}

	// Unix socket paths are short: the work directory may be deep.
	sockDir, err := os.MkdirTemp(shortTempBase(), fmt.Sprintf("lzb%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	env := &Env{WorkDir: work, SockDir: sockDir, Lazyfs: lazyfs, Insecure: true, Timeout: cfg.Timeout}
	skip := map[string]string{}
	for _, m := range cfg.Modes {
		if err := m.Check(env); err != nil {
			skip[m.Name()] = err.Error()
		}
	}
	total := 0
	for _, w := range cfg.Workloads {
		wr := WorkloadResult{Name: w.Name, Image: w.Image, Cmd: w.Cmd, Ready: w.Ready(), Refs: wrefs[w.Name]}
		if err := imgErr[w.Image]; err != nil {
			wr.Skipped = err.Error()
		}
		for _, m := range cfg.Modes {
			wr.Modes = append(wr.Modes, ModeResult{Mode: m.Name(), Skipped: skip[m.Name()], Samples: []Sample{}})
			if skip[m.Name()] == "" && wr.Skipped == "" {
				total += cfg.Samples
			}
		}
		rep.Workloads = append(rep.Workloads, wr)
	}

	if cfg.Progress != nil {
		cfg.Progress(0, total, "first sample")
	}
	done := 0
	for round := 1; round <= cfg.Samples; round++ {
		for wi, w := range cfg.Workloads {
			wr := &rep.Workloads[wi]
			if wr.Skipped != "" {
				continue
			}
			for i := range cfg.Modes {
				// Rotate the order each round so drift hits every mode alike.
				mi := (i + round - 1) % len(cfg.Modes)
				m := cfg.Modes[mi]
				if wr.Modes[mi].Skipped != "" {
					continue
				}
				if ctx.Err() != nil {
					return nil, fmt.Errorf("bench interrupted: %w", ctx.Err())
				}
				label := fmt.Sprintf("%s/%s round %d", w.Name, m.Name(), round)
				cfg.logf("sample %s", label)
				s := sample(ctx, env, m, Target{Workload: w, Refs: wrefs[w.Name]}, link, reg, proxy)
				s.Round = round
				if ctx.Err() != nil {
					return nil, fmt.Errorf("bench interrupted in %s: %w", label, ctx.Err())
				}
				wr.Modes[mi].Samples = append(wr.Modes[mi].Samples, s)
				done++
				if cfg.Progress != nil {
					cfg.Progress(done, total, label)
				}
			}
		}
	}
	rep.Summarize()
	rep.WallSeconds = time.Since(started).Seconds()
	return rep, nil
}

// sample runs one cold start and measures it.
func sample(ctx context.Context, env *Env, m Mode, t Target, link *Link, reg Registry, proxy *Proxy) (s Sample) {
	fail := func(err error) Sample { s.Error = err.Error(); return s }
	tr, err := m.Start(ctx, env, t)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err := tr.Close(); err != nil && s.Error == "" {
			s.Error = fmt.Sprintf("cleanup: %v", err)
		}
	}()
	if err := DropCaches(); err != nil {
		return fail(err)
	}
	var c0 Counters
	if link != nil {
		if c0, err = link.Counters(); err != nil {
			return fail(err)
		}
	}
	r0, err := reg.Requests()
	if err != nil {
		return fail(err)
	}
	var p0 ProxyCounts
	if proxy != nil {
		p0 = proxy.Counts()
	}
	cpu0 := map[int]time.Duration{}
	for _, pid := range tr.Daemons() {
		if u, err := ReadProcUsage(pid); err == nil {
			cpu0[pid] = u.CPU
		}
	}
	var ph Phases
	runErr := tr.Run(ctx, &ph)
	// Usage before anything stops; daemons started during Run (a mount
	// server) count from their start.
	for _, pid := range tr.Daemons() {
		if u, err := ReadProcUsage(pid); err == nil {
			s.DaemonCPUSeconds += (u.CPU - cpu0[pid]).Seconds()
			s.DaemonPeakRSSBytes += u.PeakRSSBytes
		}
	}
	if ms, ok := tr.(mountStatser); ok && runErr == nil {
		s.Mount, _ = ms.MountStats(ctx) // an older binary may not say; the sample stands
	}
	// The registry logs a request after its response went out.
	sleepCtx(ctx, 100*time.Millisecond)
	if link != nil {
		if c1, err := link.Counters(); err == nil {
			d := c1.Sub(c0)
			s.LinkBytesReceived, s.LinkBytesSent = d.RxBytes, d.TxBytes
		}
	}
	if r1, err := reg.Requests(); err == nil {
		d := r1.Sub(r0)
		s.Requests, s.ResponseBytes = d.Requests, d.ResponseBytes
	}
	if proxy != nil {
		s.Connections = proxy.Counts().Connections - p0.Connections
	}
	s.PullSeconds, s.CreateSeconds, s.RunSeconds = ph.Pull.Seconds(), ph.Create.Seconds(), ph.Run.Seconds()
	s.ReadySeconds = s.PullSeconds + s.CreateSeconds + s.RunSeconds
	s.ClientCPUSeconds = ph.ClientCPU.Seconds()
	if runErr != nil {
		s.Error = runErr.Error()
	}
	return s
}

// EnsureRegistryBinary finds distribution's registry: docker-registry on
// PATH, in the repository's .cache (hack/demo.sh puts it there), or in
// cacheDir; otherwise it fetches Debian's package with apt-get download and
// unpacks it into cacheDir with dpkg-deb -x (it is not installed, so no
// service starts).
func EnsureRegistryBinary(ctx context.Context, cacheDir, lazyfs string) (string, error) {
	if p, err := exec.LookPath("docker-registry"); err == nil {
		return p, nil
	}
	cands := []string{
		filepath.Join(filepath.Dir(lazyfs), "..", ".cache", "registry", "usr", "bin", "docker-registry"),
		filepath.Join(cacheDir, "registry-bin", "usr", "bin", "docker-registry"),
	}
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			return filepath.Clean(c), nil
		}
	}
	dl := filepath.Join(cacheDir, "registry-deb")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	get := exec.CommandContext(ctx, "apt-get", "download", "-qq", "docker-registry")
	get.Dir = dl
	if out, err := get.CombinedOutput(); err != nil {
		if uerr := runLogged(ctx, "apt-get", "update", "-qq"); uerr != nil {
			return "", fmt.Errorf("fetch docker-registry: %w: %s", err, out)
		}
		get = exec.CommandContext(ctx, "apt-get", "download", "-qq", "docker-registry")
		get.Dir = dl
		if out, err := get.CombinedOutput(); err != nil {
			return "", fmt.Errorf("fetch docker-registry: %w: %s", err, out)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "docker-registry_*.deb"))
	if len(debs) == 0 {
		return "", errors.New("fetch docker-registry: apt-get download left no .deb")
	}
	if err := runLogged(ctx, "dpkg-deb", "-x", debs[len(debs)-1], filepath.Join(cacheDir, "registry-bin")); err != nil {
		return "", err
	}
	return cands[1], nil
}

func commandVersion(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return ""
	}
	return firstLine(string(out))
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemoryBytes = int64(si.Totalram) * int64(si.Unit)
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`) + " " + runtime.GOARCH
			}
		}
	}
	return m
}

// shortTempBase is /run when it is writable (root: it is), else /tmp:
// $TMPDIR may be too deep for unix socket paths.
func shortTempBase() string {
	for _, d := range []string{"/run", "/tmp"} {
		if unix.Access(d, unix.W_OK) == nil {
			return d
		}
	}
	return os.TempDir()
}
