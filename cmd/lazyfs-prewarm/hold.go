package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/prewarm"
)

// newHoldCmd is the holder child the daemon re-execs per idle GPU. It runs
// with CUDA_VISIBLE_DEVICES set to the GPU's UUID, retains the primary
// context, prints READY and sleeps until killed (or stdin closes).
func newHoldCmd() *cobra.Command {
	var opts prewarm.HoldOptions
	var alloc size
	cmd := &cobra.Command{
		Use:    "hold --uuid UUID",
		Short:  "Holder child: retain one GPU's primary context until killed",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			opts.AllocBytes = uint64(alloc)
			return prewarm.RunHolder(ctx, prewarm.DriverFromEnv(), opts, os.Stdin, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&opts.UUID, "uuid", "", "GPU or MIG UUID (also in CUDA_VISIBLE_DEVICES)")
	cmd.Flags().Var(&alloc, "alloc", "bytes to allocate besides the context")
	return cmd
}

// newWorkerCmd is the reference warm worker (protocol in docs/prewarm.md).
func newWorkerCmd() *cobra.Command {
	var alloc size
	cmd := &cobra.Command{
		Use:     "worker",
		Short:   "Reference warm worker: hold a context and run small ops on request",
		Example: "  lazyfs-prewarm --worker-command 'lazyfs-prewarm worker'   # the daemon keeps one per idle GPU",
		Long: `worker retains the primary context of the GPU in CUDA_VISIBLE_DEVICES, listens
on $LAZYFS_WORKER_SOCKET, prints READY and answers one line per request:
"op" (runs a small CUDA op, answers "ok <unix-ns>"), "ping", "exit".
Use it as --worker-command 'lazyfs-prewarm worker'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return prewarm.ServeWorker(ctx, prewarm.DriverFromEnv(), os.Getenv("LAZYFS_WORKER_SOCKET"), uint64(alloc), os.Stdout)
		},
	}
	cmd.Flags().Var(&alloc, "alloc", "bytes to allocate besides the context")
	return cmd
}
