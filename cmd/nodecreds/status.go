package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/rollout"
)

func newStatusCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which nodes have applied the current revision of the source Secrets",
		Long: `Show, per node, the revision of the source Secrets it has applied, whether that
is the current one, when, and the agent's last message. A Secret with the
nodecreds.io/node-selector annotation counts only for the nodes whose labels
match it, so each node is compared with its own set. Only the nodes of one
pool count: the default DaemonSet's, or with --pool those of that pool of
the chart (give the pool's Secrets too). Secrets annotated
nodecreds.io/expires-at are listed with their expiry, earliest first, and
the time left or "expired". With --wait, wait until
every node has applied its current revision: exit 0 then, or 1 at --timeout,
naming the nodes that lag and the Secrets they wait for.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadStatus(cmd.Flags())
			if err != nil {
				return err
			}
			routeKlog(newLogger(cfg.Log, cmd.ErrOrStderr()))
			client, err := newClient(kubeTarget{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context}, false)
			if err != nil {
				return err
			}
			opts := rollout.Options{Namespace: cfg.Namespace, Secrets: cfg.Secrets, Selector: cfg.Selector, Pool: cfg.Pool}
			var st rollout.Rollout
			if cfg.Wait {
				st, err = rollout.Wait(cmd.Context(), client, opts, cfg.Timeout, time.Second)
			} else {
				st, err = rollout.Get(cmd.Context(), client, opts)
			}
			if err != nil {
				return err
			}
			if cfg.Output == "json" {
				err = st.WriteJSON(stdout)
			} else {
				err = st.WriteTable(stdout)
			}
			if err != nil {
				return err
			}
			if cfg.Wait && !st.InSync {
				if len(st.Nodes) == 0 {
					return fmt.Errorf("no nodes found within %s", cfg.Timeout)
				}
				return fmt.Errorf("not every node applied the Secrets meant for it within %s; lagging: %s", cfg.Timeout, st.LaggingSummary())
			}
			return nil
		},
	}
	config.StatusFlags(cmd.Flags())
	return cmd
}
