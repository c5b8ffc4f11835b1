package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/node"
)

func newLsCmd() *cobra.Command {
	var s node.Servers
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List lazyfs mounts: the daemon's (images and snapshot layers) and standalone ones",
		Long: `Ls lists every lazy mount of this machine: those the node daemon serves (merged
images from lazyfs mount, and the per-layer mounts of containerd snapshots) and
those of standalone mount servers, with the image, the layer, the size, the bytes
held by the block cache (LOCAL) and the bytes fetched; for mounts that prefetch,
the chunks of the start-up profile that are local and its source (PROFILE:
"node" learned here, "registry" attached to the image) and the chunks of the
mount that are local with the prefetch's phase (CHUNKS LOCAL: profile, fill,
done or stopped).`,
		Example: "  lazyfs ls\n  lazyfs ls --json | jq -r '.mounts[].dir'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ms, lerr := s.List(cmd.Context())
			if ms == nil {
				ms = []node.ServedMount{}
			}
			if asJSON {
				if err := writeJSON(cmd, lsJSON{Mounts: ms}); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIR\tKIND\tIMAGE\tLAYER\tSIZE\tLOCAL\tFETCHED\tPROFILE\tCHUNKS LOCAL\tSERVER")
				for _, m := range ms {
					if m.Ref == "" {
						m.Ref = "-"
					}
					layer := "-"
					if m.Layer != "" {
						layer = shortDigest(m.Layer)
					}
					server := fmt.Sprintf("pid %d", m.PID)
					if m.Kind == node.KindUnserved {
						server = "none here (stale? lazyfs umount DIR)"
					} else if m.Daemon {
						server = fmt.Sprintf("daemon (pid %d)", m.PID)
					}
					prof, chunks := progressColumns(m.Progress)
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Dir, m.Kind, m.Ref, layer,
						humanBytes(m.Size), humanBytes(m.LocalBytes), humanBytes(m.FetchedBytes), prof, chunks, server)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if lerr != nil {
				return fmt.Errorf("%w: %w", errPartial, lerr)
			}
			return nil
		},
	}
	serversFlags(cmd, &s)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// lsJSON is lazyfs ls --json (docs/cli.md).
type lsJSON struct {
	Mounts []node.ServedMount `json:"mounts"`
}

// progressColumns formats a mount's profile progress ("12/40 node": chunks
// of the profile local, and its source) and its chunks local ("300/1000
// fill"); "-" where the mount prefetches nothing.
func progressColumns(p *node.Progress) (profile, chunks string) {
	if p == nil {
		return "-", "-"
	}
	profile = "-"
	if p.ProfileSource != "" {
		profile = fmt.Sprintf("%d/%d %s", p.ProfileLocal, p.ProfileChunks, p.ProfileSource)
	}
	return profile, fmt.Sprintf("%d/%d %s", p.ImageLocal, p.ImageChunks, p.Phase)
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func writeJSON(cmd *cobra.Command, v any) error {
	return cli.WriteJSON(cmd.OutOrStdout(), v)
}
