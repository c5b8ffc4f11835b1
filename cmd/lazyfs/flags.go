package main

import "github.com/lazyfs/lazyfs/internal/size"

// sizeFlag is a byte count flag in lazyfs's one size convention (internal/size).
type sizeFlag = size.Size

// humanBytes prints a measured byte count (internal/size.Human).
func humanBytes(n int64) string { return size.Human(n) }
