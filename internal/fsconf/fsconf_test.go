package fsconf_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/fsconf"
)

// TestOptions: the defaults are fs's own, and off is fs's "none" (a
// negative value), never 0 (which fs reads as its default).
func TestOptions(t *testing.T) {
	d := fsconf.Defaults()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults out of range: %v", err)
	}
	o := d.Options()
	if o.ReadAhead != fs.DefaultReadAhead || o.NeighbourWindow != fs.DefaultNeighbourWindow || o.WholeLibrary != fs.DefaultWholeLibrary || o.Passthrough {
		t.Fatalf("default options %+v differ from fs's", o)
	}
	o = fsconf.Config{Passthrough: true}.Options()
	if o.ReadAhead >= 0 || o.NeighbourWindow >= 0 || o.WholeLibrary >= 0 || !o.Passthrough {
		t.Fatalf("all off: %+v, want negative (none) values", o)
	}
	o = fsconf.Config{ReadAhead: 8, NeighbourWindow: 256 << 10, WholeLibrary: 4 << 20}.Options()
	if o.ReadAhead != 8 || o.NeighbourWindow != 256<<10 || o.WholeLibrary != 4<<20 {
		t.Fatalf("set values: %+v", o)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		edit func(*fsconf.Config)
		want string
	}{
		{func(c *fsconf.Config) { c.ReadAhead = 1025 }, "read_ahead 1025: out of range: the read-ahead in chunks (0 or off: none) must be 0-1024"},
		{func(c *fsconf.Config) { c.ReadAhead = -1 }, "read_ahead -1: out of range"},
		{func(c *fsconf.Config) { c.NeighbourWindow = 1 << 30 }, "neighbour_window 1GiB: out of range: the neighbour window (0 or off: none) must be 0-64MiB"},
		{func(c *fsconf.Config) { c.WholeLibrary = 65 << 20 }, "whole_library 65MiB: out of range: the largest library fetched whole at open (0 or off: never) must be 0-64MiB"},
		{func(c *fsconf.Config) { *c = fsconf.Config{} }, ""},
		{func(c *fsconf.Config) { c.ReadAhead, c.NeighbourWindow, c.WholeLibrary = 1024, 64<<20, 64<<20 }, ""},
	} {
		c := fsconf.Defaults()
		tc.edit(&c)
		err := c.Validate()
		var re *fetchconf.RangeError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", c, err)
		case tc.want != "" && (!errors.As(err, &re) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}

// TestValues: "0" and "off" are none, values round-trip through String
// (a re-executed command line), and TOML takes integers and strings.
func TestValues(t *testing.T) {
	for in, want := range map[string]fsconf.Count{"0": 0, "off": 0, " OFF ": 0, "8": 8} {
		var n fsconf.Count
		if err := n.Set(in); err != nil || n != want {
			t.Errorf("count %q: %d %v, want %d", in, n, err, want)
		}
		var back fsconf.Count
		if err := back.Set(n.String()); err != nil || back != n {
			t.Errorf("count %q does not round-trip through %q", in, n.String())
		}
	}
	for _, bad := range []string{"-1", "many", "1.5", ""} {
		var n fsconf.Count
		if err := n.Set(bad); err == nil || !strings.Contains(err.Error(), "or off") {
			t.Errorf("count %q: %v, want an error that says: or off", bad, err)
		}
	}
	for in, want := range map[string]fsconf.Bytes{"0": 0, "off": 0, "1MiB": 1 << 20, "512K": 512 << 10, "1000": 1000} {
		var b fsconf.Bytes
		if err := b.Set(in); err != nil || b != want {
			t.Errorf("bytes %q: %d %v, want %d", in, b, err, want)
		}
		var back fsconf.Bytes
		if err := back.Set(b.String()); err != nil || back != b {
			t.Errorf("bytes %q does not round-trip through %q", in, b.String())
		}
	}
	for _, bad := range []string{"-1", "lots", ""} {
		var b fsconf.Bytes
		if err := b.Set(bad); err == nil || !strings.Contains(err.Error(), "or off") {
			t.Errorf("bytes %q: %v, want an error that says: or off", bad, err)
		}
	}
	var c struct {
		A, B fsconf.Count
		C, D fsconf.Bytes
	}
	if err := toml.Unmarshal([]byte("A = 64\nB = \"off\"\nC = \"1MiB\"\nD = 0\n"), &c); err != nil || c.A != 64 || c.B != 0 || c.C != 1<<20 || c.D != 0 {
		t.Fatalf("toml: %+v %v", c, err)
	}
}
