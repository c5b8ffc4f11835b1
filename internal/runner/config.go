package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyfs/lazyfs/fs/remote"
)

// maxConfigSize bounds an image config blob.
const maxConfigSize = 8 << 20

// ImageConfig fetches and verifies the config of a resolved image: its env,
// working directory, user, entrypoint and cmd.
func ImageConfig(ctx context.Context, f *remote.Fetcher, img *remote.Image) (*v1.Config, error) {
	if img.Manifest == nil {
		return nil, fmt.Errorf("image %s: no manifest", img.Ref)
	}
	size := img.Manifest.Config.Size
	if size <= 0 || size > maxConfigSize {
		return nil, fmt.Errorf("image %s: config %s of %d bytes (max %d)", img.Ref, img.Config, size, maxConfigSize)
	}
	b := make([]byte, size)
	if _, err := f.Blob(img.Repo, img.Config, size).ReadAt(ctx, b, 0); err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", img.Ref, img.Config, err)
	}
	sum := sha256.Sum256(b)
	if img.Config.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != img.Config.Hex {
		return nil, fmt.Errorf("image %s: config %s: digest mismatch", img.Ref, img.Config)
	}
	var cf v1.ConfigFile
	if err := json.Unmarshal(b, &cf); err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", img.Ref, img.Config, err)
	}
	return &cf.Config, nil
}

// Command returns what a run of an image executes: args if given, else the
// config's entrypoint and cmd.
func Command(cfg *v1.Config, args []string) []string {
	if len(args) > 0 {
		return args
	}
	return append(append([]string(nil), cfg.Entrypoint...), cfg.Cmd...)
}
