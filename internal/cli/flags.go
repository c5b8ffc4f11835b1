package cli

import (
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/internal/size"
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
