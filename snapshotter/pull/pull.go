// Package pull pulls an image into containerd so that a remote snapshotter
// (lazyfs) can serve its layers lazily: it uses containerd's Go client with
// the handler that labels each layer with the image reference and layer
// digests (snapshotters.AppendInfoHandlerWrapper), which containerd 1.6's
// `ctr image pull` does not pass. It works against containerd 1.6, 1.7 and 2.x.
//
// Registry credentials come from where a docker, nerdctl or crane user keeps
// them: the Docker config (DOCKER_CONFIG or ~/.docker/config.json) and its
// credential helpers, through go-containerregistry's authn.DefaultKeychain,
// the keychain the lazyfs node daemon's fetcher (fs/remote) uses too.
// Mirrors come from a containerd hosts.toml directory (WithHostsDir).
package pull

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sirupsen/logrus"
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
	hostsDir    string
	keychain    authn.Keychain
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

// WithHostsDir reads registry mirrors, headers and TLS settings from a
// containerd hosts.toml directory (DIR/HOST[:PORT]/hosts.toml, as
// containerd's config_path and the lazyfs daemon's hosts_dir). Empty: none.
func WithHostsDir(dir string) Option {
	return func(o *options) error { o.hostsDir = dir; return nil }
}

// WithKeychain sets where registry credentials come from
// (authn.DefaultKeychain: the Docker config and its credential helpers).
func WithKeychain(kc authn.Keychain) Option {
	return func(o *options) error {
		if kc == nil {
			return errors.New("pull: nil keychain")
		}
		o.keychain = kc
		return nil
	}
}

// ErrUnauthorized means a registry asked for credentials that Pull did not
// have, or refused the ones it sent.
var ErrUnauthorized = errors.New("registry authentication required")

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
	o := options{address: DefaultAddress, namespace: DefaultNamespace, snapshotter: DefaultSnapshotter,
		dialTimeout: DefaultDialTimeout, timeout: DefaultTimeout, keychain: authn.DefaultKeychain}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return Result{}, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	ctx = quietLogs(ctx)
	c, err := client.New(o.address, client.WithDefaultNamespace(o.namespace), client.WithTimeout(o.dialTimeout))
	if err != nil {
		return Result{}, fmt.Errorf("containerd at %s: %w", o.address, err)
	}
	defer c.Close()

	creds := &credentials{kc: o.keychain}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: o.hosts(ctx, creds)})
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
		return Result{}, fmt.Errorf("pull %s into snapshotter %s: %w", ref, o.snapshotter, creds.explain(ref, err))
	}
	size, err := img.Size(ctx)
	if err != nil {
		size = -1
	}
	return Result{Name: img.Name(), Digest: img.Target().Digest.String(), Size: size}, nil
}

// quietLogs keeps containerd's client library to warnings and errors
// (on stderr, with ctx's log fields) unless ctx carries a containerd logger
// of its own: its info-level chatter ("host will try HTTPS first", "fetch
// failed after status: 401") would land in lazyfs pull's output.
func quietLogs(ctx context.Context) context.Context {
	e := log.G(ctx)
	if e.Logger != log.L.Logger {
		return ctx
	}
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	return log.WithLogger(ctx, logrus.NewEntry(l).WithFields(e.Data))
}

// hosts is containerd's own registry host configuration (what ctr
// --hosts-dir and nerdctl build): hosts.toml mirrors when a directory is
// set, plain HTTP for localhost and loopback registries (or every registry
// with WithPlainHTTP), and a docker authorizer whose credentials come from
// the keychain.
func (o *options) hosts(ctx context.Context, creds *credentials) docker.RegistryHosts {
	ho := dockerconfig.HostOptions{Credentials: creds.lookup} // the docker authorizer of every host asks it
	if o.hostsDir != "" {
		ho.HostDir = dockerconfig.HostDirFromRoot(o.hostsDir)
	}
	if o.plainHTTP {
		ho.DefaultScheme = "http"
	}
	return dockerconfig.ConfigureHosts(ctx, ho)
}

// credentials answers containerd's authorizer from a keychain and remembers
// which registries it had credentials for, so that a 401 can say whether
// none were found or the registry refused them.
type credentials struct {
	kc    authn.Keychain
	mu    sync.Mutex
	found map[string]bool // by host as containerd asked
}

// lookup is containerd's Credentials func: user and secret for host, or
// ("", identity token) for a registry that gave the Docker config a refresh
// token, or ("", "") for anonymous access.
func (c *credentials) lookup(host string) (string, string, error) {
	reg := host
	if host == "registry-1.docker.io" { // containerd's Docker Hub endpoint; the Docker config says index.docker.io
		reg = name.DefaultRegistry
	}
	r, err := name.NewRegistry(reg)
	if err != nil {
		return "", "", fmt.Errorf("registry %s: %w", host, err)
	}
	a, err := c.kc.Resolve(r)
	if err != nil {
		return "", "", fmt.Errorf("registry %s: credentials from the Docker config: %w", host, err)
	}
	cfg, err := authn.Authorization(context.Background(), a)
	if err != nil {
		return "", "", fmt.Errorf("registry %s: credentials from the Docker config: %w", host, err)
	}
	user, secret := cfg.Username, cfg.Password
	if cfg.IdentityToken != "" {
		user, secret = "", cfg.IdentityToken
	}
	c.mu.Lock()
	if c.found == nil {
		c.found = map[string]bool{}
	}
	c.found[host] = secret != ""
	c.mu.Unlock()
	return user, secret, nil
}

// explain wraps an authentication failure of the pull of ref in an error
// that names the registry and says whether credentials were missing or
// refused; other errors are returned unchanged.
func (c *credentials) explain(ref string, err error) error {
	var st remoteerrors.ErrUnexpectedStatus
	unauthorized := errors.Is(err, docker.ErrInvalidAuthorization) ||
		(errors.As(err, &st) && (st.StatusCode == http.StatusUnauthorized || st.StatusCode == http.StatusForbidden))
	if !unauthorized {
		return err
	}
	host := "the registry"
	if r, perr := name.ParseReference(ref); perr == nil {
		host = r.Context().RegistryStr()
		if host == name.DefaultRegistry {
			host = "docker.io"
		}
	}
	c.mu.Lock()
	had := false
	for _, ok := range c.found {
		had = had || ok
	}
	c.mu.Unlock()
	if had {
		return fmt.Errorf("registry %s refused the credentials from the Docker config (%w): log in again (docker login %s, nerdctl login) or check the repository name and your access to it: %w",
			host, ErrUnauthorized, host, err)
	}
	return fmt.Errorf("registry %s: authentication required (%w) and no credentials for it in the Docker config (DOCKER_CONFIG or ~/.docker/config.json, credential helpers included): log in (docker login %s, nerdctl login or crane auth login), or check the repository name (some registries answer 401 for one that does not exist): %w",
		host, ErrUnauthorized, host, err)
}
