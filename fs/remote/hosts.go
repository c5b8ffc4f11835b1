package remote

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Host capabilities, as in containerd's hosts.toml.
const (
	capPull = 1 << iota
	capResolve
	capPush
)

// HostConfig is one host of a containerd hosts.toml file: a mirror
// ([host."URL"] table) or the origin (the top-level server).
type HostConfig struct {
	// URL is the host's scheme://host[:port][/path].
	URL string
	// Capabilities lists what the host may serve: "pull" (blobs, manifests
	// by digest), "resolve" (tags), "push". Empty means all.
	Capabilities []string
	// CA lists PEM files of CAs to trust for this host.
	CA []string
	// Client lists client certificates for mutual TLS: each a [cert, key]
	// pair of PEM files ([cert] alone when the file holds both).
	Client [][]string
	// SkipVerify disables TLS verification for this host.
	SkipVerify bool
	// OverridePath uses URL's path as the API root instead of appending /v2.
	OverridePath bool
	// Header is sent with every request to this host.
	Header http.Header
}

// HostsFile is a parsed hosts.toml: the mirrors in file order, then the server.
type HostsFile struct {
	Server HostConfig
	Hosts  []HostConfig
}

type hostTOML struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   bool           `toml:"skip_verify"`
	OverridePath bool           `toml:"override_path"`
	Header       map[string]any `toml:"header"`
}

type hostsTOML struct {
	Server       string              `toml:"server"`
	Capabilities []string            `toml:"capabilities"`
	CA           any                 `toml:"ca"`
	Client       any                 `toml:"client"`
	SkipVerify   bool                `toml:"skip_verify"`
	OverridePath bool                `toml:"override_path"`
	Header       map[string]any      `toml:"header"`
	Host         map[string]hostTOML `toml:"host"`
}

// ParseHostsFile parses a containerd hosts.toml. defaultServer is the origin
// URL used when the file has no server key (e.g. "https://registry-1.docker.io").
func ParseHostsFile(data []byte, defaultServer string) (*HostsFile, error) {
	var raw hostsTOML
	if err := toml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHostsConfig, err)
	}
	order, err := hostOrder(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHostsConfig, err)
	}
	hf := &HostsFile{}
	server := raw.Server
	if server == "" {
		server = defaultServer
	}
	hf.Server, err = hostConfig(server, hostTOML{
		Capabilities: raw.Capabilities, CA: raw.CA, Client: raw.Client, SkipVerify: raw.SkipVerify,
		OverridePath: raw.OverridePath, Header: raw.Header,
	})
	if err != nil {
		return nil, err
	}
	for _, u := range order {
		h, ok := raw.Host[u]
		if !ok {
			continue
		}
		hc, err := hostConfig(u, h)
		if err != nil {
			return nil, err
		}
		hf.Hosts = append(hf.Hosts, hc)
	}
	return hf, nil
}

func hostConfig(u string, h hostTOML) (HostConfig, error) {
	hc := HostConfig{URL: u, Capabilities: h.Capabilities, SkipVerify: h.SkipVerify, OverridePath: h.OverridePath}
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return hc, fmt.Errorf("%w: host %q is not an http(s) URL", ErrBadHostsConfig, u)
	}
	for _, c := range h.Capabilities {
		if c != "pull" && c != "resolve" && c != "push" {
			return hc, fmt.Errorf("%w: host %q: unknown capability %q", ErrBadHostsConfig, u, c)
		}
	}
	if hc.CA, err = stringList(h.CA); err != nil {
		return hc, fmt.Errorf("%w: host %q: ca: %v", ErrBadHostsConfig, u, err)
	}
	if hc.Client, err = clientList(h.Client); err != nil {
		return hc, fmt.Errorf("%w: host %q: client: %v", ErrBadHostsConfig, u, err)
	}
	if len(h.Header) > 0 {
		hc.Header = http.Header{}
		for k, v := range h.Header {
			vs, err := stringList(v)
			if err != nil {
				return hc, fmt.Errorf("%w: host %q: header %q: %v", ErrBadHostsConfig, u, k, err)
			}
			for _, s := range vs {
				hc.Header.Add(k, s)
			}
		}
	}
	return hc, nil
}

func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("want strings, got %T", e)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a string or a list of strings, got %T", v)
}

// clientList parses containerd's client key: "pem", ["pem", ...] (files
// holding certificate and key) or [["cert", "key"], ...].
func clientList(v any) ([][]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return [][]string{{v}}, nil
	case []any:
		var out [][]string
		for _, e := range v {
			pair, err := stringList(e)
			if err != nil || len(pair) == 0 || len(pair) > 2 {
				return nil, fmt.Errorf("want a file or a [cert, key] pair, got %v", e)
			}
			out = append(out, pair)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a string or a list, got %T", v)
}

// hostOrder returns the keys of the host table in the order the file names
// them (TOML maps lose it; containerd tries mirrors in file order).
func hostOrder(data []byte) ([]string, error) {
	var p unstable.Parser
	p.Reset(data)
	var order []string
	seen := map[string]bool{}
	add := func(parts []string) {
		if len(parts) >= 2 && parts[0] == "host" && !seen[parts[1]] {
			seen[parts[1]] = true
			order = append(order, parts[1])
		}
	}
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.KeyValue:
			var parts []string
			it := e.Key()
			for it.Next() {
				parts = append(parts, string(it.Node().Data))
			}
			if e.Kind == unstable.KeyValue && len(parts) == 1 && parts[0] == "host" {
				// host = { "https://m" = {...} } inline table.
				v := e.Value()
				if v != nil && v.Kind == unstable.InlineTable {
					kids := v.Children()
					for kids.Next() {
						kv := kids.Node()
						var sub []string
						ki := kv.Key()
						for ki.Next() {
							sub = append(sub, string(ki.Node().Data))
						}
						add(append([]string{"host"}, sub...))
					}
				}
				continue
			}
			add(parts)
		}
	}
	return order, p.Error()
}

// endpoint is one host requests for a registry may go to.
type endpoint struct {
	base string        // scheme://host[:port]/path-to-v2, no trailing slash
	reg  name.Registry // the host, for the /v2/ handshake
	// authReg is whose credentials the keychain is asked for: the host
	// itself for a mirror, the image's registry for the server.
	authReg name.Registry
	mirror  bool
	caps    int
	header  http.Header
	rt      http.RoundTripper

	pausedUntil atomic.Int64 // unix nanos: a failing mirror is skipped until then
	noRange     atomic.Bool  // the host answered a Range request with 200
}

func (e *endpoint) paused(now time.Time) bool { return e.pausedUntil.Load() > now.UnixNano() }

func (e *endpoint) String() string { return e.base }

func (e *endpoint) blobURL(repo name.Repository, dig string) string {
	return e.base + "/" + repo.RepositoryStr() + "/blobs/" + dig
}

func (e *endpoint) manifestURL(repo name.Repository, ref string) string {
	return e.base + "/" + repo.RepositoryStr() + "/manifests/" + ref
}

// hostSet is the ordered list of hosts for one registry.
type hostSet struct {
	endpoints []*endpoint
}

// forCap returns the endpoints with capability c, mirrors first; paused
// mirrors go last so that they are still tried when nothing else works.
func (h *hostSet) forCap(c int) []*endpoint {
	now := time.Now()
	var out, paused []*endpoint
	for _, e := range h.endpoints {
		if e.caps&c == 0 {
			continue
		}
		if e.mirror && e.paused(now) {
			paused = append(paused, e)
			continue
		}
		out = append(out, e)
	}
	return append(out, paused...)
}

// hostDirs lists the directories under the hosts dir that may describe reg.
func hostDirs(reg name.Registry) []string {
	r := reg.RegistryStr()
	if r == name.DefaultRegistry || r == "docker.io" || r == "registry-1.docker.io" {
		return []string{"docker.io", "index.docker.io", "registry-1.docker.io", "_default"}
	}
	return []string{r, "_default"}
}

// originURL is the default server for reg: https://host, or http:// for
// insecure and local registries.
func (f *Fetcher) originURL(reg name.Registry) string {
	return reg.Scheme() + "://" + reg.RegistryStr()
}

func (f *Fetcher) loadHosts(reg name.Registry) (*hostSet, error) {
	origin := f.originURL(reg)
	hf := &HostsFile{Server: HostConfig{URL: origin}}
	if f.opts.hostsDir != "" {
		for _, d := range hostDirs(reg) {
			p := filepath.Join(f.opts.hostsDir, d, "hosts.toml")
			data, err := os.ReadFile(p)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("registry %s: %w", reg, err)
			}
			if hf, err = ParseHostsFile(data, origin); err != nil {
				return nil, fmt.Errorf("registry %s: %s: %w", reg, p, err)
			}
			break
		}
	}
	hs := &hostSet{}
	for _, h := range hf.Hosts {
		e, err := f.newEndpoint(h, true)
		if err != nil {
			return nil, fmt.Errorf("registry %s: %w", reg, err)
		}
		hs.endpoints = append(hs.endpoints, e)
	}
	e, err := f.newEndpoint(hf.Server, false)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", reg, err)
	}
	if hf.Server.URL == origin {
		e.reg = reg // keep docker.io's canonical name
	}
	e.authReg = reg // a server named in hosts.toml is still this registry
	hs.endpoints = append(hs.endpoints, e)
	return hs, nil
}

func (f *Fetcher) newEndpoint(h HostConfig, mirror bool) (*endpoint, error) {
	u, err := url.Parse(h.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: host %q", ErrBadHostsConfig, h.URL)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if !h.OverridePath && !strings.HasSuffix(p, "/v2") {
		p += "/v2"
	}
	nopts := []name.Option{name.WeakValidation}
	if u.Scheme == "http" || f.opts.insecure {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: host %q: %v", ErrBadHostsConfig, h.URL, err)
	}
	e := &endpoint{
		base:    u.Scheme + "://" + u.Host + p,
		reg:     reg,
		authReg: reg,
		mirror:  mirror,
		header:  h.Header,
		rt:      f.base,
	}
	if len(h.Capabilities) == 0 {
		e.caps = capPull | capResolve | capPush
	}
	for _, c := range h.Capabilities {
		switch c {
		case "pull":
			e.caps |= capPull
		case "resolve":
			e.caps |= capResolve
		case "push":
			e.caps |= capPush
		}
	}
	if (h.SkipVerify || len(h.CA) > 0 || len(h.Client) > 0) && f.ownTransport != nil {
		cfg := &tls.Config{InsecureSkipVerify: h.SkipVerify} //nolint:gosec // asked for by hosts.toml
		if len(h.CA) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			for _, ca := range h.CA {
				pem, err := os.ReadFile(ca)
				if err != nil {
					return nil, fmt.Errorf("host %q: ca: %w", h.URL, err)
				}
				if !pool.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("%w: host %q: ca %s holds no PEM certificate", ErrBadHostsConfig, h.URL, ca)
				}
			}
			cfg.RootCAs = pool
		}
		for _, pair := range h.Client {
			certFile, keyFile := pair[0], pair[0]
			if len(pair) == 2 {
				keyFile = pair[1]
			}
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: host %q: client certificate: %v", ErrBadHostsConfig, h.URL, err)
			}
			cfg.Certificates = append(cfg.Certificates, cert)
		}
		t := f.ownTransport.Clone()
		t.TLSClientConfig = cfg
		f.extraTransports = append(f.extraTransports, t)
		e.rt = t
	}
	return e, nil
}

// RegistryAccess says how a client outside the Fetcher (ggcr's remote, for
// the referrers API say) reaches repo's registry as the Fetcher does: repo
// parsed as plain HTTP where the registry's server endpoint is (hosts.toml
// `server = "http://…"`, WithInsecure, a local address), and a transport
// with that endpoint's TLS settings that sends requests for repo's host to
// the server endpoint's host when hosts.toml names another one. Mirrors are
// not used; a server with override_path is reached at repo's own host.
func (f *Fetcher) RegistryAccess(repo name.Repository) (name.Repository, http.RoundTripper) {
	rt := f.base
	if rt == nil {
		rt = http.DefaultTransport
	}
	hs, err := f.hostsFor(repo.Registry)
	if err != nil {
		return repo, rt
	}
	for _, e := range hs.endpoints {
		if e.mirror {
			continue
		}
		if e.rt != nil {
			rt = e.rt
		}
		u, err := url.Parse(e.base)
		if err != nil || u.Path != "/v2" {
			return repo, rt
		}
		if u.Scheme == "http" && repo.Scheme() != "http" {
			if r, err := name.NewRepository(repo.Name(), name.WeakValidation, name.Insecure); err == nil {
				repo = r
			}
		}
		if u.Host != repo.RegistryStr() {
			rt = &hostRewrite{from: repo.RegistryStr(), scheme: u.Scheme, host: u.Host, next: rt}
		}
		return repo, rt
	}
	return repo, rt
}

// hostRewrite sends the requests for host from to scheme://host instead
// (hosts.toml's server for a registry); others (token realms) go as they are.
type hostRewrite struct {
	from, scheme, host string
	next               http.RoundTripper
}

func (h *hostRewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != h.from {
		return h.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = h.scheme, h.host, h.host
	return h.next.RoundTrip(r)
}
