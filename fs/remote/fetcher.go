package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// Fetcher reads manifests and byte ranges of blobs from registries. It is
// safe for concurrent use; one Fetcher should serve a whole daemon so that
// tokens, connections, redirects and in-flight chunk fetches are shared.
type Fetcher struct {
	opts         options
	base         http.RoundTripper
	ownTransport *http.Transport // nil when WithTransport was given
	sem          chan struct{}
	bgSem        chan struct{}

	mu              sync.Mutex
	hosts           map[string]*hostSet
	extraTransports []*http.Transport
	clients         map[clientKey]*clientEntry
	redirects       map[redirectKey]redirectEntry
	inflight        map[chunkKey]*chunkCall
	links           map[string]*linkMeter // by registry host (linkFor)
	gen             uint64

	authFlight singleflight.Group
	tocFlight  singleflight.Group // Blob.TOC: one fetch and decode per layer at a time
	st         counters
}

// Stats are cumulative counters of a Fetcher.
type Stats struct {
	// Requests counts HTTP requests sent for manifests and blob ranges
	// (a request that followed redirects counts once; token requests are not counted).
	Requests int64 `json:"requests"`
	// BytesFetched counts body bytes read from blob range responses.
	BytesFetched int64 `json:"bytesFetched"`
	// ChunksFetched counts chunks fetched from the network and verified.
	ChunksFetched int64 `json:"chunksFetched"`
	// ChunksShared counts chunk reads served by joining another caller's in-flight fetch.
	ChunksShared int64 `json:"chunksShared"`
	// Retries counts attempts repeated after a transient failure.
	Retries int64 `json:"retries"`
	// Errors counts operations that failed after all retries and hosts.
	Errors int64 `json:"errors"`
	// VerifyFailures counts chunks whose bytes did not match their digest.
	VerifyFailures int64 `json:"verifyFailures"`
	// Redirects counts redirected blob URLs learned; RedirectReuses counts
	// requests sent straight to a cached redirected URL.
	Redirects      int64 `json:"redirects"`
	RedirectReuses int64 `json:"redirectReuses"`
	// AuthRefreshes counts credentials rebuilt after a 401.
	AuthRefreshes int64 `json:"authRefreshes"`
	// MirrorFallbacks counts operations that moved from a failing mirror to the next host.
	MirrorFallbacks int64 `json:"mirrorFallbacks"`
	// RangeIgnored counts range requests answered with 200 and the whole blob.
	RangeIgnored int64 `json:"rangeIgnored"`
}

type counters struct {
	requests, bytes, chunks, shared, retries, errors, verify, redirects,
	redirectReuses, authRefreshes, mirrorFallbacks, rangeIgnored atomic.Int64
}

// Stats returns a snapshot of the fetcher's counters.
func (f *Fetcher) Stats() Stats {
	c := &f.st
	return Stats{
		Requests: c.requests.Load(), BytesFetched: c.bytes.Load(), ChunksFetched: c.chunks.Load(),
		ChunksShared: c.shared.Load(), Retries: c.retries.Load(), Errors: c.errors.Load(),
		VerifyFailures: c.verify.Load(), Redirects: c.redirects.Load(), RedirectReuses: c.redirectReuses.Load(),
		AuthRefreshes: c.authRefreshes.Load(), MirrorFallbacks: c.mirrorFallbacks.Load(), RangeIgnored: c.rangeIgnored.Load(),
	}
}

// New builds a fetcher; see the Option functions for the defaults.
func New(opts ...Option) *Fetcher {
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	f := &Fetcher{
		opts:      o,
		sem:       make(chan struct{}, o.concurrency),
		bgSem:     make(chan struct{}, max(1, o.concurrency-o.concurrency/4)),
		hosts:     map[string]*hostSet{},
		clients:   map[clientKey]*clientEntry{},
		redirects: map[redirectKey]redirectEntry{},
		inflight:  map[chunkKey]*chunkCall{},
		links:     map[string]*linkMeter{},
	}
	if o.transport != nil {
		f.base = o.transport
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 4 * o.concurrency
		t.MaxIdleConnsPerHost = 2 * o.concurrency
		t.ResponseHeaderTimeout = o.stallTimeout
		t.ForceAttemptHTTP2 = true
		f.ownTransport, f.base = t, t
	}
	return f
}

// Close releases idle connections. In-flight calls are not interrupted;
// the Fetcher stays usable.
func (f *Fetcher) Close() error {
	f.mu.Lock()
	ts := append([]*http.Transport(nil), f.extraTransports...)
	f.mu.Unlock()
	for _, t := range ts {
		t.CloseIdleConnections()
	}
	if ci, ok := f.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
	return nil
}

func (f *Fetcher) hostsFor(reg name.Registry) (*hostSet, error) {
	if f.opts.insecure && reg.Scheme() != "http" {
		if r, err := name.NewRegistry(reg.RegistryStr(), name.WeakValidation, name.Insecure); err == nil {
			reg = r
		}
	}
	key := reg.Scheme() + "://" + reg.RegistryStr()
	f.mu.Lock()
	defer f.mu.Unlock()
	if hs := f.hosts[key]; hs != nil {
		return hs, nil
	}
	hs, err := f.loadHosts(reg)
	if err != nil {
		return nil, err
	}
	f.hosts[key] = hs
	return hs, nil
}

// Authenticated clients, one per (host, repository), rebuilt after a 401.

type clientKey struct{ base, repo string }

type clientEntry struct {
	client *http.Client
	gen    uint64
}

func (f *Fetcher) client(ctx context.Context, ep *endpoint, repo name.Repository) (*clientEntry, error) {
	k := clientKey{ep.base, repo.RepositoryStr()}
	f.mu.Lock()
	ce := f.clients[k]
	f.mu.Unlock()
	if ce != nil {
		return ce, nil
	}
	// Waiters leave when their own context ends (a read's fetch deadline
	// included), while the shared handshake goes on for the others.
	ch := f.authFlight.DoChan(k.base+"|"+k.repo, func() (any, error) {
		f.mu.Lock()
		ce := f.clients[k]
		f.mu.Unlock()
		if ce != nil {
			return ce, nil
		}
		// The handshake is shared by every caller waiting here: do not let
		// one caller's cancellation fail the others.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*f.opts.stallTimeout)
		defer cancel()
		rt, err := f.authTransport(hctx, ep, repo)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.gen++
		ce = &clientEntry{gen: f.gen, client: &http.Client{Transport: rt, CheckRedirect: checkRedirect}}
		f.clients[k] = ce
		return ce, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*clientEntry), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// checkRedirect bounds redirects and, on a redirect to another host, keeps
// only the headers every request needs: net/http drops Authorization and
// cookies itself, but would forward the registry's own headers (hosts.toml
// [header] entries, often tokens) to blob storage.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("%w: stopped after 10 redirects", ErrBadResponse)
	}
	if req.URL.Host != via[0].URL.Host {
		for k := range req.Header {
			if !redirectSafeHeaders[http.CanonicalHeaderKey(k)] {
				delete(req.Header, k)
			}
		}
	}
	return nil
}

// redirectSafeHeaders are forwarded across hosts on a redirect.
var redirectSafeHeaders = map[string]bool{
	"Range": true, "Accept": true, "Accept-Encoding": true, "User-Agent": true,
	"If-Match": true, "If-None-Match": true, "If-Range": true,
}

// dropClient forgets the client of generation gen so the next request
// builds a new one (new token exchange, new credentials from the keychain).
func (f *Fetcher) dropClient(ep *endpoint, repo name.Repository, gen uint64) {
	k := clientKey{ep.base, repo.RepositoryStr()}
	f.mu.Lock()
	if ce := f.clients[k]; ce != nil && ce.gen == gen {
		delete(f.clients, k)
	}
	f.mu.Unlock()
}

func (f *Fetcher) authTransport(ctx context.Context, ep *endpoint, repo name.Repository) (http.RoundTripper, error) {
	auth, err := authn.Resolve(ctx, f.opts.keychain, ep.authReg)
	if err != nil {
		return nil, fmt.Errorf("%w: keychain for %s: %v", ErrUnauthorized, ep.authReg, err)
	}
	inner := transport.NewUserAgent(ep.rt, f.opts.userAgent)
	rt, err := transport.NewWithContext(ctx, ep.reg, auth, inner, []string{repo.Scope(transport.PullScope)})
	if err == nil {
		return rt, nil
	}
	var te *transport.Error
	if errors.As(err, &te) {
		if ep.mirror && te.StatusCode != http.StatusUnauthorized && te.StatusCode < 500 {
			// A proxy that does not answer /v2/ (override_path mirrors, some
			// P2P proxies): talk to it without the auth handshake.
			return inner, nil
		}
		return nil, &statusError{Code: te.StatusCode, URL: ep.base + "/", Msg: "auth handshake", RetryAfter: 0}
	}
	err = fmt.Errorf("auth handshake with %s: %w", ep.base, redactErr(err))
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ce x509.CertificateInvalidError
	if errors.As(err, &rh) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ce) || plainHTTPServer(err) {
		return nil, err // TLS misconfiguration: retrying will not help
	}
	return nil, transient(err)
}

// Error classes.

var (
	errStalled      = errors.New("no bytes received within the stall timeout")
	errTooSlow      = errors.New("body slower than the minimum throughput")
	errDeadline     = fmt.Errorf("%w: %w", ErrFetchDeadline, context.DeadlineExceeded)
	errRedirectGone = errors.New("cached redirect url refused")
	errNoHost       = errors.New("no registry host with the needed capability")
)

// statusError is an HTTP status the registry answered with.
type statusError struct {
	Code       int
	URL        string
	Msg        string
	RetryAfter time.Duration
}

func (e *statusError) Error() string {
	s := fmt.Sprintf("%s: http %d %s", e.URL, e.Code, http.StatusText(e.Code))
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

func (e *statusError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == http.StatusNotFound
	case ErrUnauthorized:
		return e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden
	}
	return false
}

// transientError marks network faults worth retrying.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func transient(err error) error { return &transientError{err} }

// stopError carries an error of the caller's callback: never retried.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// verifyError is a chunk that did not verify: fatal on this host, the next host may have good bytes.
type verifyError struct{ err error }

func (e *verifyError) Error() string { return e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

type errClass int

const (
	classFatal errClass = iota
	classRetry
	classAuth
	classRedirect
	classStop
)

func classify(err error) errClass {
	var se *statusError
	var te *transientError
	var st *stopError
	switch {
	case errors.As(err, &st):
		return classStop
	case errors.Is(err, errRedirectGone):
		return classRedirect
	case errors.As(err, &se):
		switch {
		case se.Code == http.StatusUnauthorized:
			return classAuth
		case se.Code == http.StatusRequestTimeout, se.Code == http.StatusTooManyRequests, se.Code >= 500:
			return classRetry
		}
		return classFatal
	case errors.As(err, &te):
		return classRetry
	}
	return classFatal
}

// doError classifies an error of http.Client.Do, with the URL redacted.
func doError(err error, rctx context.Context) error {
	err = redactErr(err)
	if c := context.Cause(rctx); errors.Is(c, errStalled) || errors.Is(c, errTooSlow) {
		return transient(fmt.Errorf("%w: %v", c, err))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		var ce x509.CertificateInvalidError
		var ua x509.UnknownAuthorityError
		var he x509.HostnameError
		var rh tls.RecordHeaderError
		if errors.As(err, &ce) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &rh) || plainHTTPServer(err) || errors.Is(err, ErrBadResponse) {
			return err
		}
	}
	return transient(err)
}

// plainHTTPServer reports net/http's error for a TLS request answered in
// plain HTTP (it replaces the tls.RecordHeaderError with a bare string).
func plainHTTPServer(err error) bool {
	return strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}

func retryAfter(resp *http.Response) time.Duration {
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// responseError turns an unexpected response into a statusError, reading a
// little of the body for the message and draining it for connection reuse.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	msg := strings.Join(strings.Fields(string(b)), " ")
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return &statusError{Code: resp.StatusCode, URL: redact(resp.Request.URL), Msg: msg, RetryAfter: retryAfter(resp)}
}

// redact drops the query, fragment and user info (signed URLs carry
// credentials: X-Amz-Signature, sig, token, ...) for error messages and logs.
func redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	s := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.RawQuery != "" || u.ForceQuery {
		s += "?REDACTED"
	}
	return s
}

// redactString redacts a URL given as a string (what url.Error holds); a
// string that does not parse is cut at its first '?'.
func redactString(s string) string {
	if u, err := url.Parse(s); err == nil {
		return redact(u)
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		return s[:i] + "?REDACTED"
	}
	return s
}

// redactErr redacts the URL of every *url.Error in err's chain (net/http
// puts the whole request URL, query included, in its errors).
func redactErr(err error) error {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if ue, ok := e.(*url.Error); ok {
			ue.URL = redactString(ue.URL)
		}
	}
	return err
}

// do runs attempt against the hosts with capability cp, in order: a mirror
// that fails (transiently or not) hands over to the next host at once and is
// paused for a while; the last host (the origin) is retried with backoff
// until maxAttempts or the deadline, both counted from the last attempt that
// made progress (progress may be nil). A 401 rebuilds credentials once per host.
func (f *Fetcher) do(ctx context.Context, repo name.Repository, cp int, progress func() int64,
	attempt func(ctx context.Context, ep *endpoint, c *http.Client) error) error {
	hs, err := f.hostsFor(repo.Registry)
	if err != nil {
		return err
	}
	eps := hs.forCap(cp)
	if len(eps) == 0 {
		return fmt.Errorf("registry %s: %w", repo.Registry, errNoHost)
	}
	var (
		i, tries  int
		refreshed bool
		lastP     int64 = -1
		since           = time.Now()
	)
	if progress != nil {
		lastP = progress()
	}
	for {
		ep := eps[i]
		ce, err := f.client(ctx, ep, repo)
		if err == nil {
			err = attempt(ctx, ep, ce.client)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", context.Cause(ctx), err)
		}
		class := classify(err)
		switch class {
		case classStop:
			return err
		case classAuth:
			if !refreshed && ce != nil {
				refreshed = true
				f.st.authRefreshes.Add(1)
				f.opts.logger.InfoContext(ctx, "registry refused credentials, refreshing", "host", ep.base, "repo", repo.RepositoryStr(), "err", err)
				f.dropClient(ep, repo, ce.gen)
				continue
			}
			err = fmt.Errorf("%w: %w", ErrUnauthorized, err)
			class = classFatal
		case classRedirect:
			class = classRetry
		}
		if progress != nil {
			if p := progress(); p != lastP {
				lastP, tries, since = p, 0, time.Now()
			}
		}
		if errors.Is(err, errRedirectGone) && tries < f.opts.maxAttempts {
			tries++
			continue // straight back to the same host for a fresh URL
		}
		if class == classFatal || ep.mirror {
			if i < len(eps)-1 {
				if ep.mirror {
					ep.pausedUntil.Store(time.Now().Add(f.opts.mirrorPause).UnixNano())
					f.st.mirrorFallbacks.Add(1)
					f.opts.logger.WarnContext(ctx, "mirror failed, trying next host", "mirror", ep.base, "err", err)
				}
				i, tries, refreshed = i+1, 0, false
				continue
			}
			if class == classFatal {
				f.st.errors.Add(1)
				return err
			}
		}
		tries++
		delay := f.backoff(tries, err)
		if tries >= f.opts.maxAttempts || time.Since(since)+delay > f.opts.deadline {
			f.st.errors.Add(1)
			return fmt.Errorf("%w (gave up after %d attempts in %v)", err, tries, time.Since(since).Round(time.Millisecond))
		}
		f.st.retries.Add(1)
		f.opts.logger.DebugContext(ctx, "retrying", "host", ep.base, "attempt", tries, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// backoff is exponential with full jitter in [d/2, d), d = base·2^(n-1)
// capped at maxDelay, or the server's Retry-After when it asks for longer.
func (f *Fetcher) backoff(n int, err error) time.Duration {
	d := f.opts.baseDelay << min(n-1, 20)
	if d > f.opts.maxDelay || d <= 0 {
		d = f.opts.maxDelay
	}
	d = d/2 + rand.N(d/2+1)
	var se *statusError
	if errors.As(err, &se) && se.RetryAfter > d {
		d = se.RetryAfter
	}
	return d
}

// Redirect cache: blob URLs the registry redirected to (S3/GCS/CDN), reused
// until they expire.

type redirectKey struct{ base, repo, digest string }

type redirectEntry struct {
	u       *url.URL
	expires time.Time
}

func (f *Fetcher) cachedRedirect(k redirectKey) (*url.URL, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.redirects[k]
	if !ok {
		return nil, false
	}
	if time.Now().After(e.expires) {
		delete(f.redirects, k)
		return nil, false
	}
	return e.u, true
}

func (f *Fetcher) storeRedirect(k redirectKey, u *url.URL) {
	exp := redirectExpiry(u, time.Now(), f.opts.redirectTTL)
	if !exp.After(time.Now()) {
		return
	}
	f.st.redirects.Add(1)
	f.mu.Lock()
	f.redirects[k] = redirectEntry{u: u, expires: exp}
	f.mu.Unlock()
}

func (f *Fetcher) dropRedirect(k redirectKey) {
	f.mu.Lock()
	delete(f.redirects, k)
	f.mu.Unlock()
}

// redirectExpiry returns when a redirected URL should stop being used:
// the signature's expiry (S3 SigV4 X-Amz-Date+X-Amz-Expires, GCS
// X-Goog-Date+X-Goog-Expires, SigV2/CloudFront Expires, Azure SAS se)
// minus a safety margin, or now+ttl when the URL carries none; never more
// than an hour ahead.
func redirectExpiry(u *url.URL, now time.Time, ttl time.Duration) time.Time {
	q := u.Query()
	var exp time.Time
	signed := func(dateKey, expKey string) bool {
		s := q.Get(expKey)
		if s == "" {
			return false
		}
		secs, err := strconv.ParseInt(s, 10, 64)
		if err != nil || secs < 0 || secs > 7*24*3600 {
			return false
		}
		start := now
		if d, err := time.Parse("20060102T150405Z", q.Get(dateKey)); err == nil {
			start = d
		}
		exp = start.Add(time.Duration(secs) * time.Second)
		return true
	}
	switch {
	case signed("X-Amz-Date", "X-Amz-Expires"), signed("X-Goog-Date", "X-Goog-Expires"):
	case q.Get("Expires") != "":
		if s, err := strconv.ParseInt(q.Get("Expires"), 10, 64); err == nil && s > 0 && s < 1<<40 {
			exp = time.Unix(s, 0)
		}
	case q.Get("se") != "" && q.Get("sig") != "":
		if t, err := time.Parse(time.RFC3339, q.Get("se")); err == nil {
			exp = t
		}
	}
	if exp.IsZero() {
		return now.Add(ttl)
	}
	margin := max(min(exp.Sub(now)/10, time.Minute), 5*time.Second)
	exp = exp.Add(-margin)
	if lim := now.Add(time.Hour); exp.After(lim) {
		exp = lim
	}
	return exp
}

// body reads a response body of known length, counting bytes, feeding the
// stall and throughput watchdogs and marking network faults as transient.
type body struct {
	ctx       context.Context // the attempt's: its cause says why it ended
	r         io.Reader
	remaining int64
	timer     *time.Timer
	stall     time.Duration
	count     *atomic.Int64
	moved     *atomic.Int64 // bytes of this attempt, for the throughput watchdog
}

func (b *body) Read(p []byte) (int, error) {
	if b.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.r.Read(p)
	b.remaining -= int64(n)
	b.count.Add(int64(n))
	b.moved.Add(int64(n))
	if n > 0 {
		b.timer.Reset(b.stall)
	}
	if err != nil && err != io.EOF && b.ctx != nil {
		if c := context.Cause(b.ctx); errors.Is(c, errStalled) || errors.Is(c, errTooSlow) {
			return n, transient(fmt.Errorf("%w: %v", c, err))
		}
	}
	switch {
	case err == io.EOF && b.remaining > 0:
		err = transient(io.ErrUnexpectedEOF)
	case err == io.EOF:
		err = nil
	case err != nil:
		err = transient(err)
	}
	return n, err
}
