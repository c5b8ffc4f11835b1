package fs

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the mounts and Roots of the
// tests (read-ahead workers, spool copies, go-fuse servers, caches).
func TestMain(m *testing.M) {
	if os.Getenv(mmapChildEnv) != "" {
		os.Exit(mmapChild())
	}
	goleak.VerifyTestMain(m)
}
