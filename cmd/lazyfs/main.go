// Command lazyfs converts, inspects and lazily mounts container images, and
// drives the GPU pre-warm daemon. Each subcommand lives in its own file.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazyfs:", cli.Message(ctx, err))
		code := cli.ExitCode(ctx, err)
		stop()
		os.Exit(code)
	}
	stop()
}

// exitCoder lets a subcommand choose its exit status.
type exitCoder interface{ ExitCode() int }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "lazyfs",
		Short:         "Start containers before their image has arrived",
		Long:          "lazyfs converts OCI images into a chunk-indexed, still OCI-compatible layout,\nmounts them lazily through FUSE, and keeps GPUs warm for fast cold starts.\n\nOutput meant for scripts (--json) is described in docs/cli.md.",
		Version:       version.String("lazyfs"),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
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
	cli.Harden(root)
	return root
}
