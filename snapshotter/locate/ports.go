package locate

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Bounds on the guesses Alternates makes.
const (
	// maxAlternates bounds the HOST:PORT names tried for one bare host.
	maxAlternates = 4
	// maxImageNames bounds the image names Alternates looks at, most
	// recently updated first.
	maxImageNames = 1024
	// guessPort is the port a registry listens on by default
	// (distribution's, Docker's and most local registries'). Tried last.
	guessPort = "5000"
)

// WithHostsDir names the directory of containerd-style HOST[:PORT]/hosts.toml
// files the node's fetcher reads: an entry HOST:PORT names a registry that
// a bare HOST may stand for; an entry for the bare HOST means the fetcher
// already knows where HOST is, and Alternates guesses nothing.
func WithHostsDir(dir string) Option { return func(c *Content) { c.hostsDir = dir } }

// Option configures New.
type Option func(*Content)

// Alternates returns the references ref may stand for, most likely first,
// ref itself among them. containerd's distribution-source label keeps a
// registry's host name and drops its port (its handler takes the URL's
// Hostname), so the reference Locate builds for an image pulled from
// HOST:PORT names HOST, i.e. port 443. Alternates adds the same repository
// and digest at HOST:PORT for each port that this node has seen HOST with:
// entries HOST:PORT of the hosts directory, then names of images in
// containerd's image store (namespace of ctx), most recently updated first;
// then ref itself; then HOST:5000, the registries' default port. Every
// guess is safe to try: the mount resolves the reference by digest, and
// only the same manifest can match it. A ref that names a port, or whose
// bare host has its own hosts.toml, is returned alone.
func (c *Content) Alternates(ctx context.Context, ref string) []string {
	host, rest, ok := strings.Cut(ref, "/")
	if !ok || strings.ContainsAny(host, ":[]") || !strings.Contains(rest, "@") || c.hasHostsFile(host) {
		return []string{ref}
	}
	var ports []string
	ports = append(ports, c.dirPorts(host)...)
	ports = append(ports, c.imagePorts(ctx, host)...)
	var out []string
	seen := map[string]bool{}
	for _, p := range ports {
		if r := host + ":" + p + "/" + rest; !seen[r] && len(out) < maxAlternates {
			seen[r] = true
			out = append(out, r)
		}
	}
	out = append(out, ref)
	if r := host + ":" + guessPort + "/" + rest; !seen[r] {
		out = append(out, r)
	}
	return out
}

func (c *Content) hasHostsFile(host string) bool {
	if c.hostsDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.hostsDir, host, "hosts.toml"))
	return err == nil
}

// dirPorts returns the ports of the hosts directory's HOST:PORT entries.
func (c *Content) dirPorts(host string) []string {
	if c.hostsDir == "" {
		return nil
	}
	entries, err := os.ReadDir(c.hostsDir)
	if err != nil {
		return nil
	}
	var ports []string
	for _, e := range entries {
		if p, ok := portOf(e.Name(), host); ok && e.IsDir() {
			ports = append(ports, p)
		}
	}
	return ports
}

// imagePorts returns the ports of images named HOST:PORT/... in
// containerd's image store, most recently updated first.
func (c *Content) imagePorts(ctx context.Context, host string) []string {
	cl, err := c.imagesClient()
	if err != nil {
		return nil
	}
	if ns, ok := namespaces.Namespace(ctx); ok {
		ctx = namespaces.WithNamespace(ctx, ns) // as Locate: sent as gRPC metadata too
	}
	// The filter narrows the list (its dots match any character); portOf
	// checks each name exactly.
	resp, err := cl.List(ctx, &imagesapi.ListImagesRequest{Filters: []string{`name~="^` + host + `:[0-9]+/"`}})
	if err != nil {
		return nil
	}
	imgs := resp.GetImages() // bounded by gRPC's message size
	slices.SortStableFunc(imgs, func(a, b *imagesapi.Image) int {
		return b.GetUpdatedAt().AsTime().Compare(a.GetUpdatedAt().AsTime())
	})
	if len(imgs) > maxImageNames {
		imgs = imgs[:maxImageNames]
	}
	var ports []string
	for _, im := range imgs {
		h, _, _ := strings.Cut(im.GetName(), "/")
		if p, ok := portOf(h, host); ok && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
}

// portOf returns PORT when hostport is host:PORT with a valid port.
func portOf(hostport, host string) (string, bool) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil || h != host {
		return "", false
	}
	if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 || strconv.Itoa(n) != p {
		return "", false
	}
	return p, true
}

func (c *Content) imagesClient() (imagesapi.ImagesClient, error) {
	if _, err := c.contentStore(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, errors.New("closed")
	}
	return imagesapi.NewImagesClient(c.conn), nil
}
