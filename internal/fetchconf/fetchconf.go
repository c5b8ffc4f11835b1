// Package fetchconf is the one place for the registry fetcher settings that
// lazyfs's daemons and commands expose (lazyfs-snapshotter's config keys and
// flags, lazyfs mount and lazyfs serve's flags): fetch deadline, stall
// timeout, minimum throughput and retries. It owns their defaults (fs/remote's),
// the ranges a value must lie in, and the remote.Options they become; each
// edge prints a range error in its own words (a config key, a flag).
package fetchconf

import (
	"fmt"
	"strings"
	"time"

	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/internal/size"
)

// Config holds the settings. Every field is a real value (no zero means
// default): start from Defaults.
type Config struct {
	// FetchDeadline bounds one chunk fetch (a FUSE read's, a prefetch
	// batch's), request-slot waits, attempts and backoff included; then the
	// read fails with EIO (remote.WithFetchDeadline).
	FetchDeadline time.Duration
	// StallTimeout retries an attempt whose response headers or body bytes
	// do not arrive for this long (remote.WithStallTimeout).
	StallTimeout time.Duration
	// MinThroughput retries an attempt that moves fewer bytes per second
	// than this over ThroughputWindow; 0 is off (remote.WithMinThroughput).
	MinThroughput Throughput
	// ThroughputWindow is the window MinThroughput is measured over.
	ThroughputWindow time.Duration
	// RetryAttempts is the number of attempts per registry host.
	RetryAttempts int
	// RetryDeadline: no new attempt starts this long after the last attempt
	// that made progress (remote.WithRetry).
	RetryDeadline time.Duration
}

// Defaults are fs/remote's defaults.
func Defaults() Config {
	return Config{
		FetchDeadline:    remote.DefaultFetchDeadline,
		StallTimeout:     remote.DefaultStallTimeout,
		MinThroughput:    remote.DefaultMinThroughput,
		ThroughputWindow: remote.DefaultThroughputWindow,
		RetryAttempts:    remote.DefaultMaxAttempts,
		RetryDeadline:    remote.DefaultDeadline,
	}
}

// Ranges of the settings: a value outside is refused.
const (
	MinDuration      = time.Second // fetch_deadline, stall_timeout, throughput_window, retry_deadline
	MaxFetchDeadline = time.Hour
	MaxStallTimeout  = 10 * time.Minute
	MaxWindow        = 10 * time.Minute
	MaxRetryDeadline = time.Hour
	MaxThroughput    = 1 << 30 // bytes per second
	MaxRetryAttempts = 100
)

// RangeError is a setting outside its range. Key is the config key
// (fetch_deadline); a flag is the key with '-' for '_'.
type RangeError struct {
	Key, Value, Range, What string
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("%s %s: out of range: %s must be %s", e.Key, e.Value, e.What, e.Range)
}

// Flag is the flag spelling of Key.
func (e *RangeError) Flag() string { return strings.ReplaceAll(e.Key, "_", "-") }

// Validate returns a *RangeError for the first setting out of range.
func (c Config) Validate() error {
	dur := func(key string, v, hi time.Duration, what string) error {
		if v < MinDuration || v > hi {
			return &RangeError{key, v.String(), MinDuration.String() + "-" + hi.String(), what}
		}
		return nil
	}
	for _, err := range []error{
		dur("fetch_deadline", c.FetchDeadline, MaxFetchDeadline, "the deadline of one chunk fetch"),
		dur("stall_timeout", c.StallTimeout, MaxStallTimeout, "the stall timeout of one request"),
		dur("throughput_window", c.ThroughputWindow, MaxWindow, "the minimum throughput's window"),
		dur("retry_deadline", c.RetryDeadline, MaxRetryDeadline, "the retry deadline"),
	} {
		if err != nil {
			return err
		}
	}
	if c.MinThroughput < 0 || c.MinThroughput > MaxThroughput {
		return &RangeError{"min_throughput", c.MinThroughput.String(), "0 (off)-" + Throughput(MaxThroughput).String(), "the minimum throughput"}
	}
	if c.RetryAttempts < 1 || c.RetryAttempts > MaxRetryAttempts {
		return &RangeError{"retry_attempts", fmt.Sprint(c.RetryAttempts), fmt.Sprintf("1-%d", MaxRetryAttempts), "the attempts per registry host"}
	}
	return nil
}

// Options are the fetcher options of c (after Validate).
func (c Config) Options() []remote.Option {
	return []remote.Option{
		remote.WithFetchDeadline(c.FetchDeadline),
		remote.WithStallTimeout(c.StallTimeout),
		remote.WithMinThroughput(int64(c.MinThroughput), c.ThroughputWindow),
		remote.WithRetry(c.RetryAttempts, 0, c.RetryDeadline), // 0: the default first backoff
	}
}

// Throughput is bytes per second in lazyfs's size convention with an
// optional "/s" ("4KiB/s", "1MiB"), or "0"/"off" for none; usable as a
// pflag.Value and in TOML.
type Throughput int64

// Set implements pflag.Value.
func (t *Throughput) Set(v string) error {
	s := strings.TrimSpace(v)
	if strings.EqualFold(s, "off") {
		*t = 0
		return nil
	}
	n, err := size.Parse(strings.TrimSuffix(s, "/s"))
	if err != nil {
		return fmt.Errorf("%w, per second (4KiB/s), or off", err)
	}
	*t = Throughput(n)
	return nil
}

// String implements pflag.Value: "4KiB/s", or "off".
func (t Throughput) String() string {
	if t == 0 {
		return "off"
	}
	return size.Format(int64(t)) + "/s"
}

// Type implements pflag.Value.
func (t Throughput) Type() string { return "rate|off" }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Throughput) UnmarshalText(b []byte) error { return t.Set(string(b)) }

// MarshalText implements encoding.TextMarshaler.
func (t Throughput) MarshalText() ([]byte, error) { return []byte(t.String()), nil }
