package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/lazyfs/lazyfs/fs/image"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/remote"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/cli"
)

type inspectReport struct {
	Reference   string `json:"reference"`
	Digest      string `json:"digest"`
	IndexDigest string `json:"indexDigest,omitempty"`
	MediaType   string `json:"mediaType"`
	Platform    string `json:"platform,omitempty"`
	Chunked     bool   `json:"chunked"`
	// Profile is the digest of the image's start-up profile: the blob its
	// manifest names (ProfileIn "manifest", lazyfs convert --record), else
	// the newest referrer artifact (ProfileIn "referrer", lazyfs record).
	Profile   string `json:"profile,omitempty"`
	ProfileIn string `json:"profileIn,omitempty"`
	// ProfileError says why the manifest's profile is unusable (nodes
	// ignore it and use the referrer's, if any).
	ProfileError string `json:"profileError,omitempty"`
	// ProfileFiles and ProfileChunks describe the profile.
	ProfileFiles  int            `json:"profileFiles,omitempty"`
	ProfileChunks int            `json:"profileChunks,omitempty"`
	Layers        []inspectLayer `json:"layers"`
}

type inspectLayer struct {
	Digest           string `json:"digest"`
	MediaType        string `json:"mediaType"`
	Size             int64  `json:"size"`
	Chunked          bool   `json:"chunked"`
	UncompressedSize int64  `json:"uncompressedSize,omitempty"`
	ChunkSize        int64  `json:"chunkSize,omitempty"`
	LibraryChunkSize int64  `json:"libraryChunkSize,omitempty"` // chunk size of shared libraries
	Entries          int    `json:"entries,omitempty"`
	Chunks           int    `json:"chunks,omitempty"`
	TOCSize          int64  `json:"tocSize,omitempty"`
	Error            string `json:"error,omitempty"`
}

func newInspectCmd() *cobra.Command {
	var (
		platform string
		insecure bool
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "inspect [flags] REF",
		Short: "Show whether an image is lazyfs-converted, layer by layer",
		Long: `Inspect resolves REF (for an index, the image of --platform, default this
machine's platform) and prints each layer's media type and size, whether it is
a lazyfs chunked layer, and for chunked layers the entries, chunks and TOC size
read from the layer's verified TOC (one range request per layer). It works on
any image: a plain image is reported as not chunked.`,
		Example: "  lazyfs inspect 127.0.0.1:5000/python:3.12-lazy\n  lazyfs inspect --platform linux/arm64 --json registry.example.com/app:1 | jq .chunked",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p *v1.Platform
			if platform != "" {
				var err error
				if p, err = v1.ParsePlatform(platform); err != nil {
					return fmt.Errorf("--platform %q: %w", platform, err)
				}
			}
			f := remote.New(remote.WithInsecure(insecure), remote.WithUserAgent("lazyfs-inspect"))
			r := image.NewResolver(f, image.ResolverOptions{})
			img, err := r.Resolve(cmd.Context(), args[0], p)
			if err != nil {
				return cli.RegistryError(args[0], err)
			}
			rep := inspectReport{Reference: args[0], Digest: img.Digest.String(), MediaType: string(img.MediaType), Chunked: len(img.Layers) > 0}
			if img.IndexDigest != (v1.Hash{}) {
				rep.IndexDigest = img.IndexDigest.String()
			}
			if img.Platform != nil {
				rep.Platform = img.Platform.String()
			}
			if img.Manifest != nil {
				p, desc, err := profile.FromManifest(cmd.Context(), img.Repo, img.Manifest.Annotations, ggcrOptions(cmd.Context())...)
				switch {
				case err == nil:
					rep.Profile, rep.ProfileIn, rep.ProfileFiles, rep.ProfileChunks = desc.Digest.String(), "manifest", len(p.Paths()), p.Chunks()
				case !errors.Is(err, profile.ErrNotFound):
					rep.ProfileError = err.Error()
				}
			}
			if rep.Profile == "" {
				if p, desc, err := profile.Pull(cmd.Context(), img.Repo, img.Digest, ggcrOptions(cmd.Context())...); err == nil {
					rep.Profile, rep.ProfileIn, rep.ProfileFiles, rep.ProfileChunks = desc.Digest.String(), "referrer", len(p.Paths()), p.Chunks()
				}
			}
			rep.Layers = make([]inspectLayer, len(img.Layers))
			var g errgroup.Group
			g.SetLimit(8)
			for i := range img.Layers {
				l := &img.Layers[i]
				il := &rep.Layers[i]
				*il = inspectLayer{Digest: l.Digest.String(), MediaType: string(l.MediaType), Size: l.Size, Chunked: l.Chunked()}
				if !il.Chunked {
					rep.Chunked = false
					continue
				}
				g.Go(func() error {
					t, err := r.TOC(cmd.Context(), img, i)
					if err != nil {
						il.Error = err.Error()
						return err // names the image and layer
					}
					loc, _, _ := toc.LocationFromAnnotations(l.Annotations)
					il.UncompressedSize, il.ChunkSize, il.LibraryChunkSize, il.Entries, il.Chunks, il.TOCSize = t.TarSize, t.ChunkSize, t.LibraryChunkSize, len(t.Entries), len(t.Chunks), loc.Length
					return nil
				})
			}
			gerr := g.Wait()
			if asJSON {
				if err := writeJSON(cmd, rep); err != nil {
					return err
				}
			} else if err := printInspect(cmd.OutOrStdout(), &rep); err != nil {
				return err
			}
			return gerr
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "platform to pick from an index (os/arch[/variant]); default: this machine's")
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to any registry")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printInspect(w io.Writer, rep *inspectReport) error {
	fmt.Fprintf(w, "image:     %s\ndigest:    %s\n", rep.Reference, rep.Digest)
	if rep.IndexDigest != "" {
		fmt.Fprintf(w, "index:     %s (platform %s)\n", rep.IndexDigest, rep.Platform)
	}
	state := "no: layers are fetched whole (convert it with: lazyfs convert SRC DST)"
	if rep.Chunked {
		state = "yes: every layer is chunked"
	}
	fmt.Fprintf(w, "lazyfs:    %s\n", state)
	profile := "none"
	if rep.Profile != "" {
		profile = rep.Profile
	}
	if rep.ProfileIn != "" {
		profile += fmt.Sprintf(" (%s: %d files, %d chunks)", rep.ProfileIn, rep.ProfileFiles, rep.ProfileChunks)
	}
	fmt.Fprintf(w, "profile:   %s\n", profile)
	if rep.ProfileError != "" {
		fmt.Fprintf(w, "           the manifest's profile is ignored: %s\n", rep.ProfileError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDIGEST\tMEDIA TYPE\tSIZE\tCHUNKED\tTAR\tENTRIES\tCHUNKS\tTOC")
	for i, l := range rep.Layers {
		short := l.Digest
		if len(short) > 19 {
			short = short[:19]
		}
		if !l.Chunked {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\tno\t-\t-\t-\t-\n", i, short, l.MediaType, humanBytes(l.Size))
			continue
		}
		if l.Error != "" {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\tbroken\t%s\n", i, short, l.MediaType, humanBytes(l.Size), l.Error)
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\tyes\t%s\t%d\t%d\t%s\n", i, short, l.MediaType, humanBytes(l.Size),
			humanBytes(l.UncompressedSize), l.Entries, l.Chunks, humanBytes(l.TOCSize))
	}
	return tw.Flush()
}
