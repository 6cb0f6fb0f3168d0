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
--registry. Exit 0 when all have credentials, 1 when any lacks them, 2 on bad
usage. Usernames are shown; passwords and auth strings never are.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCheck(cmd.Flags())
			if err != nil {
				return err
			}
			rep := check.Run(cmd.Context(), check.Options{
				HostRoot:       cfg.HostRoot,
				KubeletRootDir: cfg.KubeletRootDir,
				Images:         cfg.Images,
				Registries:     cfg.Registries,
			})
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
