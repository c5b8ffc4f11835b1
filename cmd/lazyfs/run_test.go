package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

// pushBusybox pushes a plain busybox image with an env and working dir.
func pushBusybox(t *testing.T, ref string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static (/bin/busybox)")
	}
	files := []toctest.File{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "srv/", Mode: 0o755}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, Data: bb},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, Data: []byte("root:x:0:\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "srv/data.bin", Mode: 0o644}, Data: toctest.Random(9, 600<<10)},
	}
	for _, a := range []string{"sh", "cat", "echo", "head", "wc", "pwd"} {
		files = append(files, toctest.File{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox"}})
	}
	b := toctest.Tar(t, files)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/bin", "GREETING=hi from the config"}, WorkingDir: "/srv", Cmd: []string{"echo", "default cmd"}})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

func TestRunRecordInspect(t *testing.T) {
	needFUSE(t)
	host := testRegistry(t)
	src, dst := host+"/bb:1", host+"/bb:1-lazy"
	pushBusybox(t, src)
	if _, err := run(t, "convert", src, dst); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	common := []string{"--cache-dir", "", "--profile-dir", filepath.Join(tmp, "node")}

	out, err := run(t, append(append([]string{"run"}, common...), dst, "--", "sh", "-c",
		`echo x > /tmp/w && cat /tmp/w && head -c 5 /dev/urandom | wc -c && echo y > /dev/null && pwd && echo "$GREETING"`)...)
	if err != nil || out != "x\n5\n/srv\nhi from the config\n" {
		t.Fatalf("run: %q %v", out, err)
	}
	// --device: a CDI device (a stand-in for a GPU: /dev/zero) reaches the
	// command, with its spec's environment.
	cdiDir := filepath.Join(tmp, "cdi")
	os.Mkdir(cdiDir, 0o755)
	spec := `{"cdiVersion": "0.6.0", "kind": "lazyfs.test/gpu", "devices": [{"name": "0", "containerEdits": {"env": ["TEST_GPU=0"], "deviceNodes": [{"path": "/dev/testgpu0", "hostPath": "/dev/zero"}]}}]}`
	if err := os.WriteFile(filepath.Join(cdiDir, "test.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, append(append([]string{"run", "--cdi-spec-dir", cdiDir, "--device", "lazyfs.test/gpu=0"}, common...), dst, "--", "sh", "-c",
		`head -c 4 /dev/testgpu0 | wc -c && echo "$TEST_GPU"`)...)
	if err != nil || out != "4\n0\n" {
		t.Fatalf("run --device: %q %v", out, err)
	}
	out, err = run(t, append(append([]string{"run"}, common...), dst)...)
	if err != nil || out != "default cmd\n" {
		t.Fatalf("run of the image's cmd: %q %v", out, err)
	}
	_, err = run(t, append(append([]string{"run"}, common...), dst, "--", "sh", "-c", "exit 3")...)
	var ec exitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != 3 {
		t.Fatalf("exit status: %v", err)
	}

	before := inspect(t, dst)
	out, err = run(t, append(append([]string{"record"}, common...), dst, "--", "sh", "-c", "cat /etc/group /srv/data.bin /etc/passwd >/dev/null")...)
	if err != nil || !strings.Contains(out, "attached as sha256:") {
		t.Fatalf("record: %q %v", out, err)
	}
	after := inspect(t, dst)
	if after.Digest != before.Digest {
		t.Fatalf("recording changed the image digest: %s -> %s", before.Digest, after.Digest)
	}
	if after.Profile == "" || after.ProfileFiles < 3 {
		t.Fatalf("inspect does not show the profile: %+v", after)
	}

	// --output writes the profile locally, in first-read order.
	pf := filepath.Join(tmp, "p.json")
	if _, err := run(t, append(append([]string{"record", "--output", pf}, common...), dst, "--", "sh", "-c", "cat /srv/data.bin /etc/group >/dev/null")...); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(pf)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.Read(fh)
	fh.Close()
	if err != nil {
		t.Fatal(err)
	}
	paths := p.Paths()
	if i, j := indexOf(paths, "srv/data.bin"), indexOf(paths, "etc/group"); i < 0 || j < 0 || i > j {
		t.Fatalf("recorded paths %v: want srv/data.bin before etc/group", paths)
	}

	// A node without a learned profile prefetches the registry's.
	rep := filepath.Join(tmp, "report.json")
	if _, err := run(t, "run", "--cache-dir", "", "--profile-dir", filepath.Join(tmp, "fresh"), "--report", rep, dst, "--", "cat", "/etc/passwd"); err != nil {
		t.Fatal(err)
	}
	var rr runReport
	b, _ := os.ReadFile(rep)
	if err := json.Unmarshal(b, &rr); err != nil {
		t.Fatal(err)
	}
	if rr.ProfileSource != "registry" || rr.Prefetch == nil || rr.Prefetch.ProfileChunks == 0 {
		t.Fatalf("report %s", b)
	}
	// And that run learned its own profile on the node, for `profile push`.
	out, err = run(t, "profile", "push", "--profile-dir", filepath.Join(tmp, "fresh"), dst)
	if err != nil || !strings.Contains(out, "attached a profile of 2 files") {
		t.Fatalf("profile push: %q %v", out, err)
	}
	if got := inspect(t, dst); got.Digest != before.Digest || got.ProfileFiles != 2 { // bin/busybox (exec) and etc/passwd
		t.Fatalf("after profile push: %+v", got)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func inspect(t *testing.T, ref string) inspectReport {
	t.Helper()
	out, err := run(t, "inspect", "--json", ref)
	if err != nil {
		t.Fatal(err)
	}
	var r inspectReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return r
}
