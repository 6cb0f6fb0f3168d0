// Package daemon is what `nodecreds sync` runs: the agent with its
// sources, Node reporter, verifier, runtime diagnosis and metrics server,
// built from one configuration and run under one errgroup. It is apart
// from the command so that the hollow fleet (scripts/fleet) runs thousands
// of the very same daemons in one process.
package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
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

// ErrFailed means a --once sync ran and failed; each problem was logged
// with its details.
var ErrFailed = errors.New("sync failed")

// runnableSource is a source with its watch loop.
type runnableSource interface {
	agent.Source
	Run(ctx context.Context) error
}

// Daemon is what `nodecreds sync` runs: the agent and its components,
// built once for either mode (--once or not).
type Daemon struct {
	cfg config.Sync
	log *logrus.Logger
	// version is the binary's, said when the daemon starts.
	version string

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

// Deps are what a Daemon is given rather than builds: its API client,
// logger and version.
type Deps struct {
	// Client is the API client (nil with --source dir): the command builds
	// it from --kubeconfig or the Pod's ServiceAccount; the hollow fleet
	// gives each daemon a client of its own.
	Client  kube.Interface
	Log     *logrus.Logger
	Version string
}

// New builds the daemon cfg describes. It reads nothing from the API but,
// with the runtime target on, the Node's container runtime version.
func New(ctx context.Context, cfg config.Sync, deps Deps) (*Daemon, error) {
	log, client := deps.Log, deps.Client
	d := &Daemon{cfg: cfg, log: log, version: deps.Version}
	var reporters []agent.Reporter
	switch cfg.Source { // one of these two: config.Sync.Validate refuses any other
	case config.SourceDir:
		d.src = source.NewDir(cfg.SecretDirs, cfg.ContainerdCertsDir != "", log.WithField("component", "source"))
	case config.SourceSecret:
		if client == nil {
			return nil, errors.New("--source secret needs an API client")
		}
		d.src = source.NewSecrets(client, cfg.Namespace, cfg.Secrets, cfg.Selector, cfg.NodeName, log.WithField("component", "source"))
		if cfg.NodeName == "" {
			log.Warn("no --node-name (or $NODE_NAME): the Node's annotations, condition and startup taint are not managed")
			break
		}
		nodeLog := log.WithField("component", "node-status")
		recorder := kube.EventRecorder{Client: client, Component: "nodecreds", Host: cfg.NodeName, Context: ctx,
			OnError: func(err error) { nodeLog.WithError(err).Warn("cannot record an Event") }}
		d.events = recorder
		d.node = nodestatus.NewNodeReporter(client, cfg.NodeName, recorder, nodeLog)
		reporters = append(reporters, d.node)
	}

	files := nodefile.New(nodefile.Options{HostRoot: cfg.HostRoot, StateDir: cfg.StateDir})
	var diagnosis agent.RuntimeDiagnosis
	if cfg.ContainerdCertsDir != "" {
		d.diag = runtimediag.New(cfg.HostRoot, cfg.ContainerdConfig, cfg.ContainerdCertsDir, runtimeVersion(ctx, client, cfg.NodeName, log))
		diagnosis = d.diag
	}
	d.reg = prometheus.NewRegistry()
	d.health = &metrics.Health{}
	m := metrics.NewMetrics(d.reg)
	d.reg.MustRegister(metrics.NewWorkloadAnswers(workloadAnswers(cfg)))
	var verify agent.Verifier
	if d.verifier = newVerifier(ctx, cfg, files, m, log); d.verifier != nil {
		verify = d.verifier
	}
	d.agent = agent.New(d.src, files, agent.Options{
		Targets:   cfg.Targets,
		HostRoot:  cfg.HostRoot,
		Prune:     cfg.Prune,
		Resync:    cfg.Resync,
		Metrics:   m,
		Health:    d.health,
		Reporters: reporters,
		Plugin:    plugin(cfg),
		Runtime:   runtimeAuth(cfg, files),
		Diagnosis: diagnosis,
		Verifier:  verify,
		Expiry:    agent.ExpiryOptions{WarnShare: cfg.ExpiryWarnShare, WarnMin: cfg.ExpiryWarnMin},
	}, log.WithField("component", "agent"))
	return d, nil
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

// onceReportTimeout bounds how long `sync --once` keeps trying to report to
// its Node after the files are done.
const onceReportTimeout = 30 * time.Second

// Once syncs once and reports exactly what the daemon would (the Node's
// annotations, condition, Events and startup taint), then exits: 0 when
// every target is in sync and the report landed, 1 otherwise.
func (d *Daemon) Once(ctx context.Context) error {
	// The source runs only until its first snapshot is ready.
	g, gctx := errgroup.WithContext(ctx)
	onceCtx, cancel := context.WithCancel(gctx)
	g.Go(func() error { return d.src.Run(onceCtx) })
	if d.verifier != nil {
		g.Go(func() error { return d.verifier.Run(onceCtx) })
	}
	o := d.agent.Once(onceCtx)
	cancel()
	if err := g.Wait(); err != nil {
		return err
	}
	if d.node != nil {
		reportCtx, cancel := context.WithTimeout(ctx, onceReportTimeout)
		defer cancel()
		if err := d.node.Flush(reportCtx); err != nil {
			return err
		}
	}
	if o.Err != nil || o.PluginErr != nil || o.Verifying || !o.Status().OK {
		return ErrFailed // each problem was logged with its details
	}
	return nil
}

// Run runs the agent, its sources, the Node reporter and the metrics
// server until ctx ends. The agent first takes its node's agent lock, held
// until it stops: a second agent on the node's files waits (and says so)
// instead of syncing them to its own Secrets in turn with the first.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, log := d.cfg, d.log
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	if cfg.MetricsAddr != "0" {
		srv := metrics.NewServer(cfg.MetricsAddr, d.reg, d.health)
		if err := srv.Listen(); err != nil {
			return err
		}
		g.Go(func() error { return srv.Run(gctx) })
	}
	lock, err := d.holdNode(gctx)
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
	g.Go(func() error { return d.src.Run(gctx) })
	g.Go(func() error { return d.agent.Run(gctx) })
	if d.verifier != nil {
		g.Go(func() error { return d.verifier.Run(gctx) })
	}
	if d.diag != nil {
		g.Go(func() error { return d.diag.Run(gctx) })
	}
	if d.node != nil {
		g.Go(func() error { return d.node.Run(gctx) })
	}
	log.WithFields(logrus.Fields{"version": d.version, "source": cfg.Source, "targets": cfg.Targets, "hostRoot": cfg.HostRoot, "pool": cfg.Pool}).Info("nodecreds agent started")
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
func (d *Daemon) holdNode(ctx context.Context) (*nodelock.Lock, error) {
	cfg, log := d.cfg, d.log
	wait := &nodestatus.AgentWait{Recorder: d.events, Node: cfg.NodeName, Pool: cfg.Pool, Pod: cfg.PodName,
		Health: d.health, Log: log.WithField("component", "agent-lock")}
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
