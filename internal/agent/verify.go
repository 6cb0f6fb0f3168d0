package agent

import (
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
	// Start schedules a login with c, unless one is made or answered.
	Start(host string, c kubeletcred.Cred)
	// Sweep forgets what no Check asked about since the last Sweep.
	Sweep()
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
	for _, ns := range d.Sources {
		if a.lastGood[ns.Name].NoVerify {
			continue
		}
		for _, it := range ns.Set {
			l := login{source: ns.Name, key: it.Key}
			if why := unverifiable(it.Key, it.Entry); why != "" {
				l.result = verifier.Result{Verdict: verifier.Unverifiable, Reason: why}
				out = append(out, l)
				continue
			}
			l.host = loginHost(it.Key)
			l.cred = kubeletcred.Cred{Key: it.Key, Username: it.Entry.Username, Password: it.Entry.Password}
			l.result = v.Check(l.host, l.cred)
			if l.result.Verdict == verifier.Pending || l.result.Verdict == verifier.Rejected {
				keep[nodefile.KeepID{Source: ns.Name, Registry: dockercfg.Normalize(it.Key)}] = true
			}
			out = append(out, l)
		}
	}
	return out, keep
}

// afterWrite starts the logins still to make and marks what the node
// kept. It reports whether a kept entry waits for its first login: the
// sync is then not finished, and is not reported as applied.
func (a *Agent) afterWrite(logins []login, results []nodefile.Result) (waiting bool) {
	v := a.opts.Verifier
	if v == nil {
		return false
	}
	kept := map[string]bool{}
	for _, r := range results {
		for _, k := range r.Kept {
			kept[k] = true
		}
	}
	for i := range logins {
		l := &logins[i]
		l.kept = kept[l.key]
		if l.host != "" && l.result.Verdict == verifier.Pending {
			v.Start(l.host, l.cred)
			waiting = waiting || l.kept
		}
	}
	v.Sweep()
	return waiting
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
		key := ""
		if k := dockercfg.SafeKey(l.key); k != l.host {
			key = " (key " + k + ")"
		}
		out = append(out, fmt.Sprintf("Secret %s: registry %s rejected the new credentials%s (HTTP %d, %s); %s",
			l.source, l.host, key, l.result.Status, l.result.Reason, what))
	}
	return out
}

// verifyWarnings words the credentials applied without a verdict.
func verifyWarnings(logins []login) []string {
	var out []string
	for _, l := range logins {
		if l.result.Verdict == verifier.Unverifiable && l.host != "" {
			out = append(out, fmt.Sprintf("Secret %s: new credentials for %s applied unverified (%s)", l.source, dockercfg.SafeKey(l.key), l.result.Reason))
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
			ll = ll.WithField("registry", l.host)
		}
		switch l.result.Verdict {
		case verifier.Rejected:
			ll.WithFields(logrus.Fields{"status": l.result.Status, "reason": l.result.Reason, "keptPrevious": l.kept}).Warn("the registry rejected the new credentials")
		case verifier.Unverifiable:
			ll.WithField("reason", l.result.Reason).Warn("new credentials applied without verification")
		case verifier.Verified:
			ll.Info("new credentials verified by a login")
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
