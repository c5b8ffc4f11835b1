package main

import "github.com/lazyfs/lazyfs/internal/version"

// versionString is what --version prints (internal/version.String).
func versionString() string { return version.String("lazyfs-prewarm") }
