package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/prewarm"
)

// newDevBenchCmd runs one device-check scenario N times and prints one
// markdown table row of milliseconds. prewarm/testdata/device-check.sh
// drives it; it is hidden because it only makes sense on a GPU machine (or
// with --fake-gpus and LAZYFS_PREWARM_FAKE_CUDA=1 to test the script).
func newDevBenchCmd() *cobra.Command {
	var (
		scenario string
		n        int
		socket   string
		label    string
		gap      time.Duration
		timeout  time.Duration
		python   string
		script   string
		jsonOut  string
		maxDur   time.Duration
		minN     int
		workers  []string
		extra    []string
	)
	cmd := &cobra.Command{
		Use:    "devbench --scenario fresh|claim|worker|release|torch-fresh|worker-resume|worker-alternate|wait-held|wait-worker|wait-suspended",
		Short:  "Device check: time N fresh processes to their first CUDA op",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			c := prewarm.NewClient(socket)
			switch scenario {
			case "wait-held", "wait-worker":
				_, err := waitHeld(ctx, c, scenario == "wait-worker", timeout)
				return err
			case "wait-suspended":
				for _, w := range workers {
					if _, err := waitWorkerState(ctx, c, w, prewarm.WorkerSuspended, timeout); err != nil {
						return err
					}
				}
				return nil
			}
			if (scenario == "worker-resume" || scenario == "worker-alternate") && len(workers) == 0 {
				return fmt.Errorf("%s needs --worker NAME", scenario)
			}
			sums := map[string]string{}
			var samples []sample
			began := time.Now()
			for i := 0; i < n; i++ {
				if maxDur > 0 && i >= minN && time.Since(began) > maxDur {
					fmt.Fprintf(os.Stderr, "%s: stopping after %d samples: --max-duration %v reached\n", scenario, i, maxDur)
					break
				}
				if i > 0 && gap > 0 {
					time.Sleep(gap)
				}
				var s sample
				var err error
				switch scenario {
				case "fresh":
					s, err = probe(ctx, timeout, []string{exe, "firstop"})
				case "claim", "worker":
					if _, err = waitHeld(ctx, c, scenario == "worker", timeout); err != nil {
						return err
					}
					args := []string{exe, "firstop", "--socket", socket, "--claim", "--release", "deferred"}
					if scenario == "worker" {
						args = []string{exe, "firstop", "--socket", socket, "--via-worker"}
					}
					s, err = probe(ctx, timeout, args)
					if err == nil {
						_, err = c.Release(ctx, prewarm.ReleaseRequest{UUID: s.out.UUID, ClaimID: s.out.ClaimID})
					}
				case "release":
					if _, err = waitHeld(ctx, c, false, timeout); err != nil {
						return err
					}
					t0 := time.Now()
					var res prewarm.ClaimResult
					res, err = c.Claim(ctx, prewarm.ClaimRequest{Owner: "devbench", Release: "now"})
					s.totalMs = msSince(t0)
					s.out.ReleaseMs, s.out.HolderRelease = res.ReleaseMs, res.HolderRelease
					if err == nil {
						if res.HolderRelease != "now" {
							err = fmt.Errorf("claim released %q, want a holder killed now (was the GPU held?)", res.HolderRelease)
						} else {
							_, err = c.Release(ctx, prewarm.ReleaseRequest{UUID: res.UUID, ClaimID: res.ClaimID})
						}
					}
				case "torch-fresh":
					s, err = probe(ctx, timeout, append([]string{python, script}, extra...))
				case "worker-resume", "worker-alternate":
					name := workers[i%len(workers)]
					s, err = resumeSample(ctx, c, name, timeout)
					if err == nil {
						if prev, ok := sums[name]; ok && prev != s.out.Checksum {
							err = fmt.Errorf("worker %s: checksum %s after resume, was %s", name, s.out.Checksum, prev)
						}
						sums[name] = s.out.Checksum
					}
				default:
					return fmt.Errorf("unknown scenario %q", scenario)
				}
				if err != nil {
					return fmt.Errorf("%s sample %d: %w", scenario, i+1, err)
				}
				samples = append(samples, s)
				b, _ := json.Marshal(s.out)
				fmt.Fprintf(os.Stderr, "%s #%d: %.1f ms %s\n", scenario, i+1, s.totalMs, b)
			}
			if jsonOut != "" {
				f, err := os.OpenFile(jsonOut, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
				if err == nil {
					for _, s := range samples {
						json.NewEncoder(f).Encode(map[string]any{"scenario": scenario, "label": label, "total_ms": s.totalMs, "out": s.out})
					}
					f.Close()
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), row(label, scenario, samples))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&scenario, "scenario", "fresh", "fresh | claim | worker | release | torch-fresh | worker-resume | worker-alternate | wait-held | wait-worker | wait-suspended")
	f.IntVar(&n, "n", 10, "samples")
	f.StringVar(&socket, "socket", prewarm.DefaultSocket, "daemon socket")
	f.StringVar(&label, "label", "", "row label")
	f.DurationVar(&gap, "gap", 500*time.Millisecond, "pause between samples (lets the driver tear down)")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "per-sample and wait timeout")
	f.StringVar(&python, "python", "python3", "python for torch-fresh")
	f.StringVar(&script, "script", "prewarm/testdata/torch_firstop.py", "torch probe script")
	f.StringVar(&jsonOut, "json-out", "", "append every sample as a JSON line to this file")
	f.DurationVar(&maxDur, "max-duration", 0, "take no new sample after this long (0: no limit); the row reports the samples taken")
	f.IntVar(&minN, "min-n", 3, "samples taken regardless of --max-duration")
	f.StringArrayVar(&workers, "worker", nil, "model worker(s) for worker-resume, worker-alternate (claimed in turn) and wait-suspended")
	f.StringArrayVar(&extra, "arg", nil, "extra argument for the torch-fresh script (repeatable)")
	return cmd
}

type sample struct {
	totalMs float64
	out     firstOpOut
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// probe starts argv as a fresh process and returns the time from just
// before the exec to the moment the process reports its first op done.
func probe(ctx context.Context, timeout time.Duration, argv []string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var out firstOpOut
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil {
		return sample{}, fmt.Errorf("%s: bad output %q: %w", argv[0], stdout.String(), err)
	}
	if out.DoneUnixNano == 0 {
		return sample{}, fmt.Errorf("%s: no done_unix_nano in %q", argv[0], stdout.String())
	}
	return sample{totalMs: float64(out.DoneUnixNano-t0.UnixNano()) / 1e6, out: out}, nil
}

// waitHeld waits until some GPU is held (by a warm worker if worker) and
// unclaimed.
func waitHeld(ctx context.Context, c *prewarm.Client, worker bool, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var last prewarm.Status
	for {
		s, err := c.Status(ctx)
		if err == nil {
			last = s
			for _, g := range s.GPUs {
				if g.State == prewarm.StateHeld && g.Claim == nil && (!worker || g.HolderKind == "worker") {
					return g.UUID, nil
				}
			}
		}
		if time.Now().After(deadline) {
			b, _ := json.Marshal(last)
			return "", fmt.Errorf("no GPU held after %v (last error %v); status: %s", timeout, err, b)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// row renders "| label | n | min | p50 | mean | max | detail |" in ms.
func row(label, scenario string, ss []sample) string {
	tot := make([]float64, len(ss))
	for i, s := range ss {
		tot[i] = s.totalMs
	}
	detail := ""
	mean := func(f func(sample) float64) float64 {
		var sum float64
		for _, s := range ss {
			sum += f(s)
		}
		return sum / float64(max(len(ss), 1))
	}
	switch scenario {
	case "fresh", "claim":
		detail = fmt.Sprintf("mean cuInit %.1f, ctx %.1f, op %.1f", mean(func(s sample) float64 { return s.out.InitMs }),
			mean(func(s sample) float64 { return s.out.RetainMs }), mean(func(s sample) float64 { return s.out.OpMs }))
		if scenario == "claim" {
			detail += fmt.Sprintf(", claim %.1f", mean(func(s sample) float64 { return s.out.ClaimMs }))
		}
	case "worker":
		detail = fmt.Sprintf("mean claim %.1f", mean(func(s sample) float64 { return s.out.ClaimMs }))
	case "worker-resume", "worker-alternate":
		names := map[string]bool{}
		for _, s := range ss {
			names[s.out.Worker] = true
		}
		detail = fmt.Sprintf("server-side resume %.1f, suspend %.1f, host memory %.0f MiB per worker; %d worker(s), checksum after every resume = at load",
			mean(func(s sample) float64 { return s.out.ResumeMs }), mean(func(s sample) float64 { return s.out.SuspendMs }),
			mean(func(s sample) float64 { return float64(s.out.SuspendedBytes >> 20) }), len(names))
	case "release":
		detail = fmt.Sprintf("server-side holder kill→reaped: mean %.2f, max %.2f", mean(func(s sample) float64 { return s.out.ReleaseMs }),
			slices.MaxFunc(ss, func(a, b sample) int { return cmpF(a.out.ReleaseMs, b.out.ReleaseMs) }).out.ReleaseMs)
	case "torch-fresh":
		if len(ss) > 0 && ss[0].out.ImportDoneUnixNano != 0 {
			detail = fmt.Sprintf("mean after import torch: %.1f", mean(func(s sample) float64 {
				if s.out.ImportDoneUnixNano == 0 {
					return math.NaN()
				}
				return float64(s.out.DoneUnixNano-s.out.ImportDoneUnixNano) / 1e6
			}))
		}
	}
	slices.Sort(tot)
	var sum float64
	for _, v := range tot {
		sum += v
	}
	if len(tot) == 0 {
		return fmt.Sprintf("| %s | 0 | | | | | |", label)
	}
	p50 := tot[len(tot)/2]
	if len(tot)%2 == 0 {
		p50 = (tot[len(tot)/2-1] + tot[len(tot)/2]) / 2
	}
	return fmt.Sprintf("| %s | %d | %.1f | %.1f | %.1f | %.1f | %s |", label, len(tot), tot[0], p50, sum/float64(len(tot)), tot[len(tot)-1], detail)
}

func cmpF(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// resumeSample times one claim of a suspended model worker to its first
// verified op (a "check": checksum of its GPU data, then an op), then
// releases it and waits until it is suspended again, noting how long the
// suspend took and how much host memory it holds.
func resumeSample(ctx context.Context, c *prewarm.Client, name string, timeout time.Duration) (sample, error) {
	if _, err := waitWorkerState(ctx, c, name, prewarm.WorkerSuspended, timeout); err != nil {
		return sample{}, err
	}
	t0 := time.Now()
	res, err := c.Claim(ctx, prewarm.ClaimRequest{Worker: name, Owner: "devbench"})
	if err != nil {
		return sample{}, err
	}
	var s sample
	s.out.Mode, s.out.Worker, s.out.UUID, s.out.ClaimID = "worker-resume", name, res.UUID, res.ClaimID
	s.out.ClaimMs = msSince(t0)
	if res.Worker == nil || !res.Worker.Resumed {
		c.Release(ctx, prewarm.ReleaseRequest{Worker: name})
		return s, fmt.Errorf("worker %s: claim did not resume it: %+v", name, res.Worker)
	}
	s.out.ResumeMs, s.out.WorkerPID = res.Worker.ResumeMs, res.Worker.PID
	cctx, cancel := context.WithTimeout(ctx, timeout)
	done, sum, err := prewarm.WorkerCheck(cctx, res.Worker.Socket)
	cancel()
	if err != nil {
		c.Release(ctx, prewarm.ReleaseRequest{Worker: name})
		return s, fmt.Errorf("worker %s after resume: %w", name, err)
	}
	s.out.DoneUnixNano, s.out.Checksum = done, sum
	s.totalMs = float64(done-t0.UnixNano()) / 1e6
	if _, err := c.Release(ctx, prewarm.ReleaseRequest{Worker: name, ClaimID: res.ClaimID}); err != nil {
		return s, err
	}
	w, err := waitWorkerState(ctx, c, name, prewarm.WorkerSuspended, timeout)
	if err != nil {
		return s, err
	}
	s.out.SuspendMs, s.out.SuspendedBytes = w.LastSuspendMs, w.SuspendedBytes
	return s, nil
}

// waitWorkerState waits until model worker name is in state st; a failed
// worker ends the wait at once.
func waitWorkerState(ctx context.Context, c *prewarm.Client, name string, st prewarm.WorkerState, timeout time.Duration) (prewarm.WorkerStatus, error) {
	deadline := time.Now().Add(timeout)
	var last prewarm.WorkerStatus
	for {
		s, err := c.Status(ctx)
		if err == nil {
			for _, w := range s.Workers {
				if w.Name != name {
					continue
				}
				last = w
				if w.State == st {
					return w, nil
				}
				if w.State == prewarm.WorkerFailed {
					return w, fmt.Errorf("worker %s failed: %s", name, w.Reason)
				}
			}
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("worker %s not %s after %v (last: %s %s; error %v)", name, st, timeout, last.State, last.Reason, err)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
