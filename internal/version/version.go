// Package version holds the build's version and commit, set by the Makefile
// with -ldflags, and the one line every lazyfs binary prints for --version.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is the lazyfs release, overridden at link time:
// -ldflags "-X github.com/lazyfs/lazyfs/internal/version.Version=v0.1.0".
var Version = "dev"

// Commit is the source commit, overridden at link time
// (-X github.com/lazyfs/lazyfs/internal/version.Commit=...); when empty, Go's
// embedded VCS stamp is used.
var Commit string

// Info is the build's identity, as `lazyfs version --json` prints it.
type Info struct {
	Binary    string `json:"binary"`
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns binary's Info: the commit from -ldflags or else Go's VCS
// stamp (with -dirty for a modified tree), "unknown" without either.
func Get(binary string) Info {
	commit, dirty := Commit, ""
	if bi, ok := debug.ReadBuildInfo(); ok && commit == "" {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && s.Value != "":
				commit = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
	}
	if commit == "" {
		commit = "unknown"
	}
	return Info{Binary: binary, Version: Version, Commit: commit + dirty, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}

// String is what `BINARY --version` prints: the release, the commit (with
// -dirty for a modified tree when Go stamped it), the Go version and the
// platform, e.g. "lazyfs v0.3.0 (commit 1a2b3c4d5e6f, go1.26.0, linux/amd64)".
func String(binary string) string {
	i := Get(binary)
	return fmt.Sprintf("%s %s (commit %s, %s, %s)", i.Binary, i.Version, i.Commit, i.GoVersion, i.Platform)
}
