package agent

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"
	"github.com/nodecreds/nodecreds/internal/verifier"
)

// Verifier logs in with credentials before they replace the ones on the
// node (verifier.Verifier).
type Verifier interface {
	// Check is the verdict on c for host (Pending when unknown).
	Check(host string, c kubeletcred.Cred) verifier.Result
	// Start schedules a login with c, unless one is made or answered;
	// StartNow without the random wait (the agent's first sync).
	Start(host string, c kubeletcred.Cred)
	StartNow(host string, c kubeletcred.Cred)
	// Settle marks c, never started, as in the node's files already.
	Settle(host string, c kubeletcred.Cred)
	// Waiting reports whether c's first login is still to answer.
	Waiting(host string, c kubeletcred.Cred) bool
	// Skip gives c, never started, the verdict Unverifiable with reason.
	Skip(host string, c kubeletcred.Cred, reason string)
	// Sweep forgets what no Check asked about since the last Sweep (and
	// saves the rejections that are left).
	Sweep(ctx context.Context) error
	// Changed fires when a verdict changed.
	Changed() <-chan struct{}
	// Wait blocks until every credential started has a first verdict.
	Wait(ctx context.Context) error
}

// login is one source entry's verification in a sync.
type login struct {
	source, key string
	host        string // the registry logged in to; "" when none can be
	cred        kubeletcred.Cred
	result      verifier.Result
	// kept: the node keeps its previous entry for the key (the new one
	// waits for its login, or was rejected).
	kept bool
}

// unverifiable says why an entry cannot be verified ("" when it can).
func unverifiable(key string, e dockercfg.Entry) string {
	switch {
	case strings.Contains(key, "*"):
		return "a wildcard key names no single registry to log in to"
	case e.IdentityToken != "" || e.RegistryToken != "":
		return "an identity or registry token is not verified"
	case e.Username == "" && e.Password == "":
		return "no username or password to log in with"
	}
	return ""
}

// loginHost is the registry host of a key, as a login reaches it.
func loginHost(key string) string {
	host, _, _ := strings.Cut(dockercfg.Normalize(key), "/")
	return host
}

// logins looks up the verdict on every entry of the sources that verify,
// and names those whose new value must wait (Pending or Rejected): the
// node keeps its previous entry for them, where it has one.
func (a *Agent) logins(d nodefile.Desired) ([]login, map[nodefile.KeepID]bool) {
	v := a.opts.Verifier
	if v == nil {
		return nil, nil
	}
	var out []login
	keep := map[nodefile.KeepID]bool{}
	// Only what the node gets: the first source to name a registry wins
	// it (dockercfg.View's rule); another's entry for it is never
	// written, and has nothing to verify.
	winner := map[string]string{}
	for _, ns := range d.Sources {
		noVerify := a.lastGood[ns.Name].NoVerify
		for _, it := range ns.Set {
			n := dockercfg.Normalize(it.Key)
			w, seen := winner[n]
			if !seen && len(winner) >= maxVerified {
				a.sayOverVerified()
				return out, keep
			}
			if seen && w != ns.Name || noVerify {
				winner[n] = cmp.Or(w, ns.Name)
				continue
			}
			winner[n] = ns.Name
			l := login{source: ns.Name, key: it.Key}
			if why := unverifiable(it.Key, it.Entry); why != "" {
				l.result = verifier.Result{Verdict: verifier.Unverifiable, Reason: why}
				out = append(out, l)
				continue
			}
			l.host = loginHost(it.Key)
			l.cred = kubeletcred.Cred{Key: it.Key, Username: it.Entry.Username, Password: it.Entry.Password}
			l.result = v.Check(l.host, l.cred)
			switch l.result.Verdict {
			case verifier.Pending:
				// The whole source waits: its rotation reaches the
				// files in one write once the logins have answered.
				keep[nodefile.KeepID{Source: ns.Name}] = true
			case verifier.Rejected:
				keep[nodefile.KeepID{Source: ns.Name, Registry: n}] = true
			}
			out = append(out, l)
		}
	}
	return out, keep
}

// maxVerified bounds the registries verification looks at, all sources
// together in precedence order: what it keeps per entry (the verdict, the
// hold, the login to make) must not grow an agent holding the largest
// Secrets past its memory limit. The registries after them are applied
// unverified, which the log says once.
const maxVerified = 1024

// sayOverVerified logs, once, that some registries are not verified.
func (a *Agent) sayOverVerified() {
	if a.overVerified {
		return
	}
	a.overVerified = true
	a.log.WithField("verified", maxVerified).Warn("the sources name more registries than are verified; the rest are applied without a login")
}

// maxLoginsPerSource bounds the logins one sync starts for one source: a
// Secret with thousands of changed entries would otherwise hold every
// other rotation behind its logins. The rest are applied unverified.
const maxLoginsPerSource = 32

// afterWrite starts the logins the files call for: for the entries whose
// previous value the node kept (a change) and for those written new (no
// previous value of nodecreds'); an entry already in the files as it is
// is in force, with no login. It reports whether a kept entry waits for
// its first login: the sync is then not finished, and is not reported as
// applied.
func (a *Agent) afterWrite(ctx context.Context, logins []login, results []nodefile.Result, held bool) (waiting, again bool) {
	v := a.opts.Verifier
	if v == nil {
		return false, false
	}
	kept, fresh := map[string]bool{}, map[string]bool{}
	// In force only where every target was synced: a target that failed
	// said nothing of what it holds.
	synced := len(results) > 0
	for _, r := range results {
		synced = synced && r.Err == nil
		for _, k := range r.Kept {
			kept[dockercfg.Normalize(k)] = true
		}
		for _, k := range r.Fresh {
			fresh[dockercfg.Normalize(k)] = true
		}
	}
	started := map[string]int{}
	var inForce []*login
	for i := range logins {
		l := &logins[i]
		n := dockercfg.Normalize(l.key)
		l.kept = kept[n]
		switch {
		case l.host == "" || l.result.Verdict != verifier.Pending:
		case !l.kept && !fresh[n]:
			inForce = append(inForce, l)
		case started[l.source] >= maxLoginsPerSource:
			v.Skip(l.host, l.cred, fmt.Sprintf("more than %d credentials of one Secret changed at once; the rest are applied unverified", maxLoginsPerSource))
		case !a.synced:
			// A new agent (a restart, a DaemonSet's rollout) with a
			// rotation waiting for it: at once, without the spread.
			started[l.source]++
			v.StartNow(l.host, l.cred)
		default:
			started[l.source]++
			v.Start(l.host, l.cred)
		}
	}
	// After the logins are started: one credential can stand for two
	// keys (a robot account for two paths of a registry), one in the
	// files already and one changed; Settle leaves one whose login is
	// scheduled alone.
	for _, l := range inForce {
		if synced {
			v.Settle(l.host, l.cred)
		}
	}
	anyKept := len(kept) > 0
	for _, l := range logins {
		waiting = waiting || anyKept && l.host != "" && v.Waiting(l.host, l.cred)
	}
	if err := v.Sweep(ctx); err != nil {
		a.log.WithError(err).Warn("rejected credentials not saved; a restarted agent would log in with them again")
	}
	// A source held whole for its logins, none of them outstanding now
	// (each settled, skipped or answered): the next sync writes it.
	again = held && anyKept && synced && !waiting
	return waiting, again
}

// verifyReport adds the rejections to the problems (reason
// CredentialsRejected unless another failure was named first; the
// condition False) and the credentials applied unverified to the warnings.
func verifyReport(st *nodestatus.SyncStatus, logins []login, problems, warnings []string) (p, w []string) {
	if rejected := verifyProblems(logins); len(rejected) > 0 {
		if st.Reason == "Synced" {
			st.Reason = "CredentialsRejected"
		}
		st.OK = false
		problems = append(problems, rejected...)
	}
	return problems, append(warnings, verifyWarnings(logins)...)
}

// verifyProblems words the rejections for the condition: the Secret, the
// registry and the status, never a value.
func verifyProblems(logins []login) []string {
	var out []string
	for _, l := range logins {
		if l.result.Verdict != verifier.Rejected {
			continue
		}
		what := "the node keeps its previous ones until a login with the new ones succeeds (retried with backoff)"
		if !l.kept {
			what = "written all the same: the node had none of its own for it (retried with backoff)"
		}
		host, key := dockercfg.SafeKey(l.host), ""
		if k := dockercfg.SafeKey(l.key); k != host {
			key = " (key " + k + ")"
		}
		out = append(out, fmt.Sprintf("Secret %s: registry %s rejected the new credentials%s (HTTP %d, %s); %s",
			l.source, host, key, l.result.Status, l.result.Reason, what))
	}
	return out
}

// verifyWarnings words the credentials applied without a verdict. Why
// (refused, timed out, a status) is in the agent's log only: on the Node,
// where more people read than the Secret's writers, it would tell what
// answers at an address a Secret names.
func verifyWarnings(logins []login) []string {
	var out []string
	for _, l := range logins {
		if l.result.Verdict == verifier.Unverifiable && l.host != "" {
			out = append(out, fmt.Sprintf("Secret %s: new credentials for %s applied unverified (the agent's log says why)", l.source, dockercfg.SafeKey(l.key)))
		}
	}
	return out
}

// recordLogins logs each entry's verdict when it changes and sets the
// rejection metric.
func (a *Agent) recordLogins(log *logrus.Entry, logins []login) {
	said := make(map[string]string, len(logins))
	a.count(func(m *metrics.Metrics) { m.Rejected.Reset() })
	for _, l := range logins {
		id := l.source + "\x00" + l.key
		now := l.result.Verdict.String() + fmt.Sprint(l.result.Status, l.result.Reason, l.kept)
		said[id] = now
		if l.result.Verdict == verifier.Rejected {
			a.count(func(m *metrics.Metrics) { m.Rejected.WithLabelValues(l.source, dockercfg.SafeKey(l.key)).Set(1) })
		}
		if a.loginsSaid[id] == now {
			continue
		}
		ll := log.WithFields(logrus.Fields{"source": l.source, "key": dockercfg.SafeKey(l.key), "verdict": l.result.Verdict.String()})
		if l.host != "" {
			ll = ll.WithField("registry", dockercfg.SafeKey(l.host))
		}
		switch l.result.Verdict {
		case verifier.Rejected:
			ll.WithFields(logrus.Fields{"status": l.result.Status, "reason": l.result.Reason, "keptPrevious": l.kept}).Warn("the registry rejected the new credentials")
		case verifier.Unverifiable:
			ll.WithField("reason", l.result.Reason).Warn("new credentials applied without verification")
		case verifier.Verified:
			ll.Info("new credentials verified by a login")
		case verifier.InForce:
			ll.Debug("credentials already in the node's files; no login")
		default:
			ll.WithField("keptPrevious", l.kept).Debug("logging in with the new credentials before they are applied")
		}
	}
	a.loginsSaid = said
}

// versions records, for each source in force, the version applied and
// how long it took to apply since first seen (a rotation).
func (a *Agent) versions(o Outcome) {
	now := time.Now()
	for _, s := range o.Sources {
		if s.Err != nil {
			continue
		}
		seen, ok := a.seen[s.Name]
		if !ok || seen.revision != s.Revision {
			seen = seenVersion{revision: s.Revision, at: now, rotation: ok}
			a.seen[s.Name] = seen
		}
		if o.Err != nil || o.Verifying || seen.applied {
			continue
		}
		seen.applied = true
		a.seen[s.Name] = seen
		a.count(func(m *metrics.Metrics) {
			m.SourceVersion.DeletePartialMatch(map[string]string{"source": s.Name})
			m.SourceVersion.WithLabelValues(s.Name, s.Revision).Set(1)
			if seen.rotation {
				m.Rotation.Observe(now.Sub(seen.at).Seconds())
			}
		})
	}
	for name := range a.seen {
		if !hasSource(o.Sources, name) {
			delete(a.seen, name)
			a.count(func(m *metrics.Metrics) { m.SourceVersion.DeletePartialMatch(map[string]string{"source": name}) })
		}
	}
}

// seenVersion is when a source's version was first seen, and whether it
// is applied.
type seenVersion struct {
	revision string
	at       time.Time
	rotation bool // it replaced a version seen before
	applied  bool
}

func hasSource(snaps []source.Snapshot, name string) bool {
	for _, s := range snaps {
		if s.Name == name {
			return true
		}
	}
	return false
}

// holdsWhole reports whether keep holds a whole source.
func holdsWhole(keep map[nodefile.KeepID]bool) bool {
	for k := range keep {
		if k.Registry == "" {
			return true
		}
	}
	return false
}
