package main

import (
	"errors"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
)

func newRecordCmd() *cobra.Command {
	var rf runFlags
	var output string
	cmd := &cobra.Command{
		Use:   "record [flags] REF [-- CMD [ARGS...]]",
		Short: "Record an image's start-up profile and attach it to the image",
		Long: `Record runs CMD in REF as lazyfs run does, records the order in which its
files and chunks were first read, and attaches that start-up profile to REF in
its registry as an OCI 1.1 referrer artifact (artifactType
` + profile.MediaType + `) whose subject is the image manifest:
the image, its digest and its signatures do not change. Registries without the
referrers API get the referrers tag fallback. Recording again replaces the
profile. --output FILE writes the profile to FILE instead of pushing it. The
profile is also kept in --profile-dir for this node.

Use --ready-line for servers: the recording ends when the program prints its
ready line.`,
		Example: "  lazyfs record 127.0.0.1:5000/python:3.12-lazy -- python3 -c 'import numpy'\n  lazyfs record --ready-line 'Uvicorn running' REF -- uvicorn app:app",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, runErr, err := recordRun(cmd, args[0], args[1:], &rf)
			if err != nil {
				return err
			}
			if err := recordOutput(cmd, m, p, &rf, output); err != nil {
				return err
			}
			return runErr
		},
	}
	rf.register(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the profile to this file instead of attaching it to the image")
	return cmd
}

// recordRun runs args in ref as lazyfs run does, recording the first-read
// order, and returns the (unmounted) mount and its profile. A command that
// failed after reading files of the image is a warning: its profile is
// kept, and runErr (the command's exit status) is for the caller to return
// last. err is a failure to run or a command that read nothing.
func recordRun(cmd *cobra.Command, ref string, args []string, rf *runFlags) (m *image.Mounted, p *profile.Profile, runErr, err error) {
	m, runErr = runImage(cmd, ref, args, rf, true)
	if m == nil {
		return nil, nil, nil, runErr
	}
	var ee exitError
	if runErr != nil && !errors.As(runErr, &ee) {
		return nil, nil, nil, runErr
	}
	p = m.Recorded()
	if p == nil || len(p.Spans) == 0 {
		return nil, nil, nil, errors.Join(fmt.Errorf("record %s: the command read no file of the image", ref), runErr)
	}
	if runErr != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v; recording what it read anyway\n", runErr)
	}
	return m, p, runErr, nil
}

func recordOutput(cmd *cobra.Command, m *image.Mounted, p *profile.Profile, rf *runFlags, output string) error {
	w := cmd.OutOrStdout()
	if rf.profileDir != "" {
		if s, err := profile.NewStore(rf.profileDir); err == nil {
			_ = s.Save(digest.Digest(m.Image().Digest.String()), p)
		}
	}
	summary := fmt.Sprintf("%d files, %d chunks in %d spans", len(p.Paths()), p.Chunks(), len(p.Spans))
	if output != "" {
		b, err := p.Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(output, b, 0o644); err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "recorded %s of %s into %s\n", summary, m.Image().Ref, output)
		return err
	}
	warnManifestProfile(cmd, m.Image())
	h, err := profile.Push(cmd.Context(), m.Image().Repo, subjectOf(m), p, ggcrOptions(cmd.Context())...)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "recorded %s of %s@%s; attached as %s\n", summary, m.Image().Repo, m.Image().Digest, h)
	return err
}

// warnManifestProfile warns that a referrer pushed for img is not what
// nodes prefetch when img's manifest carries a profile of its own.
func warnManifestProfile(cmd *cobra.Command, img *remote.Image) {
	if img.Manifest == nil {
		return
	}
	if d, ok := img.Manifest.Annotations[toc.AnnotationProfileDigest]; ok {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s's manifest carries a profile (%s, lazyfs convert --record); nodes prefetch that one before any referrer: convert with --record again to replace it\n", img.Ref, d)
	}
}

// subjectOf returns the descriptor of a mounted image's manifest.
func subjectOf(m *image.Mounted) v1.Descriptor {
	return v1.Descriptor{MediaType: m.Image().MediaType, Digest: m.Image().Digest, Size: int64(len(m.Image().RawManifest))}
}
