package main

import (
	"context"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
)

func newCleanupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what nodecreds wrote on this node and restore what it displaced",
		Long: `Remove every entry nodecreds owns from the target files, put back the entries
it displaced, and delete files it created that hold nothing else. Without
--target, the containerd hosts.toml headers it wrote are restored too (a
file it created is removed when it holds nothing else). Stop the agent
first (delete the DaemonSet), or it writes its entries again.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCleanup(cmd.Flags())
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log, cmd.ErrOrStderr()).WithField("component", "cleanup")
			files := nodefile.New(nodefile.Options{HostRoot: cfg.HostRoot, StateDir: cfg.StateDir})
			results, err := files.Cleanup(cmd.Context(), cfg.Targets)
			if err != nil {
				return err
			}
			failed := false
			for _, r := range results {
				l := log.WithFields(logrus.Fields{"target": r.Target, "path": r.Path})
				if len(r.Restored) > 0 {
					l = l.WithField("restored", dockercfg.SafeKeys(r.Restored))
				}
				switch {
				case r.Err != nil:
					failed = true
					l.WithError(r.Err).Error("cleanup failed")
				case r.Removed:
					l.Info("removed the file nodecreds had created")
				case r.Changed:
					l.Info("removed nodecreds' entries")
				default:
					l.Info("nothing of nodecreds' left")
				}
			}
			if len(cfg.Targets) == 0 {
				// Every target: the containerd hosts.toml headers too.
				ok, err := cleanupHostsTOML(cmd.Context(), files, log)
				if err != nil {
					return err
				}
				failed = failed || !ok
			}
			if failed {
				return errFailed
			}
			return nil
		},
	}
	config.CleanupFlags(cmd.Flags())
	return cmd
}

// cleanupHostsTOML restores the containerd hosts.toml files nodecreds
// recorded; ok is false when one could not be.
func cleanupHostsTOML(ctx context.Context, files *nodefile.Engine, log *logrus.Entry) (ok bool, err error) {
	results, err := runtimeauth.Cleanup(ctx, files)
	if err != nil {
		return false, err
	}
	ok = true
	for _, r := range results {
		l := log.WithField("hostsToml", r.Path)
		switch {
		case r.Err != nil:
			ok = false
			l.WithError(r.Err).Error("cleanup failed")
		case r.Warning != "":
			ok = false
			l.Error(r.Warning)
		case r.Removed:
			l.Info("removed the hosts.toml nodecreds had created")
		case r.Changed:
			l.Info("restored the hosts.toml headers nodecreds had changed")
		default:
			l.Info("nothing of nodecreds' left")
		}
		if r.Note != "" {
			l.Info(r.Note)
		}
	}
	return ok, nil
}
