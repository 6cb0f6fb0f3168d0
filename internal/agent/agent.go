// Package agent is the reconcile loop: it turns the sources' snapshots into
// a desired set, applies it to the node's files, and reports the outcome; it
// runs again when a source changes, when someone touches a target (drift),
// after a failure (with backoff) and every resync period.
package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/containerdconf"
	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/filewatch"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/runtimeauth"
	"github.com/nodecreds/nodecreds/internal/source"
)

// Source is where desired credentials come from.
type Source interface {
	Snapshots() []source.Snapshot
	Changed() <-chan struct{}
	Ready() <-chan struct{}
}

// completer is a Source that signals whole new versions apart from
// changes that may still be under way (on Changed).
type completer interface {
	Completed() <-chan struct{}
}

// Files brings the node's files in line with the sources.
type Files interface {
	Sync(ctx context.Context, targets []string, d nodefile.Desired) ([]nodefile.Result, error)
	// Route returns the host path a node path leads to now and the host
	// paths of the symlinks followed on the way.
	Route(nodePath string) (path string, links []string, err error)
}

// Plugin is something the kubelet runs that the agent keeps on the node
// (the credential-provider plugin): installed on the first sync, and on
// every sync after one that failed, until it is in place.
type Plugin interface {
	Install() (path string, changed bool, err error)
}

// RuntimeAuth keeps the Authorization headers of containerd's hosts.toml
// files for the sources that opted in.
type RuntimeAuth interface {
	SyncRegistries(ctx context.Context, regs []runtimeauth.Registry, hold bool) ([]runtimeauth.Result, error)
	// Dir is the node path of the certs folder it keeps.
	Dir() string
}

// RuntimeDiagnosis says what stands between the hosts.toml headers and
// containerd (runtimediag.Diagnosis).
type RuntimeDiagnosis interface {
	Problems(regs []runtimeauth.Registry) []containerdconf.Problem
	// Changed fires when the answer may differ (a challenge learned).
	Changed() <-chan struct{}
}

// Reporter is told every sync's outcome (the Node's status in cluster mode).
type Reporter interface {
	Report(ctx context.Context, st nodestatus.SyncStatus)
}

// Options configures the agent.
type Options struct {
	Targets  []string
	HostRoot string
	Prune    bool
	Resync   time.Duration
	// Debounce coalesces bursts of events (a ..data swap is several).
	Debounce time.Duration
	// MaxBackoff caps the retry delay after a failed sync.
	MaxBackoff time.Duration
	// Poll is how often targets are compared when inotify is unavailable
	// (filewatch.DefaultPoll when zero).
	Poll      time.Duration
	Metrics   *metrics.Metrics // optional
	Health    *metrics.Health  // optional
	Reporters []Reporter
	Plugin    Plugin // optional
	// Runtime is the containerd hosts.toml writer (optional: off unless
	// sync --containerd-certs-dir).
	Runtime RuntimeAuth
	// Diagnosis (optional, with Runtime) tells why containerd may not use
	// the headers.
	Diagnosis RuntimeDiagnosis
	// Verifier (optional: sync --verify=off leaves it out) logs in with
	// changed credentials before they replace the node's.
	Verifier Verifier
	// Expiry says when credentials count as expiring (expiry.go).
	Expiry ExpiryOptions
}

// Outcome is the result of one sync.
type Outcome struct {
	Cause    string
	Revision string
	Sources  []source.Snapshot
	Results  []nodefile.Result
	// Runtime is the outcome per hosts.toml touched or left alone; Skipped
	// the opted-in keys no header can be written for.
	Runtime        []runtimeauth.Result
	RuntimeSkipped []string
	// RuntimeProblems are why containerd may not use the headers, each
	// with its fix.
	RuntimeProblems []containerdconf.Problem
	// Held names the sources whose entries on the node were held back
	// because their content is unknown (invalid and never seen valid).
	Held []string
	// FilesErr is why no target could be synced at all (the state file or
	// its lock unusable).
	FilesErr error
	Changed  bool
	// Notes are degraded-but-working states worth saying on the Node (a
	// watch that polls because inotify is unavailable, a plugin not
	// installed).
	Notes []string
	// PluginErr is why the plugin could not be installed: the files are
	// synced all the same, and the install is retried.
	PluginErr error
	// Logins are the verdicts on the sources' entries (with a Verifier).
	Logins []login
	// Verifying: the node keeps previous entries until the first login
	// with their new values answers; the outcome is not reported yet.
	Verifying bool
	// Again: entries were held for logins that are all answered now
	// (some maybe while this sync ran); a sync at once writes them, and
	// reports.
	Again bool
	// Err is nil when every source was usable and every target is in sync.
	Err error
	// Expiry is where the credentials in force stand against their
	// nodecreds.io/expires-at (expiry.go).
	Expiry Expiries
}

// Agent keeps the node's files in line with the sources.
type Agent struct {
	src      Source
	files    Files
	opts     Options
	log      *logrus.Entry
	lastGood map[string]source.Snapshot
	lastRev  string
	synced   bool // a sync has succeeded since start
	// polling says why a watch polls, by watch ("targets", "sources");
	// each is logged once.
	polling map[string]string
	targets *filewatch.Watch // nil until Run
	// pluginDone: the plugin is in place; pluginErr: the install failure
	// last logged as an error.
	pluginDone bool
	pluginErr  string
	// runtimeSaid is the runtime problems last logged (each set once).
	runtimeSaid string
	// loginsSaid is each entry's verdict last logged; seen each source's
	// version and when it was first seen.
	loginsSaid map[string]string
	seen       map[string]seenVersion
	// overVerified: the sources were found to name more registries than
	// are verified (said once).
	overVerified bool
	expiry       *expiryTracker // expiry.go; nil until the first sync
}

// poller is a source that may poll instead of watching (a mounted folder
// without inotify).
type poller interface{ Polling() string }

// New returns an Agent.
func New(src Source, files Files, opts Options, log *logrus.Entry) *Agent {
	if opts.Debounce == 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Poll == 0 {
		opts.Poll = filewatch.DefaultPoll
	}
	return &Agent{src: src, files: files, opts: opts, log: log, lastGood: map[string]source.Snapshot{}, polling: map[string]string{}, seen: map[string]seenVersion{}}
}

// Once waits for the source and syncs once.
func (a *Agent) Once(ctx context.Context) Outcome {
	select {
	case <-a.src.Ready():
	case <-ctx.Done():
		return Outcome{Err: fmt.Errorf("waiting for sources: %w", ctx.Err())}
	}
	o := a.Sync(ctx, "once")
	if v := a.opts.Verifier; v != nil && len(o.Logins) > 0 {
		// Every login started has answered (or timed out) before the
		// outcome is final: then the files hold what the verdicts allow.
		if err := v.Wait(ctx); err != nil {
			return Outcome{Err: fmt.Errorf("waiting for logins: %w", err)}
		}
		o = a.Sync(ctx, "once")
		if o.Again {
			o = a.Sync(ctx, "once")
		}
	}
	return o
}

// Sync brings the targets in line with the sources now.
func (a *Agent) Sync(ctx context.Context, cause string) Outcome {
	start := time.Now()
	if h := a.opts.Health; h != nil {
		h.SyncStarted()
		defer h.SyncEnded()
	}
	o := Outcome{Cause: cause, Sources: a.src.Snapshots()}
	d, clashes, errs, annotated := a.desired(o.Sources)
	desired, more := dockercfg.View(dockercfg.Kubelet, d.Sources...)
	clashes = append(clashes, more...)
	o.Revision = source.Revision(o.Sources)
	o.Held = d.Hold
	o.Logins, d.Keep = a.logins(d)
	o.Expiry = a.expiries(o.Sources)

	results, err := a.files.Sync(ctx, a.opts.Targets, d)
	if err != nil {
		o.FilesErr = err
		errs = append(errs, err)
	}
	o.Results = results
	o.Verifying, o.Again = a.afterWrite(ctx, o.Logins, results, holdsWhole(d.Keep))
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
		o.Changed = o.Changed || r.Changed
	}
	if a.opts.Runtime != nil {
		regs, skipped := runtimeauth.Desired{Sources: d.Sources, Annotated: annotated}.Registries()
		rr, err := a.opts.Runtime.SyncRegistries(ctx, regs, len(d.Hold) > 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("containerd hosts.toml: %w", err))
		}
		for _, r := range rr {
			if r.Err != nil {
				errs = append(errs, r.Err)
			}
			o.Changed = o.Changed || r.Changed
		}
		o.Runtime, o.RuntimeSkipped = rr, skipped
		if a.opts.Diagnosis != nil {
			o.RuntimeProblems = a.opts.Diagnosis.Problems(regs)
		}
	}
	o.Err = errors.Join(errs...)
	o.Notes = a.notes()
	if o.PluginErr = a.installPlugin(); o.PluginErr != nil {
		o.Notes = append(o.Notes, "credential-provider plugin not installed (retrying): "+o.PluginErr.Error())
	}
	a.record(o, clashes, desired, time.Since(start))
	if o.Verifying || o.Again {
		return o // reported by the sync that applies what the logins said
	}
	st := o.Status()
	for _, r := range a.opts.Reporters {
		r.Report(ctx, st)
	}
	return o
}

// desired is what the sources want on the node, the clashes between
// them, why some cannot be used now and which opted in to containerd's
// hosts.toml headers.
func (a *Agent) desired(snaps []source.Snapshot) (nodefile.Desired, []dockercfg.Clash, []error, map[string]bool) {
	d := nodefile.Desired{Sources: make([]dockercfg.NamedSet, 0, len(snaps)), Prune: a.opts.Prune}
	var clashes []dockercfg.Clash
	var errs []error
	annotated := map[string]bool{}
	for _, s := range snaps {
		if s.Err != nil {
			errs = append(errs, fmt.Errorf("source %s: %w", s.Name, s.Err))
			a.count(func(m *metrics.Metrics) { m.SourceErrors.WithLabelValues(s.Name, s.Reason()).Inc() })
			good, use, hold := a.fallback(s)
			if hold {
				d.Hold = append(d.Hold, s.Name)
			}
			if !use {
				continue
			}
			s = good
		} else {
			a.lastGood[s.Name] = s
		}
		clashes = append(clashes, s.Clashes...)
		d.Sources = append(d.Sources, dockercfg.NamedSet{Name: s.Name, Set: s.Set})
		if s.RuntimeAuth {
			annotated[s.Name] = true
		}
	}
	a.forgetGone(snaps)
	return d, clashes, errs, annotated
}

// fallback is what stands for source s, which cannot be read now: its
// last good snapshot (use), nothing (neither use nor hold: it applies
// nowhere), or, when its content is unknown, its entries on the node held
// back (hold).
func (a *Agent) fallback(s source.Snapshot) (good source.Snapshot, use, hold bool) {
	switch last, ok := a.lastGood[s.Name]; {
	case errors.Is(s.Err, source.ErrNotFound) && a.opts.Prune:
		// A deleted source counts as empty only with prune.
		delete(a.lastGood, s.Name)
		return source.Snapshot{}, false, false
	case errors.Is(s.Err, source.ErrNodeUnknown):
		// A Secret for some nodes, and this agent cannot tell
		// whether its Node is one of them (its Node is gone, or
		// it has no node name): it applies nowhere, whatever
		// applied before.
		delete(a.lastGood, s.Name)
		return source.Snapshot{}, false, false
	case ok && !a.stillApplies(last):
		// Its last good content was for nodes this one no longer
		// is (relabelled, or gone) while it cannot be read now.
		delete(a.lastGood, s.Name)
		return source.Snapshot{}, false, false
	case ok:
		return last, true, false // keep the last good state in force
	default:
		// Unknown: apply the rest; of what is on the node, hold
		// back only what this source may have written.
		return source.Snapshot{}, false, true
	}
}

// applier is a source that can tell whether a snapshot seen before still
// applies to this node (its node selector against the Node's labels now).
type applier interface{ StillApplies(source.Snapshot) bool }

func (a *Agent) stillApplies(good source.Snapshot) bool {
	if ap, ok := a.src.(applier); ok {
		return ap.StillApplies(good)
	}
	return true
}

// notes says, once in the log and on every sync in the outcome and the
// metric, which watches poll because inotify is unavailable.
func (a *Agent) notes() []string {
	current := map[string]string{"targets": "", "sources": ""}
	if a.targets != nil {
		current["targets"] = a.targets.Polling()
	}
	if p, ok := a.src.(poller); ok {
		current["sources"] = p.Polling()
	}
	var notes []string
	for _, watch := range []string{"sources", "targets"} {
		why := current[watch]
		polling := 0.0
		if why != "" {
			polling = 1
			notes = append(notes, watch+": "+why)
			if a.polling[watch] != why {
				a.log.WithFields(logrus.Fields{"watch": watch, "reason": why}).Warn("inotify unavailable; polling instead (changes are still seen within about a second)")
			}
		}
		a.polling[watch] = why
		a.count(func(m *metrics.Metrics) { m.Polling.WithLabelValues(watch).Set(polling) })
	}
	return notes
}

// installPlugin installs the plugin until it is in place. A failure is
// logged as an error once (again only when it changes): it is retried
// with the sync's backoff.
func (a *Agent) installPlugin() error {
	if a.opts.Plugin == nil || a.pluginDone {
		return nil
	}
	path, changed, err := a.opts.Plugin.Install()
	if err != nil {
		if err.Error() != a.pluginErr {
			a.log.WithError(err).Error("credential-provider plugin not installed; the files are synced all the same, and the install is retried")
		} else {
			a.log.WithError(err).Debug("credential-provider plugin still not installed")
		}
		a.pluginErr = err.Error()
		return err
	}
	a.pluginDone, a.pluginErr = true, ""
	a.log.WithFields(logrus.Fields{"path": path, "changed": changed}).Info("kubelet credential-provider plugin installed")
	return nil
}

// forgetGone drops the last good state of sources that no longer apply
// (deleted, or their node selector stopped matching), so it cannot come
// back in force if they apply again broken.
func (a *Agent) forgetGone(current []source.Snapshot) {
	for name := range a.lastGood {
		if !slices.ContainsFunc(current, func(s source.Snapshot) bool { return s.Name == name }) {
			delete(a.lastGood, name)
		}
	}
}

// Status summarises an outcome for the Node: a reason a machine can match
// and a message a person can act on, without any secret value.
func (o Outcome) Status() nodestatus.SyncStatus {
	st := nodestatus.SyncStatus{Revision: o.Revision, Sources: source.Versions(o.Sources), OK: o.Err == nil, Changed: o.Changed, Reason: "Synced"}
	var problems []string
	for _, s := range o.Sources {
		if s.Err != nil {
			if st.Reason == "Synced" {
				st.Reason = "Source" + s.Reason()
			}
			problem := s.Err.Error()
			if slices.Contains(o.Held, s.Name) {
				problem += " (entries written before from " + s.Name + " stay on the node until it can be read; every other source's that no longer apply were removed)"
			}
			problems = append(problems, problem)
		}
	}
	if o.FilesErr != nil {
		st.Reason = "Error"
		if errors.Is(o.FilesErr, nodefile.ErrState) {
			st.Reason = "StateError"
		}
		problems = append(problems, o.FilesErr.Error())
	}
	entries, files := 0, 0
	var warnings []string // things fixed or to fix that are not errors: a loosened mode, another owner
	for _, r := range o.Results {
		warnings = append(warnings, r.Warnings...)
		if r.Err != nil {
			if st.Reason == "Synced" {
				st.Reason = "TargetError"
			}
			problems = append(problems, r.Err.Error())
			continue
		}
		files++
		entries = max(entries, r.Entries)
	}
	for _, r := range o.Runtime {
		if r.Err != nil {
			problems = append(problems, r.Err.Error())
		}
	}
	problems, warnings = verifyReport(&st, o.Logins, problems, warnings)
	if o.Err != nil && len(problems) == 0 {
		problems = append(problems, o.Err.Error()) // no failed sync reads as synced
	}
	problems, warnings = o.Expiry.report(&st, problems, warnings)
	warnings = append(runtimeWarnings(&st, o.RuntimeProblems), warnings...)
	if len(problems) > 0 {
		if st.Reason == "Synced" || st.Warn {
			st.Reason, st.Warn = "Error", false
		}
		st.Message = strings.Join(slices.Concat(problems, warnings, o.Notes), "; ")
		return st
	}
	st.Message = strings.Join(slices.Concat([]string{fmt.Sprintf("%d registry entries from %d source(s) in %d file(s)", entries, len(o.Sources), files)}, warnings, o.Notes), "; ")
	return st
}

// runtimeWarnings words the runtime problems for the condition, and makes
// the first one the reason of a sync that is otherwise fine: the files are
// in sync (the condition stays True), but the operator has something to
// fix, told by a Warning Event too.
func runtimeWarnings(st *nodestatus.SyncStatus, problems []containerdconf.Problem) []string {
	var ws []string
	for _, p := range problems {
		ws = append(ws, fmt.Sprintf("containerd may not use the hosts.toml headers: %s Fix: %s", p.Message, p.Fix))
	}
	if len(problems) > 0 && st.Reason == "Synced" {
		st.Reason, st.Warn = problems[0].Reason, true
	}
	return ws
}

// record logs and counts an outcome. Logs name keys, paths and sources,
// never values.
func (a *Agent) record(o Outcome, clashes []dockercfg.Clash, desired dockercfg.Set, took time.Duration) {
	newRev := o.Revision != a.lastRev
	// Writing although the sources did not change since a successful sync
	// means someone changed a target: drift.
	drifting := !newRev && a.synced
	a.lastRev = o.Revision
	a.synced = a.synced || o.Err == nil
	log := a.log.WithFields(logrus.Fields{"cause": o.Cause, "revision": o.Revision})
	if newRev {
		for _, c := range clashes {
			c = c.Safe()
			log.WithFields(logrus.Fields{"registry": c.Registry, "winner": c.Winner, "winnerKey": c.WinnerKey, "loser": c.Loser, "loserKey": c.LoserKey}).
				Warn("two sources provide the same registry; the first wins")
		}
	}
	for _, s := range o.Sources {
		if s.Err != nil {
			log.WithFields(logrus.Fields{"source": s.Name, "reason": s.Reason()}).WithError(s.Err).Error("source unusable; last good credentials stay in force")
		}
	}
	if o.FilesErr != nil {
		log.WithError(o.FilesErr).Error("no target synced: nodecreds' state cannot be used")
	}
	for _, r := range o.Results {
		a.recordTarget(log, r, desired, drifting)
	}
	recordRuntime(log, o, newRev)
	a.recordLogins(log, o.Logins)
	a.versions(o)
	if said := fmt.Sprint(o.RuntimeProblems); said != a.runtimeSaid {
		a.runtimeSaid = said
		for _, p := range o.RuntimeProblems {
			log.WithFields(logrus.Fields{"reason": p.Reason, "problem": p.Message, "fix": p.Fix}).Warn("containerd may not use the hosts.toml headers")
		}
	}
	result := "success"
	if o.Err != nil {
		result = "error"
	}
	a.count(func(m *metrics.Metrics) {
		m.Syncs.WithLabelValues(result).Inc()
		m.Duration.Observe(took.Seconds())
		if o.Err == nil {
			m.LastSuccess.SetToCurrentTime()
		}
	})
	if o.Err == nil && a.opts.Health != nil {
		a.opts.Health.SetReady()
	}
	log.WithFields(logrus.Fields{"result": result, "changed": o.Changed, "took": took.String()}).Debug("sync done")
}

// recordTarget logs and counts the outcome of one target. Foreign keys
// come from the node's files, not from a validated source: any of them
// may hold a password, so they are logged through SafeKeys.
func (a *Agent) recordTarget(log *logrus.Entry, r nodefile.Result, desired dockercfg.Set, drifting bool) {
	rl := log.WithFields(logrus.Fields{"target": r.Target, "path": r.Path, "entries": r.Entries})
	for _, w := range r.Warnings {
		rl.Warn(w)
	}
	if len(r.Released) > 0 {
		rl.WithField("keys", dockercfg.SafeKeys(r.Released)).Warn("entries nodecreds wrote were changed by someone else; leaving them to their new owner")
	}
	if len(r.Displaced) > 0 {
		rl.WithField("keys", dockercfg.SafeKeys(r.Displaced)).Info("displaced foreign entries for registries the sources provide; they are kept and restored later")
	}
	if len(r.Restored) > 0 {
		rl.WithField("keys", dockercfg.SafeKeys(r.Restored)).Info("restored displaced entries")
	}
	switch {
	case r.Err != nil:
		rl.WithError(r.Err).Error("target not in sync")
	case r.Removed:
		rl.Info("removed target file nodecreds created, now empty")
	case r.Changed && drifting:
		rl.WithFields(registries(desired)).Info("target had drifted; corrected")
	case r.Changed:
		rl.WithFields(registries(desired)).Info("target updated")
	default:
		rl.Debug("target already in sync")
	}
	a.count(func(m *metrics.Metrics) {
		m.Entries.WithLabelValues(r.Target).Set(float64(r.Entries))
		if r.Changed {
			m.Writes.WithLabelValues(r.Target).Inc()
			if drifting {
				m.Drift.WithLabelValues(r.Target).Inc()
			}
		}
	})
}

// loggedRegistries bounds the registries named in one log line: a source
// can hold thousands.
const loggedRegistries = 20

// registries names the desired registries for a log line: all of them, or
// the first loggedRegistries and how many more.
func registries(desired dockercfg.Set) logrus.Fields {
	keys := desired.Keys()
	if len(keys) <= loggedRegistries {
		return logrus.Fields{"registries": dockercfg.SafeKeys(keys)}
	}
	return logrus.Fields{"registries": dockercfg.SafeKeys(keys[:loggedRegistries]), "moreRegistries": len(keys) - loggedRegistries}
}

func (a *Agent) count(f func(*metrics.Metrics)) {
	if a.opts.Metrics != nil {
		f(a.opts.Metrics)
	}
}

// recordRuntime logs the hosts.toml outcomes: never a value (the results
// and skipped keys hold none).
func recordRuntime(log *logrus.Entry, o Outcome, newRev bool) {
	if newRev {
		for _, k := range o.RuntimeSkipped {
			log.WithField("key", k).Warn("no containerd hosts.toml header for this key of a Secret annotated for the runtime")
		}
	}
	for _, r := range o.Runtime {
		l := log.WithField("hostsToml", r.Path)
		switch {
		case r.Err != nil:
			l.WithError(r.Err).Error("containerd hosts.toml not synced")
		case r.Removed:
			l.Info("removed the containerd hosts.toml nodecreds had created")
		case r.Changed:
			l.Info("containerd hosts.toml headers written")
		}
		if r.Warning != "" {
			l.Warn(r.Warning)
		}
		if r.Note != "" {
			l.Info(r.Note)
		}
	}
}
