// Command lazyfs converts, inspects and lazily mounts container images, and
// drives the GPU pre-warm daemon. Each subcommand lives in its own file.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazyfs:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a subcommand choose its exit status.
type exitCoder interface{ ExitCode() int }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "lazyfs",
		Short:         "Start containers before their image has arrived",
		Long:          "lazyfs converts OCI images into a chunk-indexed, still OCI-compatible layout,\nmounts them lazily through FUSE, and keeps GPUs warm for fast cold starts.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newConvertCmd(),
		newInspectCmd(),
		newMountCmd(),
		newUmountCmd(),
		newStatsCmd(),
		newLsCmd(),
		newPullCmd(),
		newServeCmd(),
		newGPUCmd(),
		newBenchCmd(),
		newRunCmd(),
		newRecordCmd(),
		newProfileCmd(),
	)
	return root
}
