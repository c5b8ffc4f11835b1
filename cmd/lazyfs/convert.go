package main

import (
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/size"
)

func newConvertCmd() *cobra.Command {
	var (
		platform  string
		chunkSize sizeFlag = toc.DefaultChunkSize
		libChunk            = size.Off{Default: toc.DefaultLibraryChunkSize}
		level     int
		jobs      int
		insecure  bool
		asJSON    bool
		tempDir   string
		trust     bool
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SRC DST",
		Short: "Convert an image into the lazyfs chunked format and push it",
		Long: `Convert reads the image SRC from its registry, rewrites every layer in the
lazyfs chunked format (still an ordinary tar+zstd OCI layer: any runtime can pull
and run it), and pushes the result to DST. Config, history, labels and platform
are unchanged. All platforms of an index are converted unless --platform picks one.

Credentials come from the Docker config (~/.docker/config.json). Registries on
localhost or 127.0.0.1 are reached over plain HTTP; --insecure allows it for any.`,
		Example: "  lazyfs convert docker.io/library/python:3.12 registry.example.com/python:3.12-lazy",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validateConvert(int64(chunkSize), libChunk.Bytes(), level, jobs); err != nil {
				return err
			}
			if err := cli.PushError(args[1], convert.CheckPush(cmd.Context(), args[1], insecure, nil)); err != nil {
				return err
			}
			opts := []convert.Option{
				convert.WithChunkSize(int(chunkSize)),
				convert.WithLibraryChunkSize(int(libChunk.Bytes())),
				convert.WithLevel(zstd.EncoderLevelFromZstd(level)),
				convert.WithInsecure(insecure),
				convert.WithTempDir(tempDir),
				convert.WithTrustChunked(trust),
			}
			if jobs > 0 {
				opts = append(opts, convert.WithJobs(jobs))
			}
			if platform != "" {
				p, err := v1.ParsePlatform(platform)
				if err != nil {
					return fmt.Errorf("--platform %q: %w", platform, err)
				}
				opts = append(opts, convert.WithPlatform(p))
			}
			var bar *cli.Progress // nil unless stderr is a terminal
			if f, ok := cmd.ErrOrStderr().(*os.File); ok && term.IsTerminal(int(f.Fd())) && !asJSON {
				bar = cli.NewProgress(f)
				opts = append(opts, convert.WithProgress(func(p convert.Progress) {
					phase := "converting"
					if p.Phase == "push" {
						phase = "pushing"
					}
					bar.Update(phase, p.Done, p.Total)
				}))
			}
			rep, err := convert.Image(cmd.Context(), args[0], args[1], opts...)
			bar.Finish() // clear the line before the summary or the error
			if err != nil {
				return cli.RegistryError(args[0], err)
			}
			if asJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), rep)
			}
			return printConvertSummary(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "convert only this platform of an index (os/arch[/variant]); default: all")
	f.Var(&chunkSize, "chunk-size", fmt.Sprintf("size files are cut into, %s-%s", size.Format(toc.MinChunkSize), size.Format(toc.MaxChunkSize)))
	f.Var(&libChunk, "library-chunk-size", fmt.Sprintf("size shared libraries (*.so, *.so.*) are cut into, %s-%s, at most --chunk-size (off: --chunk-size)", size.Format(toc.MinChunkSize), size.Format(toc.MaxChunkSize)))
	f.IntVar(&level, "level", 3, fmt.Sprintf("zstd compression level (%d-%d)", minLevel, maxLevel))
	f.IntVar(&jobs, "jobs", 0, fmt.Sprintf("layers converted at once, 1-%d (0: number of CPUs)", maxJobs))
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to any registry")
	f.BoolVar(&asJSON, "json", false, "print a machine-readable summary")
	f.StringVar(&tempDir, "temp-dir", "", "where converted layers are staged before the push (default $TMPDIR)")
	f.BoolVar(&trust, "trust-chunked", false, "keep layers already in the lazyfs format without verifying their TOC against their tar")
	return cmd
}

func printConvertSummary(w io.Writer, rep *convert.Report) error {
	var verified, trusted int
	for _, ir := range rep.Images {
		for _, l := range ir.Layers {
			switch l.KeptTOC {
			case "verified":
				verified++
			case "trusted":
				trusted++
			}
		}
	}
	if verified+trusted > 0 {
		if _, err := fmt.Fprintf(w, "kept %d already-chunked layer(s): %d verified against their tar, %d trusted (--trust-chunked)\n",
			verified+trusted, verified, trusted); err != nil {
			return err
		}
	}
	if rep.AlreadyConverted {
		_, err := fmt.Fprintf(w, "%s is already a lazyfs image: nothing to convert (%s@%s)\n", rep.Source, rep.Destination, rep.Digest)
		return err
	}
	s := rep.Stats
	ratio := 0.0
	if s.SourceSize > 0 {
		ratio = float64(s.Size) / float64(s.SourceSize)
	}
	secs := time.Duration(rep.Duration).Seconds()
	// The rate is source bytes per second, as the progress line's.
	_, err := fmt.Fprintf(w, "converted %s -> %s@%s: %d image(s), %d layer(s), %s of tar, %s -> %s (%.2fx), %.1fs (%s/s)\n",
		rep.Source, rep.Destination, rep.Digest, len(rep.Images), s.Layers, humanBytes(s.UncompressedSize),
		humanBytes(s.SourceSize), humanBytes(s.Size), ratio, secs, humanBytes(int64(float64(s.SourceSize)/max(secs, 1e-3))))
	return err
}
