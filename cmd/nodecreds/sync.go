package main

import (
	"context"
	"errors"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/daemon"
)

func newSyncCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Run the agent: keep this node's credential files in sync with the sources",
		Long: `Run the agent (the DaemonSet's command). It merges the registry credentials of
the source Secrets into each --target file, keeps them there (drift is corrected
within about a second) and follows every change of the sources. Stopping it
never removes anything; 'nodecreds cleanup' does.

Every flag can also be set as NODECREDS_<FLAG> (dashes as underscores) or in
the YAML file named by --config.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadSync(cmd.Flags())
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log, cmd.ErrOrStderr())
			return runSync(cmd.Context(), cfg, log)
		},
	}
	config.SyncFlags(cmd.Flags())
	return cmd
}

// runSync builds the daemon (internal/daemon) and runs it: once, or until
// ctx ends.
func runSync(ctx context.Context, cfg config.Sync, log *logrus.Logger) error {
	deps := daemon.Deps{Log: log, Version: version}
	if cfg.Source == config.SourceSecret {
		routeKlog(log)
		var err error
		if deps.Client, err = newClient(kubeTarget{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context}, true); err != nil {
			return err
		}
	}
	d, err := daemon.New(ctx, cfg, deps)
	if err != nil {
		return err
	}
	if !cfg.Once {
		return d.Run(ctx)
	}
	if err := d.Once(ctx); err != nil {
		if errors.Is(err, daemon.ErrFailed) {
			return errFailed
		}
		return err
	}
	return nil
}
