// Package size parses and prints byte counts the same way in every lazyfs
// binary, flag and config file.
//
// The convention, one for all of lazyfs:
//
//   - KiB, MiB, GiB, TiB are binary (1024-based): 256KiB = 262144.
//   - KB, MB, GB, TB are decimal (1000-based): 1GB = 1000000000.
//   - A bare K, M, G, T is binary, as in docker, ls and dd: 10G = 10GiB.
//   - B or no suffix is bytes. Units are case-insensitive; a space between
//     number and unit is allowed; the number may have a fraction (1.5GiB).
//
// Sizes are printed in binary units: exactly (Format, "256KiB", "10GiB",
// "1000B") where a value must survive a round trip (flag defaults, configs,
// re-executed command lines), or rounded to one decimal (Human, "1.3GiB")
// for measured quantities.
package size

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Units, binary.
const (
	KiB int64 = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
	PiB
)

// suffixes in matching order: longer suffixes first.
var suffixes = []struct {
	s string
	m float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"pib", 1 << 50},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"pb", 1e15},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"p", 1 << 50},
	{"b", 1},
}

// Syntax is the one-line reminder that parse errors end with.
const Syntax = "a byte count such as 4096, 256KiB, 64MiB, 10GiB or 1.5GB (KiB/MiB/GiB binary, KB/MB/GB decimal, bare K/M/G binary)"

// Parse reads a size written in the package's convention. It rejects
// negative, non-finite and out-of-range values; a fraction of a byte is
// rounded to the nearest byte.
func Parse(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range suffixes {
		if strings.HasSuffix(t, u.s) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.s)), u.m
			break
		}
	}
	if !isPlainDecimal(t) {
		if strings.HasPrefix(t, "-") && isPlainDecimal(t[1:]) {
			return 0, fmt.Errorf("invalid size %q: a size cannot be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want %s", s, Syntax)
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil && mult == 1 {
		return n, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: want %s", s, Syntax)
	}
	v := math.Round(f * mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: larger than 8EiB", s)
	}
	return int64(v), nil
}

// isPlainDecimal reports whether t is digits with at most one dot, and at
// least one digit.
func isPlainDecimal(t string) bool {
	dot, digit := false, false
	for _, c := range t {
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digit
}

var units = []struct {
	n    string
	size int64
}{{"PiB", PiB}, {"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}}

// Format prints n exactly, in the largest binary unit that divides it:
// 262144 → "256KiB", 10737418240 → "10GiB", 1000 → "1000B", 0 → "0".
// Parse(Format(n)) == n for every n ≥ 0.
func Format(n int64) string {
	if n == 0 {
		return "0"
	}
	if n > 0 {
		for _, u := range units {
			if n%u.size == 0 {
				return strconv.FormatInt(n/u.size, 10) + u.n
			}
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// Human prints n for a reader, in the largest binary unit not above it,
// with at most one decimal: 1363148 → "1.3MiB", 262144 → "256KiB", 512 → "512B".
func Human(n int64) string {
	a := n
	if a < 0 {
		a = -a
	}
	for _, u := range units {
		if a >= u.size {
			s := strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64)
			return strings.TrimSuffix(s, ".0") + u.n
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// Size is a byte count usable as a pflag.Value and in TOML/JSON configs
// (encoding.TextMarshaler): it parses with Parse and prints with Format.
type Size int64

// Set implements pflag.Value.
func (s *Size) Set(v string) error {
	n, err := Parse(v)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// String implements pflag.Value: the exact form, so the value round-trips.
func (s Size) String() string { return Format(int64(s)) }

// Type implements pflag.Value.
func (s Size) Type() string { return "size" }

// Bytes returns the count.
func (s Size) Bytes() int64 { return int64(s) }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error { return s.Set(string(b)) }

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Off is a size flag where "0" or "off" switches the feature off: Bytes
// returns -1 then, the "none" value of the options it feeds. Its zero value
// (and an unset flag) means the default, Default.
type Off struct {
	Default int64
	v       int64
	set     bool
}

// Set implements pflag.Value.
func (o *Off) Set(v string) error {
	if strings.EqualFold(strings.TrimSpace(v), "off") {
		o.v, o.set = 0, true
		return nil
	}
	n, err := Parse(v)
	if err != nil {
		return fmt.Errorf("%w, or off", err)
	}
	o.v, o.set = n, true
	return nil
}

// String implements pflag.Value.
func (o *Off) String() string {
	if o == nil {
		return ""
	}
	if !o.set {
		return Format(o.Default)
	}
	if o.v == 0 {
		return "off"
	}
	return Format(o.v)
}

// Type implements pflag.Value.
func (o *Off) Type() string { return "size|off" }

// Bytes returns the chosen size, Default when unset, or -1 when off.
func (o *Off) Bytes() int64 {
	switch {
	case !o.set:
		return o.Default
	case o.v == 0:
		return -1
	}
	return o.v
}
