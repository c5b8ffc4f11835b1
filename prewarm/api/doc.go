// Package api is the small, pure-Go half of the GPU pre-warm daemon that a
// client needs: the JSON types of the claim/release API, its sentinel
// errors and their wire codes, and the Client that talks to the daemon's
// unix socket. It links neither NVML nor cgo, so the lazyfs CLI imports it
// while the daemon (package prewarm) keeps the driver code.
package api
