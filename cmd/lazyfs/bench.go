package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lazyfs/lazyfs/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		workloads []string
		modes     []string
		samples   int
		link      string
		rtt       time.Duration
		image     string
		cmdLine   string
		readyLine string
		cacheDir  string
		lazyfsBin string
		registry  string
		svgPath   string
		asJSON    bool
		verbose   bool
		timeout   time.Duration
		weights   sizeFlag
		tempDir   string
		fromJSON  string
	)
	cmd := &cobra.Command{
		Use:   "bench [flags] [-- CMD ARGS... with --image]",
		Short: "Measure cold starts: full pull vs lazy mount, behind a shaped link",
		Long: `Bench measures how long workloads take to become ready from a cold node, in
several modes, with the registry behind a shaped network link. It builds the
workloads' images once (debootstrap, cached in --cache-dir), pushes them to a
local distribution registry in its own network namespace, converts them with
lazyfs convert, and runs interleaved rounds; each sample wipes the mode's
content store, snapshots and block cache, drops the page cache and restarts
the daemons. It prints a table of medians (p95), writes an SVG chart, and with
--json a versioned report (docs/bench.md).

Workloads: ` + strings.Join(bench.WorkloadNames(), ", ") + `, or your own image with --image REF and
a command after -- (or --cmd, run with /bin/sh -c), ready at exit 0 or at the
first stdout line matching --ready-line.
Modes: full (containerd + overlayfs), mount (lazyfs mount + chroot), mount+profile
(the same with the registry's start-up profile), mount-warm
(the same with the block cache already holding what the workload reads),
lazy, lazy+profile, warm (the lazyfs snapshotter), stargz and stargz+profile
(stargz-snapshotter on an eStargz copy of the image, made in process);
mount+profile, lazy+profile and stargz+profile start from the workload's
start-up profile, recorded once per image, workload and lazyfs binary with
lazyfs record (stargz+profile prioritizes its files in the eStargz copy). Modes whose components
are missing are skipped with a note. Needs root.`,
		Example: `  lazyfs bench --workload hello,python --mode full,mount --samples 3
  lazyfs bench --workload torch --link 1gbit --rtt 20ms --json > torch.json
  lazyfs bench --image 127.0.0.1:5000/app:v1 --ready-line 'listening' -- /app/server`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if fromJSON != "" {
				rep, err := readReport(fromJSON)
				if err != nil {
					return err
				}
				return writeReport(cmd, rep, svgPath, asJSON)
			}
			prof, err := bench.ParseProfile(link)
			if err != nil {
				return err
			}
			var ws []*bench.Workload
			if image != "" {
				argv := args
				if len(argv) == 0 && cmdLine != "" {
					argv = []string{"/bin/sh", "-c", cmdLine}
				}
				w, err := bench.CustomWorkload(image, argv, readyLine)
				if err != nil {
					return err
				}
				ws = append(ws, w)
			} else if len(args) > 0 || cmdLine != "" {
				return fmt.Errorf("a command needs --image")
			}
			if image == "" || cmd.Flags().Changed("workload") {
				for _, n := range workloads {
					w, err := bench.BuiltinWorkload(n)
					if err != nil {
						return err
					}
					ws = append(ws, w)
				}
			}
			var ms []bench.Mode
			for _, n := range modes {
				m, err := bench.ModeByName(n)
				if err != nil {
					return err
				}
				ms = append(ms, m)
			}
			if lazyfsBin == "" {
				if lazyfsBin, err = os.Executable(); err != nil {
					return err
				}
			}
			cfg := bench.Config{
				Workloads: ws, Modes: ms, Samples: samples, Profile: prof, RTT: rtt,
				CacheDir: cacheDir, TempDir: tempDir, Lazyfs: lazyfsBin, Registry: registry,
				WeightsBytes: int64(weights), Timeout: timeout,
			}
			stderr := cmd.ErrOrStderr()
			if verbose {
				cfg.Logf = func(format string, a ...any) {
					fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
				}
			}
			if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !verbose {
				var bar *progressbar.ProgressBar
				cfg.Logf = func(format string, a ...any) {
					if bar == nil {
						fmt.Fprintf(stderr, "\r\033[K"+format, a...)
					}
				}
				cfg.Progress = func(done, total int, label string) {
					if bar == nil {
						fmt.Fprint(stderr, "\r\033[K")
						bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(stderr), progressbar.OptionClearOnFinish(),
							progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
					}
					if done > 0 {
						label = "done " + label
					}
					bar.Describe(label)
					_ = bar.Set(done)
				}
				defer func() {
					if bar != nil {
						_ = bar.Finish()
					}
				}()
			}
			rep, err := bench.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			rep.Command = "lazyfs " + strings.Join(os.Args[1:], " ")
			return writeReport(cmd, rep, svgPath, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&workloads, "workload", []string{"hello", "python"}, "built-in workloads: "+strings.Join(bench.WorkloadNames(), ", "))
	f.StringSliceVar(&modes, "mode", []string{"full", "mount", "mount+profile", "mount-warm", "lazy", "lazy+profile", "warm", "stargz", "stargz+profile"}, "modes to compare")
	f.IntVarP(&samples, "samples", "n", 5, "samples (rounds) per mode")
	f.StringVar(&link, "link", "200mbit", "link profile: "+strings.Join(bench.Profiles, ", ")+" or any rate such as 500mbit")
	f.DurationVar(&rtt, "rtt", 0, "added round-trip time through a latency proxy (e.g. 20ms)")
	f.StringVar(&image, "image", "", "your own image (a registry reference) to run the command after -- in")
	f.StringVar(&cmdLine, "cmd", "", "with --image: a command line run with /bin/sh -c (instead of arguments after --)")
	f.StringVar(&readyLine, "ready-line", "", "with --image: ready at the first stdout line matching this regular expression (default: at exit 0)")
	f.StringVar(&cacheDir, "cache-dir", bench.DefaultCacheDir, "where built images and the registry's storage are kept between runs")
	f.StringVar(&lazyfsBin, "lazyfs", "", "lazyfs binary that converts and mounts (default: this one)")
	f.StringVar(&registry, "registry", "", "docker-registry binary (default: found or fetched with apt-get download), or inprocess")
	f.StringVar(&svgPath, "svg", "lazyfs-bench.svg", "write the chart to this file (\"\" for none)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON (docs/bench.md)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log each step to stderr")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "limit for each wait within a sample")
	f.Var(&weights, "weights-size", "size of the weights workload's file (default 1GiB)")
	f.StringVar(&tempDir, "temp-dir", "", "parent of the run's work directory (default $TMPDIR or /tmp)")
	f.StringVar(&fromJSON, "from-json", "", "run nothing: print the table and write the chart of a saved --json report")
	return cmd
}

func readReport(path string) (*bench.Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("report %s: %w", path, err)
	}
	if rep.SchemaVersion != bench.SchemaVersion {
		return nil, fmt.Errorf("report %s: schema version %d, this lazyfs reads %d", path, rep.SchemaVersion, bench.SchemaVersion)
	}
	return &rep, nil
}

// writeReport writes the chart (when svgPath is set) and prints the report
// as JSON or as a table.
func writeReport(cmd *cobra.Command, rep *bench.Report, svgPath string, asJSON bool) error {
	if svgPath != "" {
		f, err := os.Create(svgPath)
		if err != nil {
			return err
		}
		if err := rep.WriteSVG(f); err != nil {
			f.Close()
			return fmt.Errorf("chart %s: %w", svgPath, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("chart %s: %w", svgPath, err)
		}
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	if svgPath != "" {
		_, err := fmt.Fprintf(out, "chart: %s\n", svgPath)
		return err
	}
	return nil
}
