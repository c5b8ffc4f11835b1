package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lazyfs/lazyfs/internal/size"
	"github.com/spf13/pflag"
)

// IntRange checks an integer flag: an error naming --flag, its value and the
// allowed range, or nil.
func IntRange(flag string, v, lo, hi int, what string) error {
	if v < lo || v > hi {
		return Usagef("--%s %d: out of range: %s must be %d-%d", flag, v, what, lo, hi)
	}
	return nil
}

// SizeRange checks a size flag the same way, printing sizes canonically.
func SizeRange(flag string, v, lo, hi int64, what string) error {
	if v < lo || v > hi {
		return Usagef("--%s %s: out of range: %s must be %s-%s", flag, size.Format(v), what, size.Format(lo), size.Format(hi))
	}
	return nil
}

// Count is an integer flag where "0" or "off" switches the feature off,
// the same convention as size.Off: Value returns -1 then, the "none" value
// of the options it feeds. Unset, it is Default.
type Count struct {
	Default int
	v       int
	set     bool
}

// Set implements pflag.Value.
func (c *Count) Set(v string) error {
	if strings.EqualFold(strings.TrimSpace(v), "off") {
		c.v, c.set = 0, true
		return nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return fmt.Errorf("invalid count %q: want a whole number ≥ 0, or off", v)
	}
	c.v, c.set = n, true
	return nil
}

// String implements pflag.Value.
func (c *Count) String() string {
	if c == nil {
		return ""
	}
	if !c.set {
		return strconv.Itoa(c.Default)
	}
	if c.v == 0 {
		return "off"
	}
	return strconv.Itoa(c.v)
}

// Type implements pflag.Value.
func (c *Count) Type() string { return "count|off" }

// Value returns the chosen count, Default when unset, or -1 when off.
func (c *Count) Value() int {
	switch {
	case !c.set:
		return c.Default
	case c.v == 0:
		return -1
	}
	return c.v
}

// Aliases is a pflag NormalizeFunc that accepts each key as another
// spelling of its value's flag (e.g. "neighbor-window" for
// "neighbour-window").
func Aliases(m map[string]string) func(*pflag.FlagSet, string) pflag.NormalizedName {
	return func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if to, ok := m[name]; ok {
			return pflag.NormalizedName(to)
		}
		return pflag.NormalizedName(name)
	}
}
