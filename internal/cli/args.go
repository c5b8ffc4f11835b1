package cli

import (
	"github.com/spf13/cobra"
)

// FlagError is a cobra FlagErrorFunc: a bad flag exits ExitUsage with the
// usage line.
func FlagError(cmd *cobra.Command, err error) error {
	return Usagef("%s%v; usage: %s", where(cmd), err, cmd.UseLine())
}

// where names a subcommand in an error ("lazyfs mount: "); the root's name
// is already the prefix main prints.
func where(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return ""
	}
	return cmd.CommandPath() + ": "
}

// Harden makes argument and flag errors of cmd and all its subcommands say
// how to call the command: a wrong argument count or a bad flag becomes a
// UsageError (exit ExitUsage) whose one line ends with the usage line,
// "lazyfs mount: accepts 2 arg(s), received 1; usage: lazyfs mount [flags] REF DIR".
// Call it once on the root command after adding every subcommand.
func Harden(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(FlagError)
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return Usagef("%s%v; usage: %s", where(c), err, c.UseLine())
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		Harden(c)
	}
}
