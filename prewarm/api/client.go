package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/lazyfs/prewarm.sock"

// Client talks to the daemon's unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, hc: unixClient(socket)}
}

// Close closes the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

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

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lazyfs-prewarm"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return &remoteError{msg: fmt.Sprintf("lazyfs-prewarm is not running at %s: start it (systemctl start lazyfs-prewarm, or lazyfs-prewarm --socket %s as root), or point --socket or LAZYFS_PREWARM_SOCKET at its socket", c.Socket, c.Socket), sentinel: ErrNotRunning}
		}
		return fmt.Errorf("prewarm daemon %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("prewarm daemon %s: %w", c.Socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			if s := ErrorOfCode(e.Code); s != nil {
				return &remoteError{msg: e.Error, sentinel: s}
			}
			return fmt.Errorf("prewarm daemon: %s", e.Error)
		}
		return fmt.Errorf("prewarm daemon %s: %s", path, resp.Status)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("prewarm daemon %s: bad answer: %w", path, err)
	}
	return nil
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

func unixClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}}
}
