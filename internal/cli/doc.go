// Package cli holds what every lazyfs command shares beyond its flags: flag
// validation that names the flag and the allowed range, checks that run
// before any work (mount point, privileges), the mapping of registry and
// daemon errors to one line that says what happened and what to do, exit
// statuses, and the versioned JSON envelope. Commands in cmd/ only wire it.
package cli
