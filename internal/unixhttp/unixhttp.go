// Package unixhttp is the client side of lazyfs's JSON-over-HTTP APIs on
// unix sockets (the node control API, the GPU pre-warm API and its warm
// requests to the cache owner): it sends one request with a JSON body,
// bounds the answer, decodes it, and sorts failures into connection errors
// (ErrConnect), non-2xx answers (*StatusError) and undecodable answers
// (ErrBadAnswer), which each API's client turns into its own errors. The
// server side is internal/unixsock.
package unixhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Errors of Do, besides its context's.
var (
	// ErrConnect wraps a failure to connect to the socket: none there,
	// nobody listening, permission denied.
	ErrConnect = errors.New("cannot connect")
	// ErrBadAnswer wraps a 2xx answer that does not decode.
	ErrBadAnswer = errors.New("bad answer")
)

// Defaults, in one place.
const (
	// DefaultMaxAnswer bounds a decoded answer.
	DefaultMaxAnswer = 16 << 20
	// MaxErrorBody bounds the body kept in a StatusError.
	MaxErrorBody = 64 << 10
)

// ConnectError is a failure to connect to the socket; it matches ErrConnect
// and unwraps to net/http's error, whose text it keeps.
type ConnectError struct{ Err error }

func (e *ConnectError) Error() string        { return e.Err.Error() }
func (e *ConnectError) Unwrap() error        { return e.Err }
func (e *ConnectError) Is(target error) bool { return target == ErrConnect }

// StatusError is an answer whose status is not 2xx, with its body.
type StatusError struct {
	Code   int
	Status string // "404 Not Found"
	Body   []byte // at most MaxErrorBody bytes
}

func (e *StatusError) Error() string {
	if b := bytes.TrimSpace(e.Body); len(b) > 0 {
		return fmt.Sprintf("%s: %s", e.Status, b)
	}
	return e.Status
}

// Options configures New. The zero value keeps idle connections and has no
// deadline but the request's context.
type Options struct {
	// Timeout bounds each request, answer included (0: none).
	Timeout time.Duration
	// DialTimeout bounds connecting (0: none).
	DialTimeout time.Duration
	// NoKeepAlive uses a connection per request.
	NoKeepAlive bool
	// MaxAnswer bounds a decoded answer (0: DefaultMaxAnswer).
	MaxAnswer int64
}

// Client sends JSON requests to the HTTP server on one unix socket. It is
// safe for concurrent use.
type Client struct {
	socket    string
	hc        *http.Client
	maxAnswer int64
}

// New returns a client of the server listening on socket.
func New(socket string, o Options) *Client {
	if o.MaxAnswer <= 0 {
		o.MaxAnswer = DefaultMaxAnswer
	}
	return &Client{socket: socket, maxAnswer: o.MaxAnswer, hc: &http.Client{Timeout: o.Timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: o.DialTimeout}).DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: o.NoKeepAlive,
		MaxIdleConns:      4,
	}}}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

// HTTP returns the underlying HTTP client (its URLs' host is ignored).
func (c *Client) HTTP() *http.Client { return c.hc }

// CloseIdleConnections closes the connections kept for later requests.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Do sends method path (e.g. "/v1/mounts?dir=...") with in as its JSON body
// (nil: no body) and decodes a 2xx answer into out (nil, or a 204 answer:
// nothing is decoded). A failure to connect is a *ConnectError (matching
// ErrConnect); other transport errors are returned as net/http gives them;
// a non-2xx answer is a *StatusError; an answer that does not decode wraps
// ErrBadAnswer.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://unix"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ne, ok := errors.AsType[*net.OpError](err); ok && ne.Op == "dial" {
			return &ConnectError{err}
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBody))
		return &StatusError{Code: resp.StatusCode, Status: resp.Status, Body: b}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, c.maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("%w: %w", ErrBadAnswer, err)
	}
	return nil
}
