package main

import (
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
)

func newProfileCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "profile",
		Short: "Publish start-up profiles learned on this node",
	}
	cmd.AddCommand(newProfilePushCmd())
	return cmd
}

func newProfilePushCmd() *cobra.Command {
	var (
		profileDir string
		file       string
		insecure   bool
		platform   string
	)
	cmd := &cobra.Command{
		Use:   "push [flags] REF",
		Short: "Attach the profile learned on this node (or --file) to REF in its registry",
		Long: `Push attaches a start-up profile to REF as an OCI 1.1 referrer artifact
whose subject is the image manifest, as lazyfs record does; the image's digest
does not change. The profile is the one this node learned for REF's digest
(--profile-dir, written by lazyfs run and by mounts with a profile store), or
the one in --file.`,
		Example: "  lazyfs profile push 127.0.0.1:5000/python:3.12-lazy\n  lazyfs profile push --file numpy.profile.json REF",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p *v1.Platform
			if platform != "" {
				var err error
				if p, err = v1.ParsePlatform(platform); err != nil {
					return fmt.Errorf("--platform %q: %w", platform, err)
				}
			}
			f := remote.New(remote.WithInsecure(insecure), remote.WithUserAgent("lazyfs-profile"))
			defer f.Close()
			img, err := f.Resolve(cmd.Context(), args[0], p)
			if err != nil {
				return err
			}
			var prof *profile.Profile
			if file != "" {
				fh, err := os.Open(file)
				if err != nil {
					return err
				}
				prof, err = profile.Read(fh)
				fh.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
			} else {
				s, err := profile.NewStore(profileDir)
				if err != nil {
					return err
				}
				if prof, err = s.Load(digest.Digest(img.Digest.String())); err != nil {
					return err
				}
			}
			warnManifestProfile(cmd, img)
			subject := v1.Descriptor{MediaType: img.MediaType, Digest: img.Digest, Size: int64(len(img.RawManifest))}
			h, err := profile.Push(cmd.Context(), img.Repo, subject, prof, ggcrOptions(cmd.Context())...)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "attached a profile of %d files, %d chunks to %s@%s as %s\n",
				len(prof.Paths()), prof.Chunks(), img.Repo, img.Digest, h)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&profileDir, "profile-dir", defaultProfileDir, "profiles learned on this node")
	f.StringVar(&file, "file", "", "push this profile file instead of the node's")
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to any registry")
	f.StringVar(&platform, "platform", "", "platform to pick from an index (default: this machine's)")
	return cmd
}
