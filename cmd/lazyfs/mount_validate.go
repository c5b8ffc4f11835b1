package main

import (
	"github.com/lazyfs/lazyfs/internal/cli"
)

// validate checks mount's flags before anything is resolved or spawned.
func (mf *mountFlags) validate() error {
	if mf.fill && mf.noFill {
		return cli.Usagef("--fill and --no-fill contradict each other: give one")
	}
	if err := mf.imageFlags.validate(); err != nil {
		return err
	}
	return mf.fetch.validate()
}
