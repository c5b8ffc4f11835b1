// Command lazyfs-prewarm is the GPU pre-warm daemon: it keeps idle GPUs
// initialised with one small holder process each (or a warm worker), hands
// them over on claim through a unix-socket API, and keeps a list of images
// warm in the node's block cache. Flags and wiring only; the logic is in
// package prewarm.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazyfs-prewarm:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := newDaemonCmd()
	root.Version = versionString()
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(newHoldCmd(), newWorkerCmd(), newFirstOpCmd(), newDevBenchCmd())
	cli.Harden(root) // usage errors: one line with the usage, exit 64
	return root
}
