package prewarm

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// The test binary doubles as the holder and worker child: with
// LAZYFS_PREWARM_TEST_CHILD set it runs RunHolder or ServeWorker on the
// fake CUDA driver, so the process machinery (start, READY, kill, crash,
// hand-over) is the real one.
func TestMain(m *testing.M) {
	switch os.Getenv("LAZYFS_PREWARM_TEST_CHILD") {
	case "holder":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := RunHolder(ctx, DriverFromEnv(), HoldOptions{UUID: os.Getenv("LAZYFS_GPU_UUID")}, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "holder:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "worker":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := ServeWorker(ctx, DriverFromEnv(), os.Getenv("LAZYFS_WORKER_SOCKET"), 0, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
