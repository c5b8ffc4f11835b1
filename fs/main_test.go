package fs

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the mounts and Roots of the
// tests (read-ahead workers, spool copies, go-fuse servers, caches).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
