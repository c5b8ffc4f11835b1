package bench

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/gzip"
)

// DefaultCacheDir keeps built root filesystems, layer tarballs and the
// registry's storage between runs, so each image is built and pushed once.
const DefaultCacheDir = "/var/cache/lazyfs-bench"

// Images builds the workloads' images, caches them, pushes them to a
// registry and converts them with lazyfs convert.
type Images struct {
	CacheDir string
	// Lazyfs is the lazyfs binary that converts.
	Lazyfs string
	// Mirror is the Debian archive debootstrap and apt use ("": the first
	// Debian URI in /etc/apt/sources.list*, else http://deb.debian.org/debian).
	Mirror string
	// WeightsBytes is the size of the weights workload's file (0: 1 GiB).
	WeightsBytes int64
	// Timeout bounds preparing one image: building it (debootstrap, apt),
	// pushing and converting it (default 1 hour).
	Timeout time.Duration
	Logf    func(format string, args ...any)
}

// ImageRefs are a prepared image's references in the bench registry.
type ImageRefs struct {
	Plain string `json:"plain"` // as built (gzip layers): what a full pull fetches
	Lazy  string `json:"lazy"`  // converted by lazyfs convert
	// PlainBytes is the sum of the plain image's compressed layer sizes.
	PlainBytes int64 `json:"plainBytes"`
	// LazyBytes is the sum of the converted image's layer sizes.
	LazyBytes int64 `json:"lazyBytes"`
	// Profiled is the workload's copy of Lazy (ProfileAnnotation: own
	// digest, same layers) with its start-up profile attached by lazyfs
	// record; "" when the lazyfs binary cannot record or recording failed.
	Profiled string `json:"profiled,omitempty"`
	// Stargz is the plain image converted to eStargz (Images.Estargz),
	// for the stargz mode; StargzBytes its layers' size.
	Stargz      string `json:"stargz,omitempty"`
	StargzBytes int64  `json:"stargzBytes,omitempty"`
	// StargzProfiled is the workload's eStargz copy with the files of its
	// start-up profile prioritized (Images.EstargzProfiled), for the
	// stargz+profile mode.
	StargzProfiled string `json:"stargzProfiled,omitempty"`
}

// Debian package sets of the built images.
var imagePackages = map[string][]string{
	"python": {"python3", "python3-numpy"},
	"torch":  {"python3", "python3-torch"},
	// Node.js tools: thousands of small JavaScript files in
	// /usr/share/nodejs (eslint's recommends are what its CLI loads).
	"node": {"nodejs", "eslint", "node-typescript", "node-chalk", "node-js-yaml", "node-strip-ansi", "node-text-table"},
}

// BuiltImages are the image names Prepare builds itself.
var BuiltImages = []string{"hello", "python", "torch", "node", "weights"}

func (im *Images) logf(format string, args ...any) {
	if im.Logf != nil {
		im.Logf(format, args...)
	}
}

// Prepare makes sure image (a BuiltImages name, or any other reference,
// which is copied in) is in reg as a plain and a converted image, within
// Timeout.
func (im *Images) Prepare(ctx context.Context, image string, reg Registry) (ImageRefs, error) {
	ctx, cancel := im.bounded(ctx)
	defer cancel()
	var img v1.Image
	var err error
	repo := reg.Host() + "/bench/" + image
	switch image {
	case "hello":
		img, err = im.layeredImage(ctx, []func(context.Context) (string, error){im.busyboxLayer})
	case "weights":
		img, err = im.layeredImage(ctx, []func(context.Context) (string, error){im.busyboxLayer, im.weightsLayer})
	case "python", "torch", "node":
		img, err = im.layeredImage(ctx, []func(context.Context) (string, error){func(ctx context.Context) (string, error) { return im.rootfsLayer(ctx, image) }})
	default:
		repo = reg.Host() + "/bench/user-" + shortHash(image)
		img, err = remoteImageInsecure(ctx, image)
	}
	if err != nil {
		return ImageRefs{}, fmt.Errorf("image %s: %w", image, err)
	}
	refs := ImageRefs{Plain: repo + ":plain"}
	if refs.PlainBytes, err = layerBytes(img); err != nil {
		return refs, fmt.Errorf("image %s: %w", image, err)
	}
	if err := im.push(ctx, img, refs.Plain); err != nil {
		return refs, err
	}
	tool, err := fileHash(im.Lazyfs)
	if err != nil {
		return refs, fmt.Errorf("lazyfs binary: %w", err)
	}
	refs.Lazy = repo + ":lazy-" + tool
	if err := im.convert(ctx, refs.Plain, refs.Lazy); err != nil {
		return refs, err
	}
	lazy, err := remoteImageInsecure(ctx, refs.Lazy)
	if err != nil {
		return refs, err
	}
	if refs.LazyBytes, err = layerBytes(lazy); err != nil {
		return refs, fmt.Errorf("image %s: %w", refs.Lazy, err)
	}
	return refs, nil
}

// bounded is ctx bounded by Timeout (default 1 hour), for preparing one
// image.
func (im *Images) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := im.Timeout
	if timeout <= 0 {
		timeout = time.Hour
	}
	return context.WithTimeout(ctx, timeout)
}

func layerBytes(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}

func (im *Images) layeredImage(ctx context.Context, builders []func(context.Context) (string, error)) (v1.Image, error) {
	img := empty.Image
	for _, b := range builders {
		path, err := b(ctx)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromFile(path)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", path, err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, fmt.Errorf("layer %s: %w", path, err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	return mutate.ConfigFile(img, cf)
}

func (im *Images) push(ctx context.Context, img v1.Image, ref string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	want, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image %s: digest: %w", ref, err)
	}
	if d, err := remote.Head(r, remote.WithContext(ctx)); err == nil && d.Digest == want {
		return nil
	}
	im.logf("pushing %s", ref)
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

func (im *Images) convert(ctx context.Context, src, dst string) error {
	r, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return fmt.Errorf("image %s: %w", dst, err)
	}
	if _, err := remote.Head(r, remote.WithContext(ctx)); err == nil {
		return nil
	}
	im.logf("converting %s to %s", src, dst)
	out, err := exec.CommandContext(ctx, im.Lazyfs, "convert", "--insecure", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lazyfs convert %s %s: %w: %s", src, dst, err, lastLines(string(out), 5))
	}
	return nil
}

func remoteImageInsecure(ctx context.Context, ref string) (v1.Image, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// busyboxLayer is a layer with a static busybox and its applets' links.
func (im *Images) busyboxLayer(ctx context.Context) (string, error) {
	return im.cachedLayer("busybox", func(w io.Writer) error {
		bin, err := findBusybox()
		if err != nil {
			return err
		}
		f, err := os.Open(bin)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		tw := tar.NewWriter(w)
		for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "weights"} {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: st.Size(), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := io.Copy(tw, f); err != nil {
			return err
		}
		for _, a := range []string{"sh", "echo", "cat", "ls", "dd", "sha256sum", "wc", "true"} {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
		passwd := "root:x:0:0:root:/:/bin/sh\n"
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, passwd); err != nil {
			return err
		}
		return tw.Close()
	})
}

func findBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errors.New("no static busybox (apt-get install busybox-static)")
}

// WeightsFile writes a safetensors-like file of about size bytes to w: an
// 8-byte little-endian header length, a JSON header naming one F16 tensor,
// then the tensor's bytes (deterministic pseudo-random: they compress as
// badly as real weights).
func WeightsFile(w io.Writer, size int64) (int64, error) {
	elems := max(size/2, 1)
	hdr := fmt.Sprintf(`{"__metadata__":{"format":"pt"},"weight":{"dtype":"F16","shape":[%d],"data_offsets":[0,%d]}}`, elems, elems*2)
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
	bw := bufio.NewWriterSize(w, 1<<20)
	bw.Write(n[:])
	bw.WriteString(hdr)
	rng := rand.NewChaCha8([32]byte{'l', 'a', 'z', 'y', 'f', 's'})
	buf := make([]byte, 1<<20)
	left := elems * 2
	for left > 0 {
		k := min(int64(len(buf)), left)
		rng.Read(buf[:k])
		if _, err := bw.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	return 8 + int64(len(hdr)) + elems*2, bw.Flush()
}

func (im *Images) weightsLayer(ctx context.Context) (string, error) {
	size := im.WeightsBytes
	if size <= 0 {
		size = 1 << 30
	}
	return im.cachedLayer(fmt.Sprintf("weights-%d", size), func(w io.Writer) error {
		tmp, err := os.CreateTemp(im.CacheDir, "weights-*.tmp")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		n, err := WeightsFile(tmp, size)
		if err != nil {
			return err
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		tw := tar.NewWriter(w)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "weights/model.safetensors", Mode: 0o644, Size: n, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tmp); err != nil {
			return err
		}
		return tw.Close()
	})
}

// cachedLayer returns CacheDir/layers/NAME.tar.gz, writing it with gen (an
// uncompressed tar stream) when it is not there yet.
func (im *Images) cachedLayer(name string, gen func(io.Writer) error) (string, error) {
	path := filepath.Join(im.CacheDir, "layers", name+".tar.gz")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	im.logf("building layer %s", name)
	f, err := os.CreateTemp(filepath.Dir(path), name+".*.tmp")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.DefaultCompression)
	if err != nil {
		return "", err
	}
	if err := gen(zw); err != nil {
		return "", fmt.Errorf("layer %s: %w", name, err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("layer %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// rootfsLayer returns the layer of a Debian root filesystem with the
// image's packages, building the file system first if needed.
func (im *Images) rootfsLayer(ctx context.Context, image string) (string, error) {
	root, err := im.Rootfs(ctx, image)
	if err != nil {
		return "", err
	}
	return im.cachedLayer(image, func(w io.Writer) error {
		cmd := exec.CommandContext(ctx, "tar", "-C", root, "--numeric-owner", "--one-file-system", "--sort=name",
			"--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*", "--exclude=./tmp/*",
			"-cf", "-", ".")
		cmd.Stdout = w
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("tar %s: %w: %s", root, err, stderr.String())
		}
		return nil
	})
}

// Rootfs returns CacheDir/rootfs/IMAGE: debootstrap's minbase bookworm plus
// the image's packages (apt inside the chroot), built once.
func (im *Images) Rootfs(ctx context.Context, image string) (string, error) {
	pkgs, ok := imagePackages[image]
	if !ok {
		return "", fmt.Errorf("image %s: no root file system recipe", image)
	}
	base, err := im.buildDir(ctx, "base", func(dir string) error {
		if _, err := exec.LookPath("debootstrap"); err != nil {
			return errors.New("debootstrap not installed (apt-get install debootstrap)")
		}
		im.logf("debootstrap bookworm (minbase) from %s", im.mirror())
		return runLogged(ctx, "debootstrap", "--variant=minbase", "bookworm", dir, im.mirror())
	})
	if err != nil {
		return "", err
	}
	return im.buildDir(ctx, image, func(dir string) error {
		if err := runLogged(ctx, "cp", "-a", base+"/.", dir); err != nil {
			return err
		}
		if err := runLogged(ctx, "cp", "/etc/resolv.conf", filepath.Join(dir, "etc/resolv.conf")); err != nil {
			return err
		}
		proc := filepath.Join(dir, "proc")
		if err := runLogged(ctx, "mount", "-t", "proc", "proc", proc); err != nil {
			return err
		}
		defer exec.Command("umount", proc).Run()
		im.logf("apt-get install %s (image %s)", strings.Join(pkgs, " "), image)
		steps := [][]string{
			{"chroot", dir, "apt-get", "update", "-qq"},
			append([]string{"chroot", dir, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "--no-install-recommends"}, pkgs...),
			{"chroot", dir, "apt-get", "clean"},
		}
		for _, s := range steps {
			if err := runLogged(ctx, s...); err != nil {
				return err
			}
		}
		return os.RemoveAll(filepath.Join(dir, "var/lib/apt/lists"))
	})
}

// buildDir returns CacheDir/rootfs/NAME, running build on NAME.tmp and
// renaming it when build succeeds.
func (im *Images) buildDir(ctx context.Context, name string, build func(dir string) error) (string, error) {
	dir := filepath.Join(im.CacheDir, "rootfs", name)
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	if err := build(tmp); err != nil {
		return "", fmt.Errorf("root file system %s: %w", name, err)
	}
	return dir, os.Rename(tmp, dir)
}

func (im *Images) mirror() string {
	if im.Mirror != "" {
		return im.Mirror
	}
	return DebianMirror("/etc/apt")
}

// DebianMirror returns the first Debian archive URI (not the security
// archive) configured under aptDir, or http://deb.debian.org/debian.
func DebianMirror(aptDir string) string {
	files, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*"))
	files = append([]string{filepath.Join(aptDir, "sources.list")}, files...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fs := strings.Fields(line)
			var uri string
			switch {
			case len(fs) >= 2 && fs[0] == "URIs:":
				uri = fs[1]
			case len(fs) >= 3 && fs[0] == "deb":
				uri = fs[1]
				if strings.HasPrefix(uri, "[") {
					for _, x := range fs[1:] {
						if strings.HasPrefix(x, "http") {
							uri = x
							break
						}
					}
				}
			}
			if strings.HasPrefix(uri, "http") && !strings.Contains(uri, "security") {
				return uri
			}
		}
	}
	return "http://deb.debian.org/debian"
}

func runLogged(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 8))
	}
	return nil
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:6])
}

func fileHash(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)[:6]), nil
}
