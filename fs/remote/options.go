package remote

import (
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Option configures a Fetcher.
type Option func(*options)

type options struct {
	keychain     authn.Keychain
	insecure     bool
	hostsDir     string
	transport    http.RoundTripper
	maxRequest   int64
	maxGap       int64
	concurrency  int
	maxAttempts  int
	baseDelay    time.Duration
	maxDelay     time.Duration
	deadline     time.Duration
	stallTimeout time.Duration
	minRate      int64
	rateWindow   time.Duration
	fetchTimeout time.Duration
	maxSkip      int64
	redirectTTL  time.Duration
	mirrorPause  time.Duration
	logger       *slog.Logger
	userAgent    string
}

// Defaults, in one place.
const (
	DefaultMaxRequestSize = 16 << 20
	DefaultMaxGap         = 64 << 10
	DefaultConcurrency    = 16
	DefaultMaxAttempts    = 6
	DefaultBaseDelay      = 100 * time.Millisecond
	DefaultDeadline       = 60 * time.Second
	DefaultStallTimeout   = 30 * time.Second
	// DefaultMinThroughput and DefaultThroughputWindow: an attempt that moves
	// less than 4 KiB/s over 10 s is aborted and retried.
	DefaultMinThroughput    = 4 << 10
	DefaultThroughputWindow = 10 * time.Second
	// DefaultFetchDeadline bounds one FetchChunks call.
	DefaultFetchDeadline = 60 * time.Second
	DefaultMaxSkip       = 1 << 20
	DefaultRedirectTTL   = 5 * time.Minute
	DefaultUserAgent     = "lazyfs"
)

func defaults() options {
	return options{
		keychain:     authn.DefaultKeychain,
		maxRequest:   DefaultMaxRequestSize,
		maxGap:       DefaultMaxGap,
		concurrency:  DefaultConcurrency,
		maxAttempts:  DefaultMaxAttempts,
		baseDelay:    DefaultBaseDelay,
		maxDelay:     5 * time.Second,
		deadline:     DefaultDeadline,
		stallTimeout: DefaultStallTimeout,
		minRate:      DefaultMinThroughput,
		rateWindow:   DefaultThroughputWindow,
		fetchTimeout: DefaultFetchDeadline,
		maxSkip:      DefaultMaxSkip,
		redirectTTL:  DefaultRedirectTTL,
		mirrorPause:  30 * time.Second,
		logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		userAgent:    DefaultUserAgent,
	}
}

// WithKeychain sets where credentials come from (default authn.DefaultKeychain,
// i.e. the Docker config file and its credential helpers).
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithInsecure allows plain HTTP for every registry (ggcr's name.Insecure).
// Registries on localhost, loopback and private addresses use plain HTTP
// regardless, as crane does.
func WithInsecure(b bool) Option { return func(o *options) { o.insecure = b } }

// WithHostsDir sets the containerd-style hosts directory
// (DIR/HOST[:PORT]/hosts.toml, DIR/_default/hosts.toml) describing mirrors.
func WithHostsDir(dir string) Option { return func(o *options) { o.hostsDir = dir } }

// WithTransport sets the base RoundTripper (default: a clone of
// http.DefaultTransport tuned for many parallel range requests). Per-host TLS
// settings from hosts.toml only apply to the default transport.
func WithTransport(rt http.RoundTripper) Option { return func(o *options) { o.transport = rt } }

// WithMaxRequestSize bounds the bytes one coalesced range request asks for
// (default 16 MiB: fewer, larger requests cost a registry less per byte,
// and read-ahead keeps several in flight). A single chunk larger than the
// bound still gets one request.
func WithMaxRequestSize(n int64) Option {
	return func(o *options) {
		if n > 0 {
			o.maxRequest = n
		}
	}
}

// WithMaxGap sets how many unrequested bytes (metadata frames between files)
// may be read and discarded to merge two chunks into one request (default 64
// KiB; 0 merges only exactly adjacent chunks).
func WithMaxGap(n int64) Option {
	return func(o *options) {
		if n >= 0 {
			o.maxGap = n
		}
	}
}

// WithConcurrency bounds the range requests in flight for the whole fetcher
// (default 16).
func WithConcurrency(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// WithRetry sets the number of attempts per host, the first backoff delay
// (doubled each attempt, with jitter, capped at 5 s) and the deadline after
// which no new attempt starts; the deadline counts from the last attempt that
// made progress, so long transfers that progress are not cut.
func WithRetry(maxAttempts int, baseDelay, deadline time.Duration) Option {
	return func(o *options) {
		if maxAttempts > 0 {
			o.maxAttempts = maxAttempts
		}
		if baseDelay > 0 {
			o.baseDelay = baseDelay
		}
		if deadline > 0 {
			o.deadline = deadline
		}
	}
}

// WithStallTimeout aborts (and retries) a request whose response headers or
// body bytes do not arrive for d (default 30 s).
func WithStallTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.stallTimeout = d
		}
	}
}

// WithMinThroughput aborts (and retries) a request whose body moves fewer
// than bytesPerSec bytes per second over any window of the given length
// (default 4 KiB/s over 10 s): a registry trickling a byte every few
// seconds defeats the stall timeout, not this. 0 bytes per second disables it.
func WithMinThroughput(bytesPerSec int64, window time.Duration) Option {
	return func(o *options) {
		if bytesPerSec >= 0 {
			o.minRate = bytesPerSec
		}
		if window > 0 {
			o.rateWindow = window
		}
	}
}

// WithFetchDeadline bounds each FetchChunks call, retries and waits for
// request slots included (default 60 s): then it fails with an error
// wrapping ErrFetchDeadline (an I/O error at the FUSE edge), and its
// requests are cancelled.
func WithFetchDeadline(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.fetchTimeout = d
		}
	}
}

// WithMaxSkip sets how many leading bytes the fetcher reads and discards when
// a host ignores Range and sends the whole blob (default 1 MiB). Beyond that
// the host is marked as not supporting ranges; see docs/remote.md.
func WithMaxSkip(n int64) Option {
	return func(o *options) {
		if n >= 0 {
			o.maxSkip = n
		}
	}
}

// WithRedirectTTL sets how long a redirected blob URL without an expiry in
// its query is reused (default 5 min).
func WithRedirectTTL(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.redirectTTL = d
		}
	}
}

// WithLogger sets the logger for retries, fallbacks and refreshes (default silent).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithUserAgent sets the User-Agent header (default "lazyfs").
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }
