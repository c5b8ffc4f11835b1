package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/lazyfs/lazyfs/internal/version"
)

// commit is set by the Makefile (-X main.commit=...).
var commit string

// versionString is what --version prints: the release and the commit (set
// by the Makefile; the commit falls back to Go's embedded VCS stamp), the
// Go version and the platform.
func versionString() string {
	commit, dirty := commit, ""
	if commit == "" {
		commit = "unknown"
	}
	if bi, ok := debug.ReadBuildInfo(); ok && commit == "unknown" {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && s.Value != "":
				commit = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
	}
	return fmt.Sprintf("lazyfs-prewarm %s (commit %s%s, %s, %s/%s)", version.Version, commit, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
