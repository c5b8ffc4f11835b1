package convert_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// TestCheckPush: the push check passes where a push would, reports the
// registry's refusal (405 from a read-only mirror) before any conversion,
// and gives up with its context against a registry that never answers.
func TestCheckPush(t *testing.T) {
	ctx := context.Background()
	if err := convert.CheckPush(ctx, registrytest.New(t).Ref("a:lazy"), false, nil); err != nil {
		t.Fatalf("writable registry: %v", err)
	}
	err := convert.CheckPush(ctx, registrytest.New(t, registrytest.ReadOnly()).Ref("a:lazy"), false, nil)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("read-only registry: %v; want a 405 transport error", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := convert.CheckPush(ctx, registrytest.Silent(t).Host+"/a:lazy", false, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent registry: %v; want the context's error", err)
	}
}
