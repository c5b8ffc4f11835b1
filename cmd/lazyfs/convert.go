package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/profile"
	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/internal/size"
)

func newConvertCmd() *cobra.Command {
	var (
		platform  string
		chunkSize sizeFlag = toc.DefaultChunkSize
		libChunk           = size.Off{Default: toc.DefaultLibraryChunkSize}
		level     int
		startLvl  int
		jobs      int
		insecure  bool
		asJSON    bool
		tempDir   string
		trust     bool
		record    bool
		rf        runFlags
		// recordFlags are the flags convert takes from lazyfs record.
		recordFlags []string
	)
	cmd := &cobra.Command{
		Use:   "convert [flags] SRC DST [-- CMD [ARGS...]]",
		Short: "Convert an image into the lazyfs chunked format and push it",
		Long: `Convert reads the image SRC from its registry, rewrites every layer in the
lazyfs chunked format (still an ordinary tar+zstd OCI layer: any runtime can pull
and run it), and pushes the result to DST. Config, history, labels and platform
are unchanged. All platforms of an index are converted unless --platform picks one.

With --record, the converted image is first pushed by digest only; CMD then
runs in it as lazyfs record runs it (the record flags below apply: --cache-dir,
--timeout, --ready-line, ...; --platform picks the image to run, default this
machine's), and the recorded start-up profile is written into the converted
image manifest (annotations naming a profile blob, docs/format.md section 8)
before DST is tagged: the image DST names carries the profile, and nodes
prefetch it on its first cold start. If the recording fails, DST is left as it
was. Without CMD, the image's entrypoint and cmd run.

Credentials come from the Docker config (~/.docker/config.json). Registries on
localhost or 127.0.0.1 are reached over plain HTTP; --insecure allows it for any.`,
		Example: "  lazyfs convert docker.io/library/python:3.12 registry.example.com/python:3.12-lazy\n" +
			"  lazyfs convert --record SRC registry.example.com/python:3.12-lazy -- python3 -c 'import numpy'",
		Args: func(cmd *cobra.Command, args []string) error {
			if !record {
				if cmd.ArgsLenAtDash() >= 0 || len(args) != 2 {
					return cli.Usagef("accepts SRC DST (a command after -- needs --record), received %d arg(s)", len(args))
				}
				return nil
			}
			if len(args) < 2 || cmd.ArgsLenAtDash() >= 0 && cmd.ArgsLenAtDash() != 2 {
				return cli.Usagef("--record takes SRC DST [-- CMD [ARGS...]], received %d arg(s) before --", max(cmd.ArgsLenAtDash(), len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validateConvert(int64(chunkSize), libChunk.Bytes(), level, startLvl, jobs); err != nil {
				return err
			}
			var dstTag name.Tag
			if record {
				ref, err := convert.ParseReference(args[1], insecure)
				if err != nil {
					return err
				}
				t, ok := ref.(name.Tag)
				if !ok {
					return cli.Usagef("--record: DST %s must be a tag: the recorded profile changes the manifest's digest", args[1])
				}
				dstTag = t
				if err := rf.validate(); err != nil {
					return err
				}
				rf.platform, rf.insecure = platform, insecure
				if asJSON {
					rf.stdout = cmd.ErrOrStderr()
				}
			} else {
				for _, n := range recordFlags {
					if cmd.Flags().Changed(n) {
						return cli.Usagef("--%s is a flag of --record", n)
					}
				}
			}
			if err := cli.PushError(args[1], convert.CheckPush(cmd.Context(), args[1], insecure, nil)); err != nil {
				return err
			}
			opts := []convert.Option{
				convert.WithChunkSize(int(chunkSize)),
				convert.WithLibraryChunkSize(int(libChunk.Bytes())),
				convert.WithLevel(zstd.EncoderLevelFromZstd(level)),
				convert.WithStartupLevel(zstd.EncoderLevelFromZstd(startLvl)),
				convert.WithInsecure(insecure),
				convert.WithTempDir(tempDir),
				convert.WithTrustChunked(trust),
			}
			if jobs > 0 {
				opts = append(opts, convert.WithJobs(jobs))
			}
			if record {
				opts = append(opts, convert.WithPushByDigest(true))
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
			out := convertJSON{Report: rep}
			var runErr error
			if record {
				if out.Profile, runErr, err = convertRecord(cmd, rep, dstTag, args[2:], &rf); err != nil {
					return err
				}
			}
			if asJSON {
				if err := cli.WriteJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
				return runErr
			}
			if err := printConvertSummary(cmd.OutOrStdout(), rep); err != nil {
				return err
			}
			if p := out.Profile; p != nil {
				if _, err := fmt.Fprintf(cmd.OutOrStdout(), "recorded %d files, %d chunks in %d spans; the manifest %s carries the profile %s\n",
					p.Files, p.Chunks, p.Spans, p.Manifest, p.Blob); err != nil {
					return err
				}
			}
			return runErr
		},
	}
	f := cmd.Flags()
	f.StringVar(&platform, "platform", "", "convert only this platform of an index (os/arch[/variant]); default: all")
	f.Var(&chunkSize, "chunk-size", fmt.Sprintf("size files are cut into, %s-%s", size.Format(toc.MinChunkSize), size.Format(toc.MaxChunkSize)))
	f.Var(&libChunk, "library-chunk-size", fmt.Sprintf("size shared libraries (*.so, *.so.*) are cut into, %s-%s, at most --chunk-size (off: --chunk-size)", size.Format(toc.MinChunkSize), size.Format(toc.MaxChunkSize)))
	f.IntVar(&level, "level", 3, fmt.Sprintf("zstd compression level (%d-%d) of big data files", minLevel, maxLevel))
	f.IntVar(&startLvl, "startup-level", 11, fmt.Sprintf("zstd compression level (%d-%d) of shared libraries and files of one chunk, the bytes start-ups read", minLevel, maxLevel))
	f.IntVar(&jobs, "jobs", 0, fmt.Sprintf("layers converted at once, 1-%d (0: number of CPUs)", maxJobs))
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to any registry")
	f.BoolVar(&asJSON, "json", false, "print a machine-readable summary")
	f.StringVar(&tempDir, "temp-dir", "", "where converted layers are staged before the push (default $TMPDIR)")
	f.BoolVar(&trust, "trust-chunked", false, "keep layers already in the lazyfs format without verifying their TOC against their tar")
	f.BoolVar(&record, "record", false, "run CMD in the converted image, record its start-up profile and write it into the manifest before tagging DST")
	// The record flags, but for --platform and --insecure, which convert
	// has, and those that mean nothing for a freshly converted image (it is
	// chunked, no profile of it exists, fill is not what a recording wants).
	rs := pflag.NewFlagSet("record", pflag.ContinueOnError)
	rf.register(rs)
	rs.VisitAll(func(fl *pflag.Flag) {
		switch fl.Name {
		case "pull", "no-profile", "fill":
			return
		}
		if f.Lookup(fl.Name) == nil {
			fl.Usage = "(--record) " + fl.Usage
			recordFlags = append(recordFlags, fl.Name)
			f.AddFlag(fl)
		}
	})
	f.SetNormalizeFunc(fsAliases) // --neighbor-window, as record has it
	return cmd
}

// convertJSON is lazyfs convert --json: the conversion report, with the
// recorded profile for --record (Digest is then DST's new digest).
type convertJSON struct {
	*convert.Report
	Profile *convertProfile `json:"profile,omitempty"`
}

// convertProfile is the profile convert --record wrote into the manifest.
type convertProfile struct {
	// Manifest is the image manifest carrying it; Recorded the one it was
	// recorded on (same layers, no tag).
	Manifest string `json:"manifest"`
	Recorded string `json:"recordedOn"`
	Blob     string `json:"blob"`
	Size     int64  `json:"size"`
	Files    int    `json:"files"`
	Chunks   int    `json:"chunks"`
	Spans    int    `json:"spans"`
	// Referrer is its referrer artifact, if the registry took one.
	Referrer string `json:"referrer,omitempty"`
}

// convertRecord runs the recording of convert --record against the image
// pushed by digest, writes the profile into its manifest and tags DST.
// runErr is the command's exit status when it failed after reading files.
func convertRecord(cmd *cobra.Command, rep *convert.Report, dst name.Tag, args []string, rf *runFlags) (_ *convertProfile, runErr, err error) {
	pushed := dst.Context().Digest(rep.Digest).String()
	untagged := func(err error) error {
		return fmt.Errorf("%w (the converted image is in the registry as %s; %s was not tagged)", err, pushed, dst)
	}
	m, p, runErr, err := recordRun(cmd, pushed, args, rf)
	if err != nil {
		return nil, nil, untagged(err)
	}
	img := m.Image()
	e, err := profile.Embed(cmd.Context(), dst, img.Digest, img.IndexDigest, p, ggcrOptions(cmd.Context())...)
	if err != nil {
		return nil, nil, untagged(err)
	}
	if e.ReferrerErr != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: the profile is in the manifest, but the registry took no referrer artifact of it (%v): its blob may not survive the registry's garbage collection\n", e.ReferrerErr)
	}
	for i := range rep.Images {
		if rep.Images[i].Digest == img.Digest.String() {
			rep.Images[i].Digest = e.Manifest.Digest.String()
		}
	}
	rep.Digest, rep.Destination = e.Top.Digest.String(), dst.String()
	cp := &convertProfile{Manifest: e.Manifest.Digest.String(), Recorded: img.Digest.String(), Blob: e.Blob.Digest.String(), Size: e.Blob.Size,
		Files: len(p.Paths()), Chunks: p.Chunks(), Spans: len(p.Spans)}
	if e.ReferrerErr == nil {
		cp.Referrer = e.Referrer.String()
	}
	return cp, runErr, nil
}

func printConvertSummary(w io.Writer, rep *convert.Report) error {
	var verified, trusted, foreign, artifacts int
	for _, ir := range rep.Images {
		tarLayers := false
		for _, l := range ir.Layers {
			switch l.KeptTOC {
			case "verified":
				verified++
			case "trusted":
				trusted++
			}
			switch l.Kept {
			case "not distributable":
				foreign++
			case "not a tar layer":
			default:
				tarLayers = true
			}
		}
		if !tarLayers && len(ir.Layers) > 0 {
			artifacts++
		}
	}
	if artifacts > 0 {
		if _, err := fmt.Fprintf(w, "kept %d manifest(s) without tar layers unchanged (build attestations, artifacts; "+
			"an attestation's vnd.docker.reference.digest names the converted image)\n", artifacts); err != nil {
			return err
		}
	}
	if foreign > 0 {
		if _, err := fmt.Fprintf(w, "kept %d non-distributable (foreign) layer(s) as they are: their blobs stay at their URLs, "+
			"outside the registry, and a lazy mount cannot serve them (a runtime that pulls whole can)\n", foreign); err != nil {
			return err
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
