package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/internal/unixhttp"
)

// Client speaks a Node's control API over its unix socket: the daemon's,
// or a standalone mount server's.
type Client struct {
	c *unixhttp.Client
}

// ErrNoServer means nothing answers on a control socket.
var ErrNoServer = errors.New("no lazyfs server answering")

// maxResponse bounds a control API answer (a list of mounts included).
const maxResponse = 16 << 20

// NewClient returns a client of the control socket at path. Every call has
// a deadline: its context's, and at most timeout (default 2 minutes, which
// covers a mount of a large image).
func NewClient(path string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	return &Client{unixhttp.New(path, unixhttp.Options{Timeout: timeout, DialTimeout: 2 * time.Second, NoKeepAlive: true, MaxAnswer: maxResponse})}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.c.Socket() }

// do sends one request; errors: ErrNoServer when nothing answers, the
// server's plain-text message (ErrNotMounted on 404, ErrMountPointInUse on
// 409), or the socket and what failed.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	err := c.c.Do(ctx, method, path, body, out)
	if err == nil {
		return nil
	}
	if se, ok := errors.AsType[*unixhttp.StatusError](err); ok {
		msg := strings.TrimSpace(string(se.Body))
		switch se.Code {
		case http.StatusNotFound:
			return fmt.Errorf("%w (%s)", ErrNotMounted, msg)
		case http.StatusConflict:
			return fmt.Errorf("%w (%s)", ErrMountPointInUse, msg)
		}
		return errors.New(msg)
	}
	if errors.Is(err, unixhttp.ErrConnect) {
		return fmt.Errorf("%w on %s: %w", ErrNoServer, c.Socket(), err)
	}
	return fmt.Errorf("control socket %s: %w", c.Socket(), err)
}

// Health asks whether the server answers.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return h, c.do(ctx, http.MethodGet, "/v1/health", nil, &h)
}

// MountImage asks the server to mount an image's merged root.
func (c *Client) MountImage(ctx context.Context, req MountRequest) (image.Stats, error) {
	var st image.Stats
	return st, c.do(ctx, http.MethodPost, "/v1/mounts", req, &st)
}

// Unmount asks the server to unmount dir.
func (c *Client) Unmount(ctx context.Context, dir string) error {
	_, err := c.UnmountNote(ctx, dir)
	return err
}

// UnmountNote is Unmount, returning the server's note of what happened
// beyond a plain unmount (see UnmountResult).
func (c *Client) UnmountNote(ctx context.Context, dir string) (string, error) {
	var res UnmountResult
	err := c.do(ctx, http.MethodDelete, "/v1/mounts?dir="+url.QueryEscape(dir), nil, &res)
	return res.Note, err
}

// List lists the server's mounts.
func (c *Client) List(ctx context.Context) ([]MountInfo, error) {
	var ms []MountInfo
	return ms, c.do(ctx, http.MethodGet, "/v1/mounts", nil, &ms)
}

// Stats returns the counters of the server's mount at dir.
func (c *Client) Stats(ctx context.Context, dir string) (image.Stats, error) {
	var st image.Stats
	return st, c.do(ctx, http.MethodGet, "/v1/stats?dir="+url.QueryEscape(dir), nil, &st)
}
