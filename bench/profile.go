package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ProfileAnnotation is the manifest annotation that gives each workload's
// profiled copy of a converted image its own digest: a start-up profile
// is a referrer of one manifest digest, so the plain converted image (the
// lazy and mount modes) carries none, two workloads of one image (python,
// readall) each carry their own, and each lazyfs build records its own
// even when it converts to the same bytes. Its value is the copy's tag
// (profileTag).
const ProfileAnnotation = "dev.lazyfs.bench.profile-of"

// profileTag is the tag of a workload's profiled copy: keyed, as the
// conversion is, by the lazyfs binary's hash, and by the workload's
// command and ready line.
func profileTag(tool string, w *Workload) string {
	key := strings.Join(w.Cmd, "\x00")
	if w.ReadyLine != nil {
		key += "\x00ready=" + w.ReadyLine.String()
	}
	return "prof-" + tool + "-" + shortHash(key)
}

// recordArgs is how the harness runs lazyfs record on ref: a throw-away
// block cache, no node profile store (so nothing learned is kept or
// prefetched), no profile prefetched while recording, and the profile
// attached to ref in its registry.
func recordArgs(lazyfs, cacheDir, ref string, w *Workload) []string {
	a := []string{lazyfs, "record", "--insecure", "--cache-dir", cacheDir, "--profile-dir=", "--no-profile"}
	if w.ReadyLine != nil {
		a = append(a, "--ready-line", w.ReadyLine.String())
	}
	a = append(a, ref, "--")
	return append(a, w.Cmd...)
}

// profiledCopy pushes lazyRef's image with ProfileAnnotation set to key
// to dst, unless dst already holds it: same layers, same config,
// its own digest. It returns the copy's digest reference.
func profiledCopy(ctx context.Context, lazyRef, dst, key string) (name.Digest, error) {
	img, err := remoteImageInsecure(ctx, lazyRef)
	if err != nil {
		return name.Digest{}, err
	}
	cp, ok := mutate.Annotations(img, map[string]string{ProfileAnnotation: key}).(v1.Image)
	if !ok {
		return name.Digest{}, fmt.Errorf("image %s: annotating did not yield an image", lazyRef)
	}
	d, err := cp.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	r, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return name.Digest{}, err
	}
	if h, err := remote.Head(r, remote.WithContext(ctx)); err != nil || h.Digest != d {
		if err := remote.Write(r, cp, remote.WithContext(ctx)); err != nil {
			return name.Digest{}, fmt.Errorf("push %s: %w", dst, err)
		}
	}
	return r.Context().Digest(d.String()), nil
}

// hasReferrer reports whether some artifact refers to d in its registry
// (the referrers API, or ggcr's tag fallback).
func hasReferrer(ctx context.Context, d name.Digest) (bool, error) {
	idx, err := remote.Referrers(d, remote.WithContext(ctx))
	if err != nil {
		return false, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return false, err
	}
	return len(m.Manifests) > 0, nil
}

// HasCommand reports whether the lazyfs binary has a subcommand.
func HasCommand(lazyfs, sub string) bool {
	return exec.Command(lazyfs, sub, "--help").Run() == nil
}

// Record makes sure w's image, already prepared as refs, has a profiled
// copy with w's start-up profile attached (lazyfs record, run once per
// image, workload and lazyfs binary: the copy's tag carries the binary's
// hash and the command's) and returns its reference. It returns "" and no
// error when the lazyfs binary has no record command.
func (im *Images) Record(ctx context.Context, w *Workload, refs ImageRefs) (string, error) {
	if refs.Lazy == "" || !HasCommand(im.Lazyfs, "record") {
		return "", nil
	}
	tool, err := fileHash(im.Lazyfs)
	if err != nil {
		return "", fmt.Errorf("lazyfs binary: %w", err)
	}
	repo, _, _ := strings.Cut(refs.Lazy, ":lazy-")
	tag := profileTag(tool, w)
	dst := repo + ":" + tag
	d, err := profiledCopy(ctx, refs.Lazy, dst, tag)
	if err != nil {
		return "", fmt.Errorf("workload %s: profiled copy: %w", w.Name, err)
	}
	if ok, err := hasReferrer(ctx, d); err == nil && ok {
		return dst, nil
	}
	cache, err := os.MkdirTemp("", "lazyfs-bench-record-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(cache)
	im.logf("recording the start-up profile of %s on %s", w.Name, dst)
	args := recordArgs(im.Lazyfs, filepath.Join(cache, "cache"), dst, w)
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("lazyfs record %s: %w: %s", dst, err, lastLines(string(out), 5))
	}
	im.logf("%s", strings.TrimSpace(lastLines(string(out), 2)))
	if ok, err := hasReferrer(ctx, d); err != nil || !ok {
		return "", fmt.Errorf("lazyfs record %s: no referrer on %s afterwards (%v)", dst, d, err)
	}
	return dst, nil
}
