package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/lazyfs/lazyfs/internal/cli"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

func newPullCmd() *cobra.Command {
	var (
		address, namespace, snapshotter, platform string
		hostsDir                                  string
		plainHTTP, asJSON                         bool
		timeout                                   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "pull [flags] REF",
		Short: "Pull an image into containerd for the lazyfs snapshotter",
		Long: `Pull fetches REF into containerd and unpacks it with the lazyfs snapshotter,
passing the labels that let it mount lazyfs layers lazily instead of
downloading them (containerd 1.6's ctr pull does not pass them). Afterwards
'ctr run --snapshotter lazyfs REF ...' starts containers from it. Layers that
are not lazyfs layers are downloaded and unpacked as by a normal pull.
Registries on localhost and loopback addresses are reached over plain HTTP.

Credentials come from the Docker config, as for docker, nerdctl and crane:
$DOCKER_CONFIG/config.json or ~/.docker/config.json, with its credential
helpers (docker login, nerdctl login, crane auth login write it). Give
--hosts-dir the directory the daemon's hosts_dir names (containerd's
certs.d layout) to pull through the same mirrors.`,
		Example: "  lazyfs pull 127.0.0.1:5000/python:3.12-lazy\n  DOCKER_CONFIG=/root/.docker lazyfs pull --hosts-dir /etc/containerd/certs.d registry.example.com/ml/torch:1.13-lazy\n  ctr run --rm --snapshotter lazyfs 127.0.0.1:5000/python:3.12-lazy py python3 -V",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := pull.Pull(cmd.Context(), args[0],
				pull.WithAddress(address), pull.WithNamespace(namespace),
				pull.WithSnapshotter(snapshotter), pull.WithPlainHTTP(plainHTTP),
				pull.WithPlatform(platform), pull.WithTimeout(timeout), pull.WithHostsDir(hostsDir))
			if err != nil {
				return cli.RegistryError(args[0], err)
			}
			if asJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), r)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", r.Name, r.Digest)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", pull.DefaultAddress, "containerd's gRPC socket")
	f.StringVarP(&namespace, "namespace", "n", pull.DefaultNamespace, "containerd namespace")
	f.StringVar(&snapshotter, "snapshotter", pull.DefaultSnapshotter, "snapshotter to unpack into")
	f.StringVar(&platform, "platform", "", "platform to pull from an index (default: this machine's)")
	f.StringVar(&hostsDir, "hosts-dir", "", "containerd-style hosts.toml directory for registry mirrors (the daemon's hosts_dir)")
	f.BoolVar(&plainHTTP, "plain-http", false, "use plain HTTP for every registry")
	f.DurationVar(&timeout, "timeout", pull.DefaultTimeout, "give up the pull after this long")
	f.BoolVar(&asJSON, "json", false, "print the image's name, digest and size as JSON (docs/cli.md)")
	return cmd
}
