package main

import (
	"encoding/json"
	"io"

	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/config"
)

func newCheckCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Say whether this node can pull the given images, as the kubelet would resolve credentials",
		Long: `Resolve credentials exactly as the kubelet does (the first config.json that
parses in its search order, then its key matching) for each --image and
--registry. With --probe, also log in to each registry's /v2/ with the
credentials found (basic and bearer-token flows) and report the registry's
answer. Exit 0 when all have credentials (and every login succeeded), 1
otherwise, 2 on bad usage. Usernames are shown; passwords and auth strings
never are.

With --runtime containerd, also say what containerd itself would send for
each image (and with --sandbox its sandbox image, which the kubelet never
pulls): the hosts.toml it reads (config_path, its imports followed, the
folder spellings host_port_, host:port and _default), each host it tries
in order (mirrors, then the server) with whether an Authorization header
is there, a Basic one's username and whether nodecreds wrote it, and what
in containerd's configuration or release keeps it from using the headers,
with the fix. With --probe, each host's challenge is asked for without
credentials. Header values are never shown.

Use it as a node bootstrap gate or an init step:
  nodecreds check --image registry.example.com/team/app:v1 --probe || exit 1`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCheck(cmd.Flags())
			if err != nil {
				return err
			}
			opts := check.Options{
				HostRoot:       cfg.HostRoot,
				KubeletRootDir: cfg.KubeletRootDir,
				Images:         cfg.Images,
				Registries:     cfg.Registries,
			}
			if cfg.Probe {
				opts.Prober = check.RegistryProber{Timeout: cfg.Timeout}
			}
			if cfg.Runtime != "" {
				opts.Runtime = runtimeOptions(cfg)
			}
			rep := check.Run(cmd.Context(), opts)
			if cfg.Output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				err = enc.Encode(rep)
			} else {
				err = rep.WriteTable(stdout)
			}
			if err != nil {
				return err
			}
			if !rep.OK {
				return errFailed
			}
			return nil
		},
	}
	config.CheckFlags(cmd.Flags())
	return cmd
}

// runtimeOptions are check's runtime settings.
func runtimeOptions(cfg config.Check) *check.RuntimeOptions {
	ro := &check.RuntimeOptions{
		CertsDir:   cfg.ContainerdCertsDir,
		ConfigFile: cfg.ContainerdConfig,
		StateDir:   cfg.StateDir,
		Version:    cfg.RuntimeVersion,
		Sandbox:    cfg.Sandbox,
	}
	if cfg.Probe {
		ro.Challenger = check.RegistryProber{Timeout: cfg.Timeout}
	}
	return ro
}
