package pull

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

const testUser, testPassword = "alice", "s3cret"

// basicAuthRegistry is the in-process registry behind HTTP basic auth (as a
// private registry), holding one small image at the returned reference.
// Pushes before the lock is on go through unauthenticated.
func basicAuthRegistry(t *testing.T) (*registrytest.Registry, string) {
	t.Helper()
	var locked atomic.Bool
	reg := registrytest.New(t, registrytest.WithMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); locked.Load() && (!ok || u != testUser || p != testPassword) {
				w.Header().Set("WWW-Authenticate", `Basic realm="lazyfs-test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("private/app:1")
	registrytest.Push(t, ref, img)
	locked.Store(true)
	return reg, ref
}

// dockerConfig points DOCKER_CONFIG at a temp dir whose config.json holds
// user:password for host ("" user: an empty config).
func dockerConfig(t *testing.T, host, user, password string) {
	t.Helper()
	dir := t.TempDir()
	cfg := `{}`
	if user != "" {
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		cfg = fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

// resolve resolves ref as Pull does, with Pull's hosts and credentials.
func resolve(ctx context.Context, ref string, o options) error {
	creds := &credentials{kc: o.keychain}
	r := docker.NewResolver(docker.ResolverOptions{Hosts: o.hosts(ctx, creds)})
	_, _, err := r.Resolve(ctx, ref)
	return creds.explain(ref, err)
}

// TestCredentialsFromDockerConfig: the resolver Pull builds sends the
// Docker config's credentials (DOCKER_CONFIG) to a private registry; without
// them, or with wrong ones, the error names the registry and says why.
func TestCredentialsFromDockerConfig(t *testing.T) {
	reg, ref := basicAuthRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := options{keychain: authn.DefaultKeychain}

	dockerConfig(t, reg.Host, "", "")
	err := resolve(ctx, ref, o)
	t.Logf("no credentials: %v", err)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "registry "+reg.Host+": authentication required") ||
		!strings.Contains(err.Error(), "docker login "+reg.Host) {
		t.Fatalf("no credentials: got %v, want an authentication error naming %s", err, reg.Host)
	}

	dockerConfig(t, reg.Host, testUser, "wrong")
	err = resolve(ctx, ref, o)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "registry "+reg.Host+" refused the credentials") {
		t.Fatalf("wrong password: got %v, want refused credentials naming %s", err, reg.Host)
	}

	dockerConfig(t, reg.Host, testUser, testPassword)
	if err := resolve(ctx, ref, o); err != nil {
		t.Fatalf("with credentials in DOCKER_CONFIG: %v", err)
	}
}

// TestHostsDirMirror: WithHostsDir reads containerd's hosts.toml layout, so
// a pull of an image on an unreachable origin goes to the mirror, with the
// mirror's credentials from the Docker config.
func TestHostsDirMirror(t *testing.T) {
	mirror, ref := basicAuthRegistry(t)
	origin := registrytest.Silent(t) // never answers: only the mirror can serve
	dir := t.TempDir()
	hostDir := filepath.Join(dir, origin.Host)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+origin.Host, "http://"+mirror.Host)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	dockerConfig(t, mirror.Host, testUser, testPassword)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	originRef := origin.Host + strings.TrimPrefix(ref, mirror.Host)
	if err := resolve(ctx, originRef, options{keychain: authn.DefaultKeychain, hostsDir: dir}); err != nil {
		t.Fatalf("resolve %s through the mirror of hosts.toml: %v", originRef, err)
	}
	if mirror.Manifests.Load() == 0 {
		t.Fatal("the mirror was not asked")
	}
}

// TestPullPrivateImage pulls from the private registry into a real
// containerd (its native snapshotter), without and then with credentials.
func TestPullPrivateImage(t *testing.T) {
	ctrtest.Skip(t)
	reg, ref := basicAuthRegistry(t)
	c := ctrtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := []Option{WithAddress(c.Address), WithNamespace(c.Namespace), WithSnapshotter("native")}

	dockerConfig(t, reg.Host, "", "")
	_, err := Pull(ctx, ref, opts...)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "registry "+reg.Host+": authentication required") {
		t.Fatalf("pull without credentials: got %v, want an authentication error naming %s", err, reg.Host)
	}
	dockerConfig(t, reg.Host, testUser, testPassword)
	r, err := Pull(ctx, ref, opts...)
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	if r.Name != ref || r.Size <= 0 {
		t.Fatalf("pulled %+v", r)
	}
}
