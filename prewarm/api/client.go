package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"syscall"

	"github.com/lazyfs/lazyfs/internal/unixhttp"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/lazyfs/prewarm.sock"

// Client talks to the daemon's unix socket.
type Client struct {
	Socket string
	c      *unixhttp.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, c: unixhttp.New(socket, unixhttp.Options{})}
}

// Close closes the client's idle connections.
func (c *Client) Close() { c.c.CloseIdleConnections() }

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Claim claims a GPU.
func (c *Client) Claim(ctx context.Context, req ClaimRequest) (ClaimResult, error) {
	var r ClaimResult
	err := c.do(ctx, http.MethodPost, "/v1/claim", req, &r)
	return r, err
}

// Release ends a claim.
func (c *Client) Release(ctx context.Context, req ReleaseRequest) (ReleaseResult, error) {
	var r ReleaseResult
	err := c.do(ctx, http.MethodPost, "/v1/release", req, &r)
	return r, err
}

// do sends one request; errors: ErrNotRunning (with what to do) when no
// daemon listens, the daemon's message unwrapping to its code's sentinel,
// or the socket and what failed.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	err := c.c.Do(ctx, method, path, in, out)
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*unixhttp.StatusError](err); ok {
		var e Error
		if json.Unmarshal(se.Body, &e) == nil && e.Error != "" {
			if s := ErrorOfCode(e.Code); s != nil {
				return &remoteError{msg: e.Error, sentinel: s}
			}
			return fmt.Errorf("prewarm daemon: %s", e.Error)
		}
		return fmt.Errorf("prewarm daemon %s: %s", path, se.Status)
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return &remoteError{msg: fmt.Sprintf("lazyfs-prewarm is not running at %s: start it (systemctl start lazyfs-prewarm, or lazyfs-prewarm --socket %s as root), or point --socket or LAZYFS_PREWARM_SOCKET at its socket", c.Socket, c.Socket), sentinel: ErrNotRunning}
	}
	if errors.Is(err, unixhttp.ErrBadAnswer) {
		return fmt.Errorf("prewarm daemon %s: %w", path, err)
	}
	return fmt.Errorf("prewarm daemon %s: %w", c.Socket, err)
}

// remoteError carries the daemon's message and unwraps to the sentinel.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// Error is the body of every API error answer.
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}
