package main

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/agent"
	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/kube"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodelock"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/provider"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
	"github.com/nodecreds/nodecreds/internal/runtimediag"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/verifier"
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

// parts are the agent's components, built once for either mode.
type parts struct {
	src    runnableSource
	node   *nodestatus.NodeReporter // nil without a Node to report to
	events nodestatus.Recorder      // Events on the Node; nil without one
	agent  *agent.Agent
	reg    *prometheus.Registry
	health *metrics.Health
	diag   *runtimediag.Diagnosis // nil unless the runtime target is on
	// verifier is nil with --verify=off.
	verifier *verifier.Verifier
}

// loginTimeout bounds a login that verifies new credentials: past it they
// are applied unverified (a registry's availability never blocks a
// rotation).
const loginTimeout = 15 * time.Second

func buildParts(ctx context.Context, cfg config.Sync, log *logrus.Logger) (*parts, error) {
	p := &parts{}
	var (
		reporters []agent.Reporter
		client    kube.Interface
	)
	switch cfg.Source { // one of these two: config.Sync.Validate refuses any other
	case config.SourceDir:
		p.src = source.NewDir(cfg.SecretDirs, cfg.ContainerdCertsDir != "", log.WithField("component", "source"))
	case config.SourceSecret:
		routeKlog(log)
		var err error
		if client, err = newClient(kubeTarget{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context}, true); err != nil {
			return nil, err
		}
		p.src = source.NewSecrets(client, cfg.Namespace, cfg.Secrets, cfg.Selector, cfg.NodeName, log.WithField("component", "source"))
		if cfg.NodeName == "" {
			log.Warn("no --node-name (or $NODE_NAME): the Node's annotations, condition and startup taint are not managed")
			break
		}
		nodeLog := log.WithField("component", "node-status")
		recorder := kube.EventRecorder{Client: client, Component: "nodecreds", Host: cfg.NodeName, Context: ctx,
			OnError: func(err error) { nodeLog.WithError(err).Warn("cannot record an Event") }}
		p.events = recorder
		p.node = nodestatus.NewNodeReporter(client, cfg.NodeName, recorder, nodeLog)
		reporters = append(reporters, p.node)
	}

	files := nodefile.New(nodefile.Options{HostRoot: cfg.HostRoot, StateDir: cfg.StateDir})
	var diagnosis agent.RuntimeDiagnosis
	if cfg.ContainerdCertsDir != "" {
		p.diag = runtimediag.New(cfg.HostRoot, cfg.ContainerdConfig, cfg.ContainerdCertsDir, runtimeVersion(ctx, client, cfg.NodeName, log))
		diagnosis = p.diag
	}
	p.reg = prometheus.NewRegistry()
	p.health = &metrics.Health{}
	m := metrics.NewMetrics(p.reg)
	p.reg.MustRegister(metrics.NewWorkloadAnswers(workloadAnswers(cfg)))
	var verify agent.Verifier
	if p.verifier = newVerifier(ctx, cfg, files, m, log); p.verifier != nil {
		verify = p.verifier
	}
	p.agent = agent.New(p.src, files, agent.Options{
		Targets:   cfg.Targets,
		HostRoot:  cfg.HostRoot,
		Prune:     cfg.Prune,
		Resync:    cfg.Resync,
		Metrics:   m,
		Health:    p.health,
		Reporters: reporters,
		Plugin:    plugin(cfg),
		Runtime:   runtimeAuth(cfg, files),
		Diagnosis: diagnosis,
		Verifier:  verify,
		Expiry:    agent.ExpiryOptions{WarnShare: cfg.ExpiryWarnShare, WarnMin: cfg.ExpiryWarnMin},
	}, log.WithField("component", "agent"))
	return p, nil
}

// newVerifier is the verification logins' verifier, nil with --verify=off.
func newVerifier(ctx context.Context, cfg config.Sync, files *nodefile.Engine, m *metrics.Metrics, log *logrus.Logger) *verifier.Verifier {
	if cfg.Verify != config.VerifyOn {
		return nil
	}
	v := verifier.New(check.RegistryProber{Timeout: loginTimeout},
		verifier.Options{Spread: cfg.VerifySpread, Retry: cfg.VerifyRetry, MaxRetry: verifier.DefaultMaxRetry, Metrics: m, Store: files,
			Deadline: cfg.VerifySpread + loginTimeout + 5*time.Second})
	if err := v.Load(ctx); err != nil {
		// Only the verdicts are lost: those credentials are logged in
		// with again, as new ones are.
		log.WithError(err).Warn("rejected credentials recorded before cannot be read")
	}
	return v
}

// runtimeVersion is the Node's container runtime and version
// ("containerd://1.6.20"), "" when there is no Node to read it from.
// Read once: a runtime upgrade restarts the node's Pods, this one with it.
func runtimeVersion(ctx context.Context, client kube.Interface, node string, log *logrus.Logger) string {
	if client == nil || node == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := client.Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		log.WithError(err).Warn("cannot read the Node's container runtime version; the checks that need it are not made")
		return ""
	}
	return n.Status.NodeInfo.ContainerRuntimeVersion
}

// runtimeAuth is the containerd hosts.toml writer, or nil when
// --containerd-certs-dir is not set.
func runtimeAuth(cfg config.Sync, files *nodefile.Engine) agent.RuntimeAuth {
	if cfg.ContainerdCertsDir == "" {
		return nil
	}
	return runtimeauth.New(cfg.ContainerdCertsDir, files)
}

// plugin is the credential-provider plugin the agent keeps installed, or
// nil.
func plugin(cfg config.Sync) agent.Plugin {
	if cfg.InstallProvider == "" {
		return nil
	}
	return providerPlugin{hostRoot: cfg.HostRoot, dir: cfg.InstallProvider}
}

type providerPlugin struct{ hostRoot, dir string }

// workloadAnswers reads the counters the plugin's service-account-token
// mode keeps in the state folder (whoever installed the plugin).
func workloadAnswers(cfg config.Sync) metrics.AnswerCounts {
	return func() (map[string]uint64, bool) {
		counts, ok := provider.ReadAnswers(cfg.HostRoot, cfg.StateDir)
		out := make(map[string]uint64, len(counts))
		for r, n := range counts {
			out[string(r)] = n
		}
		return out, ok
	}
}

func (p providerPlugin) Install() (string, bool, error) {
	inst, err := provider.Install(p.hostRoot, p.dir, config.ProviderBinary, config.ServiceAccountProviderBinary)
	return inst.Path, inst.Changed, err
}

func runSync(ctx context.Context, cfg config.Sync, log *logrus.Logger) error {
	p, err := buildParts(ctx, cfg, log)
	if err != nil {
		return err
	}
	if cfg.Once {
		return runOnce(ctx, p)
	}
	return runDaemon(ctx, cfg, p, log)
}

// onceReportTimeout bounds how long `sync --once` keeps trying to report to
// its Node after the files are done.
const onceReportTimeout = 30 * time.Second

// runOnce syncs once and reports exactly what the daemon would (the Node's
// annotations, condition, Events and startup taint), then exits: 0 when
// every target is in sync and the report landed, 1 otherwise.
func runOnce(ctx context.Context, p *parts) error {
	// The source runs only until its first snapshot is ready.
	g, gctx := errgroup.WithContext(ctx)
	onceCtx, cancel := context.WithCancel(gctx)
	g.Go(func() error { return p.src.Run(onceCtx) })
	if p.verifier != nil {
		g.Go(func() error { return p.verifier.Run(onceCtx) })
	}
	o := p.agent.Once(onceCtx)
	cancel()
	if err := g.Wait(); err != nil {
		return err
	}
	if p.node != nil {
		reportCtx, cancel := context.WithTimeout(ctx, onceReportTimeout)
		defer cancel()
		if err := p.node.Flush(reportCtx); err != nil {
			return err
		}
	}
	if o.Err != nil || o.PluginErr != nil || o.Verifying || !o.Status().OK {
		return errFailed // each problem was logged with its details
	}
	return nil
}

// runDaemon runs the agent, its sources, the Node reporter and the metrics
// server until ctx ends. The agent first takes its node's agent lock, held
// until it stops: a second agent on the node's files waits (and says so)
// instead of syncing them to its own Secrets in turn with the first.
func runDaemon(ctx context.Context, cfg config.Sync, p *parts, log *logrus.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	if cfg.MetricsAddr != "0" {
		srv := metrics.NewServer(cfg.MetricsAddr, p.reg, p.health)
		if err := srv.Listen(); err != nil {
			return err
		}
		g.Go(func() error { return srv.Run(gctx) })
	}
	lock, err := holdNode(gctx, cfg, p, log)
	if err != nil {
		stopped := gctx.Err() != nil
		cancel()
		if werr := g.Wait(); werr != nil && !errors.Is(werr, context.Canceled) {
			return werr
		}
		if stopped {
			log.Info("nodecreds agent stopped while waiting for the node's other agent; node files left as they are")
			return nil
		}
		return err
	}
	defer func() {
		if err := lock.Release(); err != nil {
			log.WithError(err).Warn("releasing the agent lock (the kernel releases it as the process ends)")
		}
	}()
	g.Go(func() error { return p.src.Run(gctx) })
	g.Go(func() error { return p.agent.Run(gctx) })
	if p.verifier != nil {
		g.Go(func() error { return p.verifier.Run(gctx) })
	}
	if p.diag != nil {
		g.Go(func() error { return p.diag.Run(gctx) })
	}
	if p.node != nil {
		g.Go(func() error { return p.node.Run(gctx) })
	}
	log.WithFields(logrus.Fields{"version": version, "source": cfg.Source, "targets": cfg.Targets, "hostRoot": cfg.HostRoot, "pool": cfg.Pool}).Info("nodecreds agent started")
	err = g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("nodecreds agent stopped; node files left as they are")
	return nil
}

// holdNode takes the node's agent lock, waiting (reported in the log, on
// /readyz and, see nodestatus.AgentWait, on the Node) while another agent holds
// it.
func holdNode(ctx context.Context, cfg config.Sync, p *parts, log *logrus.Logger) (*nodelock.Lock, error) {
	wait := &nodestatus.AgentWait{Recorder: p.events, Node: cfg.NodeName, Pool: cfg.Pool, Pod: cfg.PodName,
		Health: p.health, Log: log.WithField("component", "agent-lock")}
	lock, err := nodelock.Acquire(ctx, nodelock.Options{
		HostRoot: cfg.HostRoot,
		StateDir: cfg.StateDir,
		Self:     nodelock.Holder{Pool: cfg.Pool, Pod: cfg.PodName},
		OnWait:   wait.Waiting,
	})
	if err != nil {
		return nil, err
	}
	wait.Acquired()
	return lock, nil
}
