package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/version"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the lazyfs version, commit and Go version (same as --version)",
		Example: "  lazyfs version\n  lazyfs --version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String("lazyfs"))
			return err
		},
	}
}
