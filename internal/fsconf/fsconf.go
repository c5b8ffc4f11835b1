// Package fsconf is the one place for the file-system tuning settings that
// lazyfs's daemons and commands expose (lazyfs-snapshotter's config keys and
// flags; lazyfs mount, run, record and serve's flags): read-ahead, the
// neighbour window, whole libraries at open and FUSE passthrough. It owns
// their defaults (fs's), the ranges a value must lie in, and the fs.Options
// they become; each edge prints a range error in its own words (a config
// key, a flag), as for internal/fetchconf, whose RangeError it returns.
package fsconf

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/size"
)

// Config holds the settings. Every field is a real value, 0 meaning off
// (no zero means default): start from Defaults.
type Config struct {
	// ReadAhead is the most chunks fetched ahead of a sequential reader
	// (fs.Options.ReadAhead); 0 is none.
	ReadAhead Count
	// NeighbourWindow is the compressed bytes after a small file fetched in
	// the background when it misses (fs.Options.NeighbourWindow); 0 is none.
	NeighbourWindow Bytes
	// WholeLibrary is the largest shared library, compressed, fetched whole
	// when opened without a start-up profile (fs.Options.WholeLibrary); 0 is
	// never.
	WholeLibrary Bytes
	// Passthrough serves fully cached files through FUSE passthrough
	// (fs.Options.Passthrough; root and kernel ≥ 6.9).
	Passthrough bool
}

// Defaults are fs's defaults.
func Defaults() Config {
	return Config{
		ReadAhead:       fs.DefaultReadAhead,
		NeighbourWindow: fs.DefaultNeighbourWindow,
		WholeLibrary:    fs.DefaultWholeLibrary,
	}
}

// Ranges of the settings: a value outside is refused.
const (
	MaxReadAhead       = 1024     // chunks: 256MiB at the default chunk size
	MaxNeighbourWindow = 64 << 20 // compressed bytes
	MaxWholeLibrary    = 64 << 20 // compressed bytes
)

// Validate returns a *fetchconf.RangeError for the first setting out of
// range (Key is the config key, e.g. read_ahead).
func (c Config) Validate() error {
	if c.ReadAhead < 0 || c.ReadAhead > MaxReadAhead {
		return &fetchconf.RangeError{Key: "read_ahead", Value: strconv.Itoa(int(c.ReadAhead)), Range: fmt.Sprintf("0-%d", MaxReadAhead), What: "the read-ahead in chunks (0 or off: none)"}
	}
	bytes := func(key string, v Bytes, hi int64, what string) error {
		if v < 0 || int64(v) > hi {
			return &fetchconf.RangeError{Key: key, Value: size.Format(int64(v)), Range: size.Format(0) + "-" + size.Format(hi), What: what}
		}
		return nil
	}
	if err := bytes("neighbour_window", c.NeighbourWindow, MaxNeighbourWindow, "the neighbour window (0 or off: none)"); err != nil {
		return err
	}
	return bytes("whole_library", c.WholeLibrary, MaxWholeLibrary, "the largest library fetched whole at open (0 or off: never)")
}

// Options are the fs.Options of c (after Validate): off becomes fs's "none"
// (a negative value). Passthrough needs a SpoolDir, which the caller (or
// internal/node) sets.
func (c Config) Options() fs.Options {
	none := func(v int64) int64 {
		if v == 0 {
			return -1
		}
		return v
	}
	return fs.Options{
		ReadAhead:       int(none(int64(c.ReadAhead))),
		NeighbourWindow: none(int64(c.NeighbourWindow)),
		WholeLibrary:    none(int64(c.WholeLibrary)),
		Passthrough:     c.Passthrough,
	}
}

// Count is a whole number, or "0"/"off" for none (0); usable as a
// pflag.Value and in TOML (an integer, or a string such as "off").
type Count int

// Set implements pflag.Value.
func (n *Count) Set(v string) error {
	s := strings.TrimSpace(v)
	if strings.EqualFold(s, "off") {
		*n = 0
		return nil
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 {
		return fmt.Errorf("invalid count %q: want a whole number ≥ 0, or off", v)
	}
	*n = Count(i)
	return nil
}

// String implements pflag.Value: the number, or "off".
func (n Count) String() string {
	if n == 0 {
		return "off"
	}
	return strconv.Itoa(int(n))
}

// Type implements pflag.Value.
func (n Count) Type() string { return "count|off" }

// UnmarshalText implements encoding.TextUnmarshaler.
func (n *Count) UnmarshalText(b []byte) error { return n.Set(string(b)) }

// MarshalText implements encoding.TextMarshaler.
func (n Count) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// Bytes is a byte count in lazyfs's size convention (internal/size), or
// "0"/"off" for none (0); usable as a pflag.Value and in TOML (a string
// such as "1MiB" or "off", or an integer).
type Bytes int64

// Set implements pflag.Value.
func (b *Bytes) Set(v string) error {
	if strings.EqualFold(strings.TrimSpace(v), "off") {
		*b = 0
		return nil
	}
	n, err := size.Parse(v)
	if err != nil {
		return fmt.Errorf("%w, or off", err)
	}
	*b = Bytes(n)
	return nil
}

// String implements pflag.Value: the exact size ("1MiB"), or "off".
func (b Bytes) String() string {
	if b == 0 {
		return "off"
	}
	return size.Format(int64(b))
}

// Type implements pflag.Value.
func (b Bytes) Type() string { return "size|off" }

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bytes) UnmarshalText(t []byte) error { return b.Set(string(t)) }

// MarshalText implements encoding.TextMarshaler.
func (b Bytes) MarshalText() ([]byte, error) { return []byte(b.String()), nil }
