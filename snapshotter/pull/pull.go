// Package pull pulls an image into containerd so that a remote snapshotter
// (lazyfs) can serve its layers lazily: it uses containerd's Go client with
// the handler that labels each layer with the image reference and layer
// digests (snapshotters.AppendInfoHandlerWrapper), which containerd 1.6's
// `ctr image pull` does not pass. It works against containerd 1.6, 1.7 and 2.x.
package pull

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
)

// Defaults, in one place.
const (
	DefaultAddress     = "/run/containerd/containerd.sock"
	DefaultNamespace   = "default"
	DefaultSnapshotter = "lazyfs"
	DefaultDialTimeout = 10 * time.Second
	DefaultTimeout     = 30 * time.Minute
)

// Option configures Pull.
type Option func(*options) error

type options struct {
	address     string
	namespace   string
	snapshotter string
	plainHTTP   bool
	dialTimeout time.Duration
	platform    string
	timeout     time.Duration
}

// WithAddress sets containerd's gRPC socket (DefaultAddress).
func WithAddress(a string) Option {
	return func(o *options) error {
		if a == "" {
			return errors.New("pull: empty containerd address")
		}
		o.address = a
		return nil
	}
}

// WithNamespace sets the containerd namespace (DefaultNamespace).
func WithNamespace(ns string) Option {
	return func(o *options) error {
		if ns == "" {
			return errors.New("pull: empty namespace")
		}
		o.namespace = ns
		return nil
	}
}

// WithSnapshotter sets the snapshotter to unpack into (DefaultSnapshotter).
func WithSnapshotter(s string) Option {
	return func(o *options) error {
		if s == "" {
			return errors.New("pull: empty snapshotter name")
		}
		o.snapshotter = s
		return nil
	}
}

// WithPlainHTTP talks HTTP instead of HTTPS to every registry. Registries on
// localhost and loopback addresses always get plain HTTP, as elsewhere in lazyfs.
func WithPlainHTTP(b bool) Option {
	return func(o *options) error { o.plainHTTP = b; return nil }
}

// WithPlatform pulls the image of platform (os/arch[/variant]) from an
// index instead of this machine's.
func WithPlatform(p string) Option {
	return func(o *options) error { o.platform = p; return nil }
}

// WithDialTimeout bounds connecting to containerd (DefaultDialTimeout).
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("pull: dial timeout %v: must be positive", d)
		}
		o.dialTimeout = d
		return nil
	}
}

// WithTimeout bounds the whole pull (DefaultTimeout): a registry that stalls
// cannot hold it forever.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("pull: timeout %v: must be positive", d)
		}
		o.timeout = d
		return nil
	}
}

// Result describes a pulled image.
type Result struct {
	Name   string `json:"name"`   // the image name in containerd
	Digest string `json:"digest"` // the target (manifest or index) digest
	Size   int64  `json:"size"`   // compressed size of the image's content in the registry
}

// Pull fetches ref's manifest and config into containerd's content store and
// unpacks it into the snapshotter. Layers the snapshotter serves lazily are
// not downloaded; the others are, as by a normal pull. ctx and WithTimeout
// bound the whole pull.
func Pull(ctx context.Context, ref string, opts ...Option) (Result, error) {
	o := options{address: DefaultAddress, namespace: DefaultNamespace, snapshotter: DefaultSnapshotter, dialTimeout: DefaultDialTimeout, timeout: DefaultTimeout}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return Result{}, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	c, err := client.New(o.address, client.WithDefaultNamespace(o.namespace), client.WithTimeout(o.dialTimeout))
	if err != nil {
		return Result{}, fmt.Errorf("containerd at %s: %w", o.address, err)
	}
	defer c.Close()

	plain := docker.MatchLocalhost
	if o.plainHTTP {
		plain = docker.MatchAllHosts
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(plain)),
	})
	ropts := []client.RemoteOpt{
		client.WithPullUnpack,
		client.WithPullSnapshotter(o.snapshotter),
		client.WithResolver(resolver),
		client.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
	}
	if o.platform != "" {
		ropts = append(ropts, client.WithPlatform(o.platform))
	}
	img, err := c.Pull(ctx, ref, ropts...)
	if err != nil {
		return Result{}, fmt.Errorf("pull %s into snapshotter %s: %w", ref, o.snapshotter, err)
	}
	size, err := img.Size(ctx)
	if err != nil {
		size = -1
	}
	return Result{Name: img.Name(), Digest: img.Target().Digest.String(), Size: size}, nil
}
