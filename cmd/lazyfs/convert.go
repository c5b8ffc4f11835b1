package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc"
)

func newConvertCmd() *cobra.Command {
	var (
		platform  string
		chunkSize sizeFlag = toc.DefaultChunkSize
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
			opts := []convert.Option{
				convert.WithChunkSize(int(chunkSize)),
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
			stderr := cmd.ErrOrStderr()
			if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !asJSON {
				bar := progressbar.NewOptions64(-1, progressbar.OptionSetWriter(stderr), progressbar.OptionShowBytes(true),
					progressbar.OptionSetDescription("converting"), progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
				opts = append(opts, convert.WithProgress(func(p convert.Progress) {
					if p.Phase == "push" {
						bar.Describe("pushing")
					}
					if p.Total > 0 {
						bar.ChangeMax64(p.Total)
					}
					_ = bar.Set64(p.Done)
				}))
				defer bar.Finish()
			}
			rep, err := convert.Image(cmd.Context(), args[0], args[1], opts...)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return printConvertSummary(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "convert only this platform of an index (os/arch[/variant]); default: all")
	f.Var(&chunkSize, "chunk-size", "size files are cut into (e.g. 256KiB, 1MiB)")
	f.IntVar(&level, "level", 3, "zstd compression level (1-19)")
	f.IntVar(&jobs, "jobs", 0, "layers converted at once (default: number of CPUs)")
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
	mbps := float64(s.UncompressedSize) / 1e6 / time.Duration(rep.Duration).Seconds()
	_, err := fmt.Fprintf(w, "converted %s -> %s@%s: %d image(s), %d layer(s), %s of tar, %s -> %s (%.2fx), %.1fs (%.0f MB/s)\n",
		rep.Source, rep.Destination, rep.Digest, len(rep.Images), s.Layers, humanBytes(s.UncompressedSize),
		humanBytes(s.SourceSize), humanBytes(s.Size), ratio, time.Duration(rep.Duration).Seconds(), mbps)
	return err
}
