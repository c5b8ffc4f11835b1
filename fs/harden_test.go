package fs

import (
	"archive/tar"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyfs/lazyfs/fs/fstest"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

func hostileHdr(typ byte, name string, mode int64) tar.Header {
	return tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
}

// TestModesExact: every permission and special bit of a tar entry comes
// through the mount as is, including a mode of 0000 (go-fuse substitutes
// 0644/0755 for a zero mode unless told not to).
func TestModesExact(t *testing.T) {
	modes := []struct {
		name string
		typ  byte
		mode int64
	}{
		{"d0000", tar.TypeDir, 0},
		{"d0600", tar.TypeDir, 0o600},
		{"d1777", tar.TypeDir, 0o1777},
		{"d2755", tar.TypeDir, 0o2755},
		{"d0700", tar.TypeDir, 0o700},
		{"f0000", tar.TypeReg, 0},
		{"f0444", tar.TypeReg, 0o444},
		{"f4755", tar.TypeReg, 0o4755},
		{"f2755", tar.TypeReg, 0o2755},
		{"f1644", tar.TypeReg, 0o1644},
		{"f7777", tar.TypeReg, 0o7777},
		{"f0001", tar.TypeReg, 0o001},
		{"p0000", tar.TypeFifo, 0},
		{"c0000", tar.TypeChar, 0},
	}
	var files []toctest.File
	for _, m := range modes {
		f := toctest.File{Hdr: hostileHdr(m.typ, m.name, m.mode)}
		if m.typ == tar.TypeReg {
			f.Data = []byte("x")
		}
		files = append(files, f)
	}
	// A file inside a directory of mode 0000 (root may still look it up).
	files = append(files, toctest.File{Hdr: hostileHdr(tar.TypeReg, "d0000/inner", 0), Data: []byte("y")})
	layer := convertLayer(t, toctest.Tar(t, files), 4096)
	for _, overlay := range []bool{false, true} {
		dir, _ := mountLayers(t, []*testLayer{layer}, Options{OverlayWhiteouts: overlay, Cache: fstest.NewMemCache()})
		check := func(p string, want uint32) {
			t.Helper()
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, p), &st); err != nil {
				t.Fatalf("overlay=%v: %s: %v", overlay, p, err)
			}
			if got := st.Mode & 0o7777; got != want {
				t.Errorf("overlay=%v: %s: mode %04o, want %04o", overlay, p, got, want)
			}
		}
		for _, m := range modes {
			check(m.name, uint32(m.mode))
		}
		check("d0000/inner", 0)
	}
}

// TestOverlayXattrsFiltered: a layer cannot plant overlayfs xattrs
// (trusted.overlay.*, user.overlay.*), nor any other trusted.* (which
// containerd does not set either), through the mount; the opaque marker
// comes only from a ".wh..wh..opq" whiteout.
func TestOverlayXattrsFiltered(t *testing.T) {
	planted := map[string]string{
		"SCHILY.xattr.trusted.overlay.opaque":   "y",
		"SCHILY.xattr.trusted.overlay.redirect": "/etc",
		"SCHILY.xattr.trusted.overlay.metacopy": "",
		"SCHILY.xattr.user.overlay.opaque":      "y",
		"SCHILY.xattr.user.overlay.origin":      "x",
		"SCHILY.xattr.user.keep":                "kept",
		"SCHILY.xattr.trusted.other":            "containerd does not set trusted.* either",
	}
	files := []toctest.File{
		{Hdr: hostileHdr(tar.TypeDir, "planted/", 0o755)},
		{Hdr: hostileHdr(tar.TypeReg, "planted/file", 0o644), Data: []byte("z")},
		{Hdr: hostileHdr(tar.TypeDir, "real-opaque/", 0o755)},
		{Hdr: hostileHdr(tar.TypeReg, "real-opaque/.wh..wh..opq", 0o644)},
	}
	files[0].Hdr.PAXRecords = planted
	files[1].Hdr.PAXRecords = planted
	layer := convertLayer(t, toctest.Tar(t, files), 4096)
	for _, overlay := range []bool{true, false} {
		dir, _ := mountLayers(t, []*testLayer{layer}, Options{OverlayWhiteouts: overlay, Cache: fstest.NewMemCache()})
		for _, p := range []string{"planted", "planted/file"} {
			full := filepath.Join(dir, p)
			names := listXattrs(t, full)
			for _, n := range names {
				if strings.HasPrefix(n, "trusted.") || strings.HasPrefix(n, "user.overlay.") {
					t.Errorf("overlay=%v: %s lists planted xattr %q", overlay, p, n)
				}
			}
			if !slices.Contains(names, "user.keep") {
				t.Errorf("overlay=%v: %s: user.keep missing from %q", overlay, p, names)
			}
			for k := range planted {
				k = strings.TrimPrefix(k, "SCHILY.xattr.")
				if k == "user.keep" {
					continue
				}
				buf := make([]byte, 64)
				if _, err := unix.Lgetxattr(full, k, buf); !errors.Is(err, unix.ENODATA) {
					t.Errorf("overlay=%v: %s: getxattr %s: %v, want ENODATA", overlay, p, k, err)
				}
			}
		}
		buf := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(dir, "real-opaque"), overlayOpaqueXattr, buf)
		if overlay && (err != nil || string(buf[:n]) != "y") {
			t.Errorf("overlay=true: real-opaque: getxattr %s = %q, %v; want \"y\"", overlayOpaqueXattr, buf[:max(n, 0)], err)
		}
		if !overlay && !errors.Is(err, unix.ENODATA) {
			t.Errorf("overlay=false: real-opaque: getxattr %s: %v, want ENODATA", overlayOpaqueXattr, err)
		}
	}
}

func listXattrs(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
