// Package bench owns lazyfs's cold-start benchmark harness: workloads (an
// image, a command and a ready condition), the images they run (built locally
// with debootstrap, pushed to a real registry, converted with lazyfs convert),
// a shaped network link between the registry and the node (two network
// namespaces, a veth pair, tbf, an optional latency proxy), the modes that
// start a workload (a full containerd pull, a lazyfs mount, the lazyfs
// snapshotter, stargz), the per-sample protocol (wipe, drop caches, restart
// daemons, measure), and the reports (table, versioned JSON, SVG chart).
//
// The harness measures; it never asserts. Everything it starts lives under a
// temporary directory and in names that carry its process id, and is stopped
// and removed when the run ends or its context is cancelled.
package bench
