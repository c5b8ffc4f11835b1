package pull_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

func TestOptionsValidate(t *testing.T) {
	for _, o := range []pull.Option{
		pull.WithAddress(""), pull.WithNamespace(""), pull.WithSnapshotter(""),
		pull.WithTimeout(0), pull.WithDialTimeout(-time.Second),
	} {
		if _, err := pull.Pull(context.Background(), "example.com/x:1", o); err == nil {
			t.Error("invalid option accepted")
		}
	}
}

// TestNoContainerd: a socket nobody serves is an error naming it, within
// the dial timeout.
func TestNoContainerd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := pull.Pull(context.Background(), "example.com/x:1", pull.WithAddress(sock), pull.WithDialTimeout(time.Second))
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("pull against no containerd: %v", err)
	}
}
