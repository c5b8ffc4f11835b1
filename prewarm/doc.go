// Package prewarm owns the node-side half of a fast GPU cold start: the GPU
// inventory (through NVML), the per-GPU state machine that keeps idle GPUs
// initialised with one small holder process each, the optional warm workers
// handed to a claimer, the model warm workers suspended into host memory
// through the CUDA checkpoint API and resumed per claim, the claim/release
// API served on a unix socket, and the loop that keeps a configured list of
// images warm in the node's block cache. The API's types and client live in
// the pure-Go sub-package prewarm/api, which clients import instead.
//
// NVML and the CUDA driver sit behind small interfaces (GPUs, Driver,
// Checkpointer) so that everything except the cgo glue builds and is tested
// without a GPU; the cgo files carry the build tag "linux && cgo" and have
// pure-Go stubs otherwise.
package prewarm
