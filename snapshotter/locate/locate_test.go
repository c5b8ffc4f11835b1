package locate

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
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
