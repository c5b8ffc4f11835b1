// Package platform picks the image of an OCI index (or Docker manifest list)
// that containerd would run on a platform. The lazy mount (fs/remote) and
// the converter (fs/convert) use the same rule, so that `lazyfs convert
// --platform` converts the image that a mount of the converted index serves.
package platform

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RefTypeAnnotation marks an index entry that is not an image to run:
// BuildKit's attestation manifests (value "attestation-manifest"), which
// carry a platform of unknown/unknown or none.
const RefTypeAnnotation = "vnd.docker.reference.type"

// MaxPlatformless bounds the index entries without a platform whose config
// Pick has read to learn their platform: the index is the registry's, and
// each costs requests.
const MaxPlatformless = 16

// ErrUnprobed means none of the first MaxPlatformless entries without a
// platform was for the platform, and the rest were not read.
var ErrUnprobed = fmt.Errorf("none of the first %d index entries without a platform is for it, and no more are read (name the image by its digest)", MaxPlatformless)

// Runnable reports whether index entry d is an image to run: an image
// manifest that is not an attestation.
func Runnable(d *v1.Descriptor) bool {
	return d.MediaType.IsImage() && d.Annotations[RefTypeAnnotation] == ""
}

// Pick returns the position in ms of the image to run on want, and its
// platform: the first runnable entry whose platform satisfies want, else the
// first runnable entry without a platform whose config's platform does
// (configPlatform(i) reads entry i's, for at most MaxPlatformless entries).
// It returns -1 with a nil error when no entry is for want, with ErrUnprobed
// when entries were left unread, and configPlatform's errors as they are.
func Pick(ms []v1.Descriptor, want v1.Platform, configPlatform func(i int) (*v1.Platform, error)) (int, *v1.Platform, error) {
	for i := range ms {
		if d := &ms[i]; Runnable(d) && d.Platform != nil && d.Platform.Satisfies(want) {
			return i, d.Platform, nil
		}
	}
	probed := 0
	for i := range ms {
		if d := &ms[i]; !Runnable(d) || d.Platform != nil {
			continue
		}
		if probed == MaxPlatformless {
			return -1, nil, ErrUnprobed
		}
		probed++
		p, err := configPlatform(i)
		if err != nil {
			return -1, nil, err
		}
		if p != nil && p.Satisfies(want) {
			return i, p, nil
		}
	}
	return -1, nil, nil
}
