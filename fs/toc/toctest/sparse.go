package toctest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SparseManyRegions is the number of data regions of GNUSparseTar's
// "many": more than the 4 + 21 an old GNU header and its first extension
// block hold.
const SparseManyRegions = 30

// GNUSparseTar returns a layer that GNU tar writes with --sparse and the
// given format options (e.g. "-H", "gnu" or "-H", "posix",
// "--sparse-version=1.0"), holding under dir/: "many" (SparseManyRegions
// regions of 5000 bytes, not block-aligned), "head" (data, then a hole to
// its end), "tail" (a hole, then data to its end), "holes" (all hole),
// "chunks" (regions of 300 KiB, over several chunks) and "plain", a small
// regular file. It skips t without GNU tar, and fails it if the files
// cannot be made sparse.
func GNUSparseTar(t testing.TB, dir string, format ...string) []byte {
	t.Helper()
	if out, _ := exec.Command("tar", "--version").Output(); !bytes.Contains(out, []byte("GNU tar")) {
		t.Skip("no GNU tar")
	}
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, dir), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, size int64, offs []int64, data []byte) {
		f, err := os.Create(filepath.Join(src, dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, o := range offs {
			if _, err := f.WriteAt(data, o); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	data := Random(9, 5000)
	var many []int64
	for i := range int64(SparseManyRegions) {
		many = append(many, i*64<<10+i*7)
	}
	write("many", 3<<20, many, data)
	write("head", 2<<20, []int64{0}, data)
	write("tail", 2<<20, []int64{2<<20 - 5000}, data)
	write("holes", 1<<20, nil, nil)
	write("chunks", 8<<20, []int64{100, 3 << 20}, Random(10, 300<<10))
	write("plain", 23, []int64{0}, []byte("after the sparse files\n"))
	out := filepath.Join(t.TempDir(), "layer.tar")
	args := append([]string{"--sparse", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-cf", out}, format...)
	if msg, err := exec.Command("tar", append(args, "-C", src, dir)...).CombinedOutput(); err != nil {
		t.Fatalf("tar %q: %v: %s", format, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
