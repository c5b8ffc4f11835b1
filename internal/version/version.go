// Package version holds the build's version string, set by the Makefile with -ldflags.
package version

// Version is the lazyfs release, overridden at link time:
// -ldflags "-X github.com/lazyfs/lazyfs/internal/version.Version=v0.1.0".
var Version = "dev"
