package agent

import (
	"context"
	"math"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nodecreds/nodecreds/internal/filewatch"
)

// retryBackoff is the schedule of syncs retried after a failure: 1 s,
// doubling, capped at ceiling (Options.MaxBackoff).
func retryBackoff(ceiling time.Duration) wait.Backoff {
	return wait.Backoff{Duration: time.Second, Factor: 2, Steps: math.MaxInt32, Cap: ceiling}
}

const (
	causeStart  = "start"
	causeSource = "source"
	causeDrift  = "drift"
	causeResync = "resync"
	causeRetry  = "retry"
	// causeDiagnosis: a registry's challenge became known, which may
	// change what the Node is told.
	causeDiagnosis = "runtime-diagnosis"
	// causeLogin: a login answered, which may let new credentials in or
	// keep them out.
	causeLogin = "login"
	// causeExpiry: credentials reached a threshold of their expiry.
	causeExpiry = "expiry"
)

// Run syncs until ctx ends. It never removes anything on the way out:
// stopping the agent leaves the node's files as they are.
func (a *Agent) Run(ctx context.Context) error {
	select {
	case <-a.src.Ready():
	case <-ctx.Done():
		return nil
	}
	w := filewatch.New(a.opts.Poll)
	defer w.Close()
	a.targets = w
	l := a.newLoop(newTargetWatch(w, a.files, a.opts.Targets, a.opts.HostRoot))
	if a.opts.Runtime != nil {
		l.certs = newCertsWatch(w, filepath.Join(a.opts.HostRoot, a.opts.Runtime.Dir()))
	}
	resync := time.NewTicker(a.opts.Resync)
	defer resync.Stop()
	changes, completed := a.changeSignals()
	diagnosed, verdicts := a.optionalSignals()

	l.run(ctx, causeStart)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
			l.schedule(causeSource)
		case <-completed:
			l.now(ctx, causeSource)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if l.watch.relevant(ev) || l.certs != nil && l.certs.relevant(ev) {
				l.schedule(causeDrift)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			a.log.WithError(err).Warn("target watch error; re-checking")
			l.schedule(causeDrift)
		case <-w.Tick():
			if l.watch.polledDrift() || l.certs != nil && l.certs.polledDrift() {
				l.schedule(causeDrift)
			}
		case <-l.debounce.C:
			cause := l.pending
			l.pending = ""
			l.run(ctx, cause)
		case <-l.retry.C:
			l.run(ctx, causeRetry)
		case <-resync.C:
			l.run(ctx, causeResync)
		case <-diagnosed:
			l.schedule(causeDiagnosis)
		case <-verdicts:
			l.now(ctx, causeLogin)
		case <-l.expiry.C:
			l.run(ctx, causeExpiry)
		}
	}
}

// optionalSignals are the runtime diagnosis's and the verifier's, each
// nil (never fires) when that part is off.
func (a *Agent) optionalSignals() (diagnosed, verdicts <-chan struct{}) {
	if a.opts.Diagnosis != nil {
		diagnosed = a.opts.Diagnosis.Changed()
	}
	if a.opts.Verifier != nil {
		verdicts = a.opts.Verifier.Changed()
	}
	return diagnosed, verdicts
}

// changeSignals are the source's signals. A source that can tell a whole
// new version (a watch event, the kubelet's ..data swap) from a change
// that may be under way is synced at once on the first (completed), with
// what follows within Debounce coalesced; every other change (changes) is
// debounced. changes is nil when every change is complete, completed nil
// when the source cannot tell.
func (a *Agent) changeSignals() (changes, completed <-chan struct{}) {
	changes = a.src.Changed()
	if c, ok := a.src.(completer); ok {
		completed = c.Completed()
		if completed == changes {
			changes = nil // every change is complete
		}
	}
	return changes, completed
}

// loop is Run's schedule: the sync debounced (pending names its cause),
// the retry after a failure and its backoff.
type loop struct {
	a        *Agent
	watch    *targetWatch
	certs    *certsWatch // nil unless the runtime target is on
	debounce *time.Timer
	retry    *time.Timer
	expiry   *time.Timer // the next expiry threshold
	bo       wait.Backoff
	pending  string
	lastRun  time.Time
}

func (a *Agent) newLoop(watch *targetWatch) *loop {
	l := &loop{a: a, watch: watch, debounce: time.NewTimer(0), retry: time.NewTimer(0), expiry: time.NewTimer(0), bo: retryBackoff(a.opts.MaxBackoff)}
	<-l.debounce.C
	<-l.retry.C
	<-l.expiry.C
	return l
}

// run syncs now, and arms the retry after a failure.
func (l *loop) run(ctx context.Context, cause string) {
	defer func() { l.lastRun = time.Now() }()
	o := l.a.Sync(ctx, cause)
	l.watch.wrote(o.Results)
	l.watch.refresh()
	l.watch.polledDrift() // our own writes are the baseline, not drift
	if l.certs != nil {
		l.certs.refresh()
	}
	if in, ok := l.a.wakeIn(o.Expiry); ok {
		l.expiry.Reset(in)
	} else {
		l.expiry.Stop()
	}
	if o.Again {
		l.schedule(causeLogin)
	}
	if o.Err != nil || o.PluginErr != nil {
		l.retry.Reset(l.bo.Step())
	} else {
		l.retry.Stop()
		l.bo = retryBackoff(l.a.opts.MaxBackoff)
	}
}

// schedule syncs after Debounce, for the first cause since the last sync.
func (l *loop) schedule(cause string) {
	if l.pending == "" {
		l.pending = cause
	}
	l.debounce.Reset(l.a.opts.Debounce)
}

// now syncs at once unless a sync ran within Debounce or one is pending:
// then it is scheduled.
func (l *loop) now(ctx context.Context, cause string) {
	if l.pending == "" && time.Since(l.lastRun) >= l.a.opts.Debounce {
		l.run(ctx, cause)
		return
	}
	l.schedule(cause)
}
