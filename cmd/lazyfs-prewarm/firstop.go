package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/prewarm"
)

// firstOpOut is what `firstop` prints: one JSON line.
type firstOpOut struct {
	prewarm.FirstOpResult
	Mode          string  `json:"mode"`
	ClaimID       string  `json:"claim_id,omitempty"`
	HolderRelease string  `json:"holder_release,omitempty"`
	ReleaseMs     float64 `json:"release_ms,omitempty"`
	WorkerPID     int     `json:"worker_pid,omitempty"`
	// ImportDoneUnixNano is set by the torch probe (import torch done).
	ImportDoneUnixNano int64 `json:"import_done_unix_nano,omitempty"`
	// Model-worker samples: the worker, the server-side resume, the
	// suspend after the release, the host bytes it then held, and the
	// checksum its GPU data had after the resume.
	Worker         string  `json:"worker,omitempty"`
	ResumeMs       float64 `json:"resume_ms,omitempty"`
	SuspendMs      float64 `json:"suspend_ms,omitempty"`
	SuspendedBytes uint64  `json:"suspended_bytes,omitempty"`
	Checksum       string  `json:"checksum,omitempty"`
}

// newFirstOpCmd measures a fresh process's way to its first completed CUDA
// operation: on its own, after claiming a GPU, or through a handed-over warm
// worker. The device check runs it N times per scenario.
func newFirstOpCmd() *cobra.Command {
	var (
		socket    string
		claim     bool
		viaWorker bool
		release   string
	)
	cmd := &cobra.Command{
		Use:    "firstop",
		Short:  "Time this process's first completed CUDA op (device check probe)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := firstOpOut{Mode: "fresh"}
			if claim || viaWorker {
				t0 := time.Now()
				c := prewarm.NewClient(socket)
				res, err := c.Claim(ctx, prewarm.ClaimRequest{Owner: fmt.Sprintf("firstop pid %d", os.Getpid()), Release: release})
				if err != nil {
					return err
				}
				out.ClaimMs = float64(time.Since(t0).Microseconds()) / 1000
				out.UUID, out.ClaimID, out.HolderRelease, out.ReleaseMs = res.UUID, res.ClaimID, res.HolderRelease, res.ReleaseMs
				if viaWorker {
					if res.Worker == nil {
						return fmt.Errorf("claim of %s returned no warm worker (daemon not in warm-worker mode?)", res.UUID)
					}
					out.Mode, out.WorkerPID = "worker", res.Worker.PID
					done, err := prewarm.WorkerOp(ctx, res.Worker.Socket)
					if err != nil {
						return err
					}
					out.DoneUnixNano = done
					return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
				}
				out.Mode = "claim"
				os.Setenv("CUDA_VISIBLE_DEVICES", res.UUID)
			}
			r, err := prewarm.FirstOp(prewarm.DriverFromEnv())
			if err != nil {
				return err
			}
			uuid, claimMs := out.UUID, out.ClaimMs
			out.FirstOpResult = r
			out.ClaimMs = claimMs
			if uuid != "" {
				out.UUID = uuid
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", prewarm.DefaultSocket, "daemon socket")
	cmd.Flags().BoolVar(&claim, "claim", false, "claim a GPU first and run the op on it")
	cmd.Flags().BoolVar(&viaWorker, "via-worker", false, "claim a GPU and run the op through its handed-over warm worker")
	cmd.Flags().StringVar(&release, "release", "", `holder release policy for the claim ("now" or "deferred")`)
	return cmd
}
