// Package locate finds the image and layer of a snapshot that containerd
// asks lazyfs-snapshotter to prepare without the image reference and layer
// digest labels (snapshotter.Locator): a client that unpacks while pulling
// but does not add snapshotters.AppendInfoHandlerWrapper's labels, as
// nerdctl does for a snapshotter it does not know by name and containerd's
// Go client does by default.
//
// Such a pull has already stored the image's manifest and config in
// containerd's content store before it unpacks the first layer, and
// labelled the manifest with its children (containerd.io/gc.ref.content.*)
// and with where it came from (containerd.io/distribution.source.HOST=REPO).
// Locate walks the manifests of the namespace, most recently labelled first,
// computes each config's chain IDs, and answers with the manifest whose
// layer has the snapshot's chain ID: its reference HOST/REPO@DIGEST and the
// layer's digest. Blobs read are bounded, configs' chain IDs are cached, and
// every call has the caller's deadline. The label names the registry without
// its port; Alternates names the HOST:PORT registries it may stand for.
package locate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lazyfs/lazyfs/fs/toc"
)

// Bounds on what one Locate reads from containerd.
const (
	// MaxManifests is how many manifests Locate looks at, most recently
	// labelled first (the pull being unpacked labelled its own just now).
	MaxManifests = 64
	// MaxBlobSize bounds a manifest or config read from the content store.
	MaxBlobSize = 4 << 20
	// cachedConfigs bounds the configs whose chain IDs are remembered.
	cachedConfigs = 256
)

const (
	labelConfig    = "containerd.io/gc.ref.content.config"
	labelSourcePfx = "containerd.io/distribution.source."
	configFilter   = `labels."` + labelConfig + `"`
	reasonNotLazy  = "not_converted"
)

// ErrNotFound means no manifest in the content store has a layer with the
// chain ID.
var ErrNotFound = errors.New("no image in containerd's content store has this layer")

// ErrDownloaded means the layer's blob is already in containerd's content
// store (ctr image pull fetches every blob before unpacking): unpacking it
// costs no network, so it is not mounted lazily.
var ErrDownloaded = errors.New("already downloaded by containerd")

// notLazyError: the layer was found, and it is not a lazyfs layer.
type notLazyError struct{ ref, layer string }

func (e notLazyError) Error() string {
	return fmt.Sprintf("layer %s of %s is not a lazyfs layer", e.layer, e.ref)
}

// FallbackReason implements snapshotter.Reasoner.
func (notLazyError) FallbackReason() string { return reasonNotLazy }

// Content locates layers through containerd's content service.
type Content struct {
	address  string
	hostsDir string

	mu     sync.Mutex
	conn   *grpc.ClientConn
	store  content.Store
	chains map[digest.Digest][]digest.Digest // config → chain IDs
	order  []digest.Digest                   // chains' keys, oldest first
}

// New returns a Locator that asks the containerd at address (its gRPC
// socket). It connects on first use.
func New(address string, opts ...Option) *Content {
	c := &Content{address: address, chains: map[digest.Digest][]digest.Digest{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Close closes the connection to containerd.
func (c *Content) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn, c.store = nil, nil
	return err
}

func (c *Content) contentStore() (content.Store, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store != nil {
		return c.store, nil
	}
	conn, err := grpc.NewClient("unix://"+c.address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", c.address, err)
	}
	c.conn, c.store = conn, proxy.NewContentStore(contentapi.NewContentClient(conn))
	return c.store, nil
}

// Locate implements snapshotter.Locator. ctx must carry the containerd
// namespace of the pull (namespaces.WithNamespace).
func (c *Content) Locate(ctx context.Context, chainID string) (string, string, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", "", err
	}
	ctx = namespaces.WithNamespace(ctx, ns)
	want, err := digest.Parse(chainID)
	if err != nil {
		return "", "", fmt.Errorf("chain ID %q: %w", chainID, err)
	}
	cs, err := c.contentStore()
	if err != nil {
		return "", "", err
	}
	var infos []content.Info
	err = cs.Walk(ctx, func(i content.Info) error {
		infos = append(infos, i)
		if len(infos) > 16*MaxManifests {
			// Keep the most recent; the walk's order is by digest.
			slices.SortFunc(infos, func(a, b content.Info) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
			infos = infos[:MaxManifests]
		}
		return nil
	}, configFilter)
	if err != nil {
		return "", "", fmt.Errorf("containerd at %s: list manifests: %w", c.address, err)
	}
	slices.SortFunc(infos, func(a, b content.Info) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
	if len(infos) > MaxManifests {
		infos = infos[:MaxManifests]
	}
	var errs []error
	for _, m := range infos {
		ref, layer, ok, err := c.match(ctx, cs, m, want)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			return ref, layer, nil
		}
	}
	return "", "", errors.Join(append([]error{fmt.Errorf("%w (%d manifests looked at)", ErrNotFound, len(infos))}, errs...)...)
}

// match reports whether manifest m has a layer with chain ID want, and then
// the image reference and the layer digest.
func (c *Content) match(ctx context.Context, cs content.Store, m content.Info, want digest.Digest) (string, string, bool, error) {
	cfg, err := digest.Parse(m.Labels[labelConfig])
	if err != nil {
		return "", "", false, nil // not a label containerd wrote
	}
	chains, err := c.chainIDs(ctx, cs, cfg)
	if err != nil {
		return "", "", false, fmt.Errorf("manifest %s: %w", m.Digest, err)
	}
	i := slices.Index(chains, want)
	if i < 0 {
		return "", "", false, nil
	}
	ref, err := reference(m)
	if err != nil {
		return "", "", false, err
	}
	var man ocispec.Manifest
	if err := readJSON(ctx, cs, m.Digest, m.Size, &man); err != nil {
		return "", "", false, fmt.Errorf("manifest %s: %w", m.Digest, err)
	}
	if len(man.Layers) != len(chains) {
		return "", "", false, fmt.Errorf("manifest %s: %d layers, its config %d", m.Digest, len(man.Layers), len(chains))
	}
	l := man.Layers[i]
	if l.Annotations[toc.AnnotationTOCDigest] == "" {
		return "", "", false, notLazyError{ref: ref, layer: l.Digest.String()}
	}
	if _, err := cs.Info(ctx, l.Digest); err == nil {
		// ctr image pull fetches every blob before it unpacks: unpacking
		// the local copy costs no network; a lazy mount would fetch it again.
		return "", "", false, fmt.Errorf("layer %s of %s: %w", l.Digest, ref, ErrDownloaded)
	}
	return ref, l.Digest.String(), true, nil
}

// reference returns HOST/REPO@DIGEST of manifest m from its distribution
// source label (the first repository when it names several).
func reference(m content.Info) (string, error) {
	var keys []string
	for k := range m.Labels {
		if strings.HasPrefix(k, labelSourcePfx) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		host := strings.TrimPrefix(k, labelSourcePfx)
		repo, _, _ := strings.Cut(m.Labels[k], ",")
		if host != "" && repo != "" {
			return host + "/" + repo + "@" + m.Digest.String(), nil
		}
	}
	return "", fmt.Errorf("manifest %s: no %s* label: where it was pulled from is unknown", m.Digest, labelSourcePfx)
}

// chainIDs returns the chain IDs of config cfg's layers, cached.
func (c *Content) chainIDs(ctx context.Context, cs content.Store, cfg digest.Digest) ([]digest.Digest, error) {
	c.mu.Lock()
	ids, ok := c.chains[cfg]
	c.mu.Unlock()
	if ok {
		return ids, nil
	}
	info, err := cs.Info(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", cfg, err)
	}
	var img ocispec.Image
	if err := readJSON(ctx, cs, cfg, info.Size, &img); err != nil {
		return nil, fmt.Errorf("config %s: %w", cfg, err)
	}
	ids = identity.ChainIDs(slices.Clone(img.RootFS.DiffIDs))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.chains[cfg]; !ok {
		c.chains[cfg] = ids
		c.order = append(c.order, cfg)
		if len(c.order) > cachedConfigs {
			delete(c.chains, c.order[0])
			c.order = c.order[1:]
		}
	}
	return ids, nil
}

// readJSON reads blob d (size bytes, at most MaxBlobSize) and decodes it.
func readJSON(ctx context.Context, cs content.Store, d digest.Digest, size int64, v any) error {
	if size < 0 || size > MaxBlobSize {
		return fmt.Errorf("blob of %d bytes, more than %d", size, MaxBlobSize)
	}
	b, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: d, Size: size})
	if err != nil {
		return err
	}
	if digest.FromBytes(b) != d {
		return fmt.Errorf("blob %s does not match its digest", d)
	}
	return json.Unmarshal(b, v)
}
