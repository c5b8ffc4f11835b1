package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/version"
)

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the lazyfs version, commit and Go version (same as --version)",
		Example: "  lazyfs version\n  lazyfs version --json | jq -r .commit",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), version.Get("lazyfs"))
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String("lazyfs"))
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print binary, version, commit, goVersion and platform as JSON")
	return cmd
}
