package locate

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
)

// TestReference: the image reference comes from containerd's
// distribution-source label: HOST/REPO@DIGEST, the first repository when
// the manifest was pulled from several, and an error naming the manifest
// when no label says where it came from.
func TestReference(t *testing.T) {
	d := digest.FromString("manifest")
	for _, tc := range []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{labelSourcePfx + "docker.io": "library/python"}, "docker.io/library/python@" + d.String()},
		{map[string]string{labelSourcePfx + "ghcr.io": "org/a,org/b", labelConfig: "x"}, "ghcr.io/org/a@" + d.String()},
		{map[string]string{labelSourcePfx + "b.example": "r", labelSourcePfx + "a.example": "r"}, "a.example/r@" + d.String()},
		{map[string]string{labelSourcePfx + "empty": ""}, ""},
		{map[string]string{labelConfig: "x"}, ""},
	} {
		got, err := reference(content.Info{Digest: d, Labels: tc.labels})
		if got != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("%v: %q, %v; want %q", tc.labels, got, err, tc.want)
		}
	}
}

// TestAlternates: a reference with a bare host (the distribution-source
// label drops the port) stands for the hosts directory's HOST:PORT entries,
// then itself, then HOST:5000; a reference with a port, or whose bare host
// has its own hosts.toml, stands for itself alone. containerd is not
// running here: its image store adds nothing (snapshotter/e2e covers it).
func TestAlternates(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"reg.test:6000", "reg.test:notaport", "reg.test:0443", "other.test:7000", "mapped.test"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "mapped.test", "hosts.toml"), []byte(`server = "https://mapped.test:8443"`), 0o644); err != nil {
		t.Fatal(err)
	}
	c := New(filepath.Join(t.TempDir(), "no-containerd.sock"), WithHostsDir(dir))
	defer c.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "test"), 10*time.Second)
	defer cancel()
	const rest = "/app@sha256:0123"
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"reg.test" + rest, []string{"reg.test:6000" + rest, "reg.test" + rest, "reg.test:5000" + rest}},
		{"new.test" + rest, []string{"new.test" + rest, "new.test:5000" + rest}},
		{"reg.test:6000" + rest, []string{"reg.test:6000" + rest}},
		{"mapped.test" + rest, []string{"mapped.test" + rest}},
	} {
		if got := c.Alternates(ctx, tc.ref); !slices.Equal(got, tc.want) {
			t.Errorf("Alternates(%s) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}
