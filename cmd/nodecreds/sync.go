package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/nodecreds/nodecreds/internal/agent"
	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/provider"
	"github.com/nodecreds/nodecreds/internal/report"
	"github.com/nodecreds/nodecreds/internal/source"
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

// runnableSource is a source with its watch loop.
type runnableSource interface {
	agent.Source
	Run(ctx context.Context) error
}

func runSync(ctx context.Context, cfg config.Sync, log *logrus.Logger) error {
	var (
		src       runnableSource
		reporters []agent.Reporter
		node      *report.Node
	)
	g, gctx := errgroup.WithContext(ctx)
	switch cfg.Source {
	case config.SourceDir:
		src = source.NewDir(cfg.SecretDirs, log.WithField("component", "source"))
	case config.SourceSecret:
		routeKlog(log)
		client, err := newClient(cfg.Kubeconfig, true)
		if err != nil {
			return err
		}
		src = source.NewSecrets(client, cfg.Namespace, cfg.Secrets, cfg.Selector, log.WithField("component", "source"))
		if cfg.NodeName == "" {
			log.Warn("no --node-name (or $NODE_NAME): the Node's annotations, condition and startup taint are not managed")
		} else {
			broadcaster := record.NewBroadcaster(record.WithContext(gctx))
			broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
			defer broadcaster.Shutdown()
			recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "nodecreds", Host: cfg.NodeName})
			node = report.NewNode(client, cfg.NodeName, recorder, log.WithField("component", "node-status"))
			reporters = append(reporters, node)
		}
	default:
		return config.UsageError(fmt.Errorf("--source %s: unknown", cfg.Source))
	}

	if cfg.InstallProvider != "" {
		inst, err := provider.Install(cfg.HostRoot, cfg.InstallProvider, config.ProviderBinary)
		if err != nil {
			return err
		}
		log.WithFields(logrus.Fields{"path": inst.Path, "changed": inst.Changed}).Info("kubelet credential-provider plugin installed")
	}

	files := nodefile.New(nodefile.Options{HostRoot: cfg.HostRoot, StateDir: cfg.StateDir})
	reg := prometheus.NewRegistry()
	health := &report.Health{}
	ag := agent.New(src, files, agent.Options{
		Targets:   cfg.Targets,
		HostRoot:  cfg.HostRoot,
		Prune:     cfg.Prune,
		Resync:    cfg.Resync,
		Metrics:   report.NewMetrics(reg),
		Health:    health,
		Reporters: reporters,
	}, log.WithField("component", "agent"))

	if cfg.Once {
		// The source runs only until its first snapshot is ready.
		onceCtx, cancel := context.WithCancel(gctx)
		g.Go(func() error { return src.Run(onceCtx) })
		o := ag.Once(onceCtx)
		cancel()
		if err := g.Wait(); err != nil {
			return err
		}
		if o.Err != nil {
			return errFailed // each problem was logged with its details
		}
		return nil
	}

	if cfg.MetricsAddr != "0" {
		srv := report.NewServer(cfg.MetricsAddr, reg, health)
		if err := srv.Listen(); err != nil {
			return err
		}
		g.Go(func() error { return srv.Run(gctx) })
	}
	g.Go(func() error { return src.Run(gctx) })
	g.Go(func() error { return ag.Run(gctx) })
	if node != nil {
		g.Go(func() error { return node.Run(gctx) })
	}
	log.WithFields(logrus.Fields{"version": version, "source": cfg.Source, "targets": cfg.Targets, "hostRoot": cfg.HostRoot}).Info("nodecreds agent started")
	err := g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("nodecreds agent stopped; node files left as they are")
	return nil
}
