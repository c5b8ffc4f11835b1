package node

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/fs"
)

// FuzzMountinfo: the mountinfo scan never panics and finds only fuse.lazyfs
// mounts at exactly the directory asked for.
func FuzzMountinfo(f *testing.F) {
	f.Add([]byte("36 35 0:52 / /mnt/a\\040b rw,nosuid - fuse.lazyfs lazyfs:x rw\n"), "/mnt/a b")
	f.Add([]byte("36 35 0:52 / /mnt rw - tmpfs tmpfs rw\n"), "/mnt")
	f.Add([]byte("1 2 3 4 /x - - fuse.lazyfs\n\n"), "/x")
	f.Fuzz(func(t *testing.T, b []byte, dir string) {
		if lazyfsMountIn(b, dir) && !strings.Contains(string(b), "fuse.lazyfs") {
			t.Fatal("found a lazyfs mount in mountinfo without one")
		}
	})
}

// FuzzStartTime: /proc/PID/stat parsing never panics on odd command names.
func FuzzStartTime(f *testing.F) {
	f.Add([]byte("1234 (sleep) S 1 1234 1234 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 987654 5 6\n"))
	f.Add([]byte("1 (a) b) (c) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0"))
	f.Add([]byte("7 (x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStartTime(b)
	})
}

func TestParseStartTime(t *testing.T) {
	got, err := parseStartTime([]byte("1 (a) b) (c) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0"))
	if err != nil || got != 42 {
		t.Fatalf("%d %v, want 42", got, err)
	}
}

// FuzzLowerDirs: the lower directories label yields absolute, clean paths,
// at most fs.MaxLowerDirs of them, or an error; never a panic.
func FuzzLowerDirs(f *testing.F) {
	f.Add("/var/lib/s/2/fs:/var/lib/s/1/fs")
	f.Add("relative:/abs")
	f.Add("/a/../b")
	f.Add(strings.Repeat("/x:", 2000))
	f.Fuzz(func(t *testing.T, s string) {
		dirs, err := parseLowerDirs(s)
		if err != nil {
			return
		}
		if len(dirs) > fs.MaxLowerDirs {
			t.Fatalf("%d dirs", len(dirs))
		}
		for _, d := range dirs {
			if !filepath.IsAbs(d) || filepath.Clean(d) != d {
				t.Fatalf("%q accepted", d)
			}
		}
	})
}

func TestParseLowerDirs(t *testing.T) {
	if d, err := parseLowerDirs("/s/2/fs:/s/1/fs"); err != nil || len(d) != 2 || d[0] != "/s/2/fs" {
		t.Fatalf("%q %v", d, err)
	}
	for _, bad := range []string{"s/2/fs", "/s/2/fs::/s/1", "/s/../x", "/" + strings.Repeat("x", maxLowerDirsLabel)} {
		if _, err := parseLowerDirs(bad); err == nil || !strings.Contains(err.Error(), LabelLowerDirs) {
			t.Errorf("%.40q: %v, want an error naming the label", bad, err)
		}
	}
}
