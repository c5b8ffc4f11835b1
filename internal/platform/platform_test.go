package platform

import (
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestPick(t *testing.T) {
	amd := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	img := func(p *v1.Platform) v1.Descriptor {
		return v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: p}
	}
	att := v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &amd,
		Annotations: map[string]string{RefTypeAnnotation: "attestation-manifest"}}
	// configs: the platform in the config of each entry without one.
	pick := func(ms []v1.Descriptor, want v1.Platform, configs map[int]*v1.Platform) (int, *v1.Platform, int, error) {
		read := 0
		i, p, err := Pick(ms, want, func(i int) (*v1.Platform, error) {
			read++
			if ms[i].Platform != nil {
				t.Errorf("config of entry %d read, which has a platform", i)
			}
			return configs[i], nil
		})
		return i, p, read, err
	}

	// An entry with the platform wins over an earlier one without, whose
	// config is not read; an attestation is never picked.
	ms := []v1.Descriptor{img(nil), att, img(&arm), img(&amd)}
	if i, p, read, err := pick(ms, amd, map[int]*v1.Platform{0: &amd}); i != 3 || p != &amd || read != 0 || err != nil {
		t.Errorf("pick amd64 = %d %v, %d configs read, %v; want 3", i, p, read, err)
	}
	// A variant asked for by an entry without it: v8 satisfies arm64.
	if i, _, _, err := pick(ms, v1.Platform{OS: "linux", Architecture: "arm64"}, nil); i != 2 || err != nil {
		t.Errorf("pick arm64 = %d, %v; want 2", i, err)
	}
	// Otherwise the first entry without a platform whose config is for it.
	ms = []v1.Descriptor{att, img(nil), img(nil), img(&arm)}
	if i, p, read, err := pick(ms, amd, map[int]*v1.Platform{1: &arm, 2: &amd}); i != 2 || p != &amd || read != 2 || err != nil {
		t.Errorf("pick by config = %d %v, %d configs read, %v; want 2 after 2 reads", i, p, read, err)
	}
	// Nothing for the platform: -1 and no error.
	if i, _, _, err := pick(ms, v1.Platform{OS: "linux", Architecture: "s390x"}, nil); i != -1 || err != nil {
		t.Errorf("pick s390x = %d, %v; want -1, nil", i, err)
	}
	// At most MaxPlatformless configs are read.
	ms = make([]v1.Descriptor, MaxPlatformless+1)
	for i := range ms {
		ms[i] = img(nil)
	}
	configs := map[int]*v1.Platform{MaxPlatformless: &amd}
	if i, _, read, err := pick(ms, amd, configs); i != -1 || read != MaxPlatformless || !errors.Is(err, ErrUnprobed) {
		t.Errorf("pick past the bound = %d, %d configs read, %v; want -1 after %d, ErrUnprobed", i, read, err, MaxPlatformless)
	}
	// configPlatform's errors come back as they are.
	boom := errors.New("boom")
	if _, _, err := Pick([]v1.Descriptor{img(nil)}, amd, func(int) (*v1.Platform, error) { return nil, boom }); err != boom {
		t.Errorf("error = %v, want boom", err)
	}
}
