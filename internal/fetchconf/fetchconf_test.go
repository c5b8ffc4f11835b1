package fetchconf_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

func TestDefaultsAreRemotes(t *testing.T) {
	d := fetchconf.Defaults()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults out of range: %v", err)
	}
	if d.FetchDeadline != remote.DefaultFetchDeadline || d.MinThroughput != remote.DefaultMinThroughput || d.RetryAttempts != remote.DefaultMaxAttempts {
		t.Fatalf("defaults %+v differ from fs/remote's", d)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		edit func(*fetchconf.Config)
		want string
	}{
		{func(c *fetchconf.Config) { c.FetchDeadline = 0 }, "fetch_deadline 0s: out of range: the deadline of one chunk fetch must be 1s-1h0m0s"},
		{func(c *fetchconf.Config) { c.StallTimeout = time.Hour }, "stall_timeout 1h0m0s: out of range"},
		{func(c *fetchconf.Config) { c.ThroughputWindow = time.Millisecond }, "throughput_window 1ms: out of range"},
		{func(c *fetchconf.Config) { c.RetryDeadline = 2 * time.Hour }, "retry_deadline 2h0m0s: out of range"},
		{func(c *fetchconf.Config) { c.RetryAttempts = 101 }, "retry_attempts 101: out of range: the attempts per registry host must be 1-100"},
		{func(c *fetchconf.Config) { c.MinThroughput = 2 << 30 }, "min_throughput 2GiB/s: out of range: the minimum throughput must be 0 (off)-1GiB/s"},
		{func(c *fetchconf.Config) { c.MinThroughput = 0 }, ""},
	} {
		c := fetchconf.Defaults()
		tc.edit(&c)
		err := c.Validate()
		var re *fetchconf.RangeError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", c, err)
		case tc.want != "" && (!errors.As(err, &re) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}

func TestThroughput(t *testing.T) {
	for in, want := range map[string]fetchconf.Throughput{"4KiB/s": 4 << 10, "1MiB": 1 << 20, "off": 0, "0": 0, " OFF ": 0, "1.5KB/s": 1500} {
		var th fetchconf.Throughput
		if err := th.Set(in); err != nil || th != want {
			t.Errorf("%q: %d %v, want %d", in, th, err, want)
		}
		var back fetchconf.Throughput
		if err := back.Set(th.String()); err != nil || back != th {
			t.Errorf("%q does not round-trip through %q", in, th.String())
		}
	}
	for _, bad := range []string{"fast", "-1", "4KiB/m", ""} {
		var th fetchconf.Throughput
		if err := th.Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestOptionsReachTheFetcher: a fetch deadline set here bounds a read from a
// registry that never answers (the default would wait 60 s).
func TestOptionsReachTheFetcher(t *testing.T) {
	hung := registrytest.Silent(t)
	c := fetchconf.Defaults()
	c.FetchDeadline = time.Second
	f := remote.New(c.Options()...)
	defer f.Close()
	repo, err := name.NewRepository(hung.Host + "/x")
	if err != nil {
		t.Fatal(err)
	}
	h, _ := v1.NewHash("sha256:" + strings.Repeat("0", 64))
	start := time.Now()
	_, err = f.Blob(repo, h, 1<<20).ReadAt(context.Background(), make([]byte, 4096), 0)
	if !errors.Is(err, remote.ErrFetchDeadline) {
		t.Fatalf("read from a hung registry: %v, want ErrFetchDeadline", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the read took %v: the 1 s fetch deadline did not apply", d)
	}
}
