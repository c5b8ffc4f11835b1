package api_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/lazyfs/lazyfs/prewarm/api"
)

// A job claims the suspended model worker "llama", uses its socket, and
// gives it back (the daemon suspends it again). Conflicts are retryable.
func ExampleClient() {
	ctx := context.Background()
	c := api.NewClient(api.DefaultSocket)
	defer c.Close()
	res, err := c.Claim(ctx, api.ClaimRequest{Worker: "llama", Owner: "job-7"})
	switch {
	case errors.Is(err, api.ErrAlreadyClaimed), errors.Is(err, api.ErrWorkerNotReady):
		fmt.Println("busy, retry later")
		return
	case err != nil:
		fmt.Println(err)
		return
	}
	fmt.Printf("worker %s on %s (resumed in %.0f ms): %s\n", res.Worker.Name, res.UUID, res.Worker.ResumeMs, res.Worker.Socket)
	// ... talk to res.Worker.Socket ...
	c.Release(ctx, api.ReleaseRequest{Worker: "llama", ClaimID: res.ClaimID})
}
