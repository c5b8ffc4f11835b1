package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/prewarm/api"
)

// newGPUCmd is `lazyfs gpu status|claim|release`, the client of the
// lazyfs-prewarm daemon's unix-socket API.
func newGPUCmd() *cobra.Command {
	socket := api.DefaultSocket
	if s := os.Getenv("LAZYFS_PREWARM_SOCKET"); s != "" {
		socket = s
	}
	cmd := &cobra.Command{
		Use:     "gpu",
		Short:   "Claim, release and inspect GPUs kept warm by lazyfs-prewarm",
		Example: `  eval "$(lazyfs gpu claim any --env)" && python3 job.py; lazyfs gpu release "$LAZYFS_GPU_UUID"`,
		// A mistyped subcommand is a usage error, not help with status 0.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&socket, "socket", socket, "lazyfs-prewarm API socket (env LAZYFS_PREWARM_SOCKET)")
	client := func() *api.Client { return api.NewClient(socket) }
	cmd.AddCommand(newGPUStatusCmd(client), newGPUClaimCmd(client), newGPUReleaseCmd(client))
	return cmd
}

// gpuError gives conflicts (GPU claimed, none idle, busy) exit status 2 so
// scripts can retry; anything else exits 1.
type gpuError struct{ err error }

func (e gpuError) Error() string { return e.err.Error() }
func (e gpuError) Unwrap() error { return e.err }
func (e gpuError) ExitCode() int {
	for _, s := range []error{api.ErrAlreadyClaimed, api.ErrNoIdleGPU, api.ErrBusy} {
		if errors.Is(e.err, s) {
			return 2
		}
	}
	return 1
}

// printJSON prints a document of the lazyfs-prewarm API in the CLI's JSON
// convention (docs/cli.md): schemaVersion, camelCase keys.
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if b, err = cli.CamelCaseKeys(b); err != nil {
		return err
	}
	return cli.WriteJSON(w, json.RawMessage(b))
}

func newGPUStatusCmd(client func() *api.Client) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every GPU, its pre-warm state, the model workers, and the warmed images",
		Example: `  lazyfs gpu status
  lazyfs gpu status --json | jq '.workers[] | {name, state, suspendedBytes, lastResumeMs}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := client().Status(cmd.Context())
			if err != nil {
				return gpuError{err}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			return printStatus(cmd.OutOrStdout(), s)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the daemon's status as JSON")
	return cmd
}

func printStatus(w io.Writer, s api.Status) error {
	fmt.Fprintf(w, "mode: %s", s.Mode)
	if s.DriverVersion != "" {
		fmt.Fprintf(w, "  driver: %s", s.DriverVersion)
	}
	fmt.Fprintln(w)
	if s.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", s.Reason)
	}
	if len(s.GPUs) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "UUID\tNAME\tSTATE\tFREE/TOTAL MiB\tUTIL\tPROCS\tCOMPUTE\tPERSIST\tPSTATE\tHOLDER\tDETAIL")
		for _, g := range s.GPUs {
			util := "-"
			if g.UtilGPU >= 0 {
				util = fmt.Sprintf("%d%%", g.UtilGPU)
			}
			ps := "-"
			if g.PState >= 0 {
				ps = fmt.Sprintf("P%d", g.PState)
			}
			holder := "-"
			if g.HolderPID != 0 {
				holder = fmt.Sprintf("%s %d", g.HolderKind, g.HolderPID)
			}
			detail := g.Reason
			if g.Claim != nil {
				detail = fmt.Sprintf("claim %s", g.Claim.ID)
				if g.Claim.Owner != "" {
					detail += " by " + g.Claim.Owner
				}
				if g.Claim.WorkerPID != 0 {
					detail += fmt.Sprintf(" (worker %d)", g.Claim.WorkerPID)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", g.UUID, g.Name, g.State,
				g.MemoryFree>>20, g.MemoryTotal>>20, util, len(g.Processes), g.ComputeMode, g.Persistence, ps, holder, detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(w, "no GPU managed")
	}
	if len(s.Workers) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "model workers: checkpoint %s; suspended %s", s.Checkpoint, mib(s.SuspendedBytes))
		if s.SuspendMemory > 0 {
			fmt.Fprintf(w, " of %s (--suspend-memory)", mib(s.SuspendMemory))
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tSTATE\tGPU\tPID\tSUSPENDED\tSUSPEND ms\tRESUME ms\tCOLD ms\tRESUMES\tCOLD STARTS\tEVICTIONS\tFAILURES\tDETAIL")
		for _, wk := range s.Workers {
			pid, gpu := "-", wk.GPU
			if wk.PID != 0 {
				pid = strconv.Itoa(wk.PID)
			}
			if gpu == "" {
				gpu = "-"
			}
			detail := wk.Reason
			if wk.Claim != nil {
				detail = "claim " + wk.Claim.ID
				if wk.Claim.Owner != "" {
					detail += " by " + wk.Claim.Owner
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%d\t%s\n", wk.Name, wk.State, gpu, pid, mib(wk.SuspendedBytes),
				wk.LastSuspendMs, wk.LastResumeMs, wk.LastColdStartMs, wk.Resumes, wk.ColdStarts, wk.Evictions, wk.Failures, detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(s.Images) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IMAGE\tDIGEST\tWARMS\tLAST ERROR")
		for _, im := range s.Images {
			d := im.Digest
			if d == "" {
				d = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", im.Ref, d, im.Warms, im.LastError)
		}
		return tw.Flush()
	}
	return nil
}

func mib(n uint64) string { return fmt.Sprintf("%dMiB", n>>20) }

func newGPUClaimCmd(client func() *api.Client) *cobra.Command {
	var (
		asJSON, env bool
		req         api.ClaimRequest
	)
	cmd := &cobra.Command{
		Use:   "claim [UUID|any]",
		Short: "Claim a GPU (a UUID, or any idle GPU), or a model warm worker, for a job",
		Long: `claim hands a GPU to the caller. The daemon releases its holder first (at
once in exclusive compute modes or with --release now; otherwise a few seconds
later so the device stays initialised while the job starts) or, in warm-worker
mode, hands over the warm worker.

With --worker NAME it hands over that model worker instead, resuming it from
host memory if it was suspended: on the GPU given (only if the driver can
remap a checkpoint to another GPU), else on the GPU it was suspended on, and
the reply says which. Release it with 'lazyfs gpu release --worker NAME'.

Exit status 2 means no GPU (or worker) was available: retry later.`,
		Example: `  lazyfs gpu claim any --owner job-7
  eval "$(lazyfs gpu claim --env)"        # fails visibly if nothing was claimed
  lazyfs gpu claim --worker llama --json  # resume the suspended "llama" worker`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.UUID = args[0]
			}
			switch req.Release {
			case "", "now", "deferred":
			default:
				return fmt.Errorf("--release %q: want now or deferred", req.Release)
			}
			res, err := client().Claim(cmd.Context(), req)
			w := cmd.OutOrStdout()
			if err != nil {
				if env {
					// eval "$(lazyfs gpu claim --env)" must not go on
					// silently with an empty environment.
					writeEnvFailure(w, err)
				}
				return gpuError{err}
			}
			switch {
			case asJSON:
				return printJSON(w, res)
			case env:
				return writeEnv(w, res)
			}
			if wk := res.Worker; wk != nil && wk.Name != "" {
				fmt.Fprintf(w, "claimed worker %s on %s (claim id %s)\n", wk.Name, res.UUID, res.ClaimID)
				switch {
				case wk.Resumed && wk.Remapped:
					fmt.Fprintf(w, "resumed from host memory in %.1f ms, moved from %s (where it was suspended)\n", wk.ResumeMs, wk.CheckpointedOn)
				case wk.Resumed:
					fmt.Fprintf(w, "resumed from host memory in %.1f ms on the GPU it was suspended on\n", wk.ResumeMs)
				default:
					fmt.Fprintln(w, "was resident: no resume needed")
				}
				fmt.Fprintf(w, "worker pid %d on %s\n", wk.PID, wk.Socket)
				return nil
			}
			fmt.Fprintf(w, "claimed %s (claim id %s)\n", res.UUID, res.ClaimID)
			switch res.HolderRelease {
			case "now":
				fmt.Fprintf(w, "holder released in %.2f ms\n", res.ReleaseMs)
			case "deferred":
				fmt.Fprintf(w, "holder kept for %.0f ms while the job starts\n", res.ReleaseAfterMs)
			case "handed_over":
				fmt.Fprintf(w, "warm worker pid %d on %s\n", res.Worker.PID, res.Worker.Socket)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the claim as JSON")
	f.BoolVar(&env, "env", false, "print shell exports (CUDA_VISIBLE_DEVICES, LAZYFS_CLAIM_ID, worker socket)")
	f.StringVar(&req.Owner, "owner", "", "who claims (shown in status)")
	f.StringVar(&req.Release, "release", "", `"now" to have the holder gone before claim returns, "deferred" for the default`)
	f.StringVar(&req.Worker, "worker", "", "claim this model warm worker (resumed from host memory if suspended); UUID then names the GPU to resume it on")
	cmd.MarkFlagsMutuallyExclusive("json", "env")
	return cmd
}

func newGPUReleaseCmd(client func() *api.Client) *cobra.Command {
	var (
		asJSON bool
		req    api.ReleaseRequest
	)
	cmd := &cobra.Command{
		Use:   "release UUID | --worker NAME",
		Short: "Release a claimed GPU (warmed again after a grace period) or model worker (suspended again)",
		Example: `  lazyfs gpu release GPU-8f2e…
  lazyfs gpu release --worker llama`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				req.UUID = strings.TrimSpace(args[0])
			}
			if wn := os.Getenv("LAZYFS_WORKER_NAME"); req.Worker == "" && wn != "" && (req.UUID == "" || req.UUID == os.Getenv("LAZYFS_GPU_UUID")) {
				// After eval "$(lazyfs gpu claim --worker NAME --env)",
				// `release "$LAZYFS_GPU_UUID"` ends that worker's claim.
				req.Worker = wn
			}
			if req.UUID == "" && req.Worker == "" {
				return fmt.Errorf("release: name a GPU UUID or --worker NAME")
			}
			if req.ClaimID == "" {
				req.ClaimID = os.Getenv("LAZYFS_CLAIM_ID")
			}
			res, err := client().Release(cmd.Context(), req)
			if err != nil {
				return gpuError{err}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			if res.Worker != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "released worker %s on %s; now %s\n", res.Worker, res.UUID, res.WorkerState)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "released %s; warm again in %.0f ms\n", res.UUID, res.WarmAfterMs)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().StringVar(&req.Worker, "worker", "", "release this model worker (default $LAZYFS_WORKER_NAME when no UUID, or $LAZYFS_GPU_UUID, is given)")
	cmd.Flags().StringVar(&req.ClaimID, "claim-id", "", "claim to end (default $LAZYFS_CLAIM_ID; empty ends whatever claim holds the GPU)")
	return cmd
}

// writeEnv prints the claim as shell exports, every value single-quoted so
// that eval assigns it verbatim whatever bytes it holds.
func writeEnv(w io.Writer, res api.ClaimResult) error {
	vars := [][2]string{{"CUDA_VISIBLE_DEVICES", res.UUID}, {"LAZYFS_GPU_UUID", res.UUID}, {"LAZYFS_CLAIM_ID", res.ClaimID}}
	if wk := res.Worker; wk != nil {
		vars = append(vars, [2]string{"LAZYFS_WORKER_SOCKET", wk.Socket}, [2]string{"LAZYFS_WORKER_PID", strconv.Itoa(wk.PID)})
		if wk.Name != "" {
			vars = append(vars, [2]string{"LAZYFS_WORKER_NAME", wk.Name})
		}
	}
	var b strings.Builder
	for _, v := range vars {
		fmt.Fprintf(&b, "export %s=%s\n", v[0], shellQuote(v[1]))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeEnvFailure prints shell code that reports err on stderr and fails,
// so eval "$(lazyfs gpu claim --env)" fails visibly (and stops a set -e
// script) instead of evaluating nothing.
func writeEnvFailure(w io.Writer, err error) {
	fmt.Fprintf(w, "echo %s >&2; false\n", shellQuote("lazyfs gpu claim: "+err.Error()))
}

// shellQuote quotes s for POSIX sh: inside single quotes every byte is
// literal, and a single quote is written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
