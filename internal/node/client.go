package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lazyfs/lazyfs/fs/image"
)

// Client speaks a Node's control API over its unix socket: the daemon's,
// or a standalone mount server's.
type Client struct {
	socket string
	hc     *http.Client
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
	return &Client{socket: path, hc: &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}}}
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lazyfs"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return fmt.Errorf("%w on %s: %w", ErrNoServer, c.socket, err)
		}
		return fmt.Errorf("control socket %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		err := errors.New(strings.TrimSpace(string(msg)))
		switch resp.StatusCode {
		case http.StatusNotFound:
			err = fmt.Errorf("%w (%s)", ErrNotMounted, msg)
		case http.StatusConflict:
			err = fmt.Errorf("%w (%s)", ErrMountPointInUse, msg)
		}
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return fmt.Errorf("control socket %s: bad answer: %w", c.socket, err)
	}
	return nil
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
