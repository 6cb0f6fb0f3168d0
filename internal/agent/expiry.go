package agent

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"
)

// Condition reasons of the expiry.
const (
	// ReasonExpiring keeps the condition True: the files are in sync, but
	// the credentials expire soon and no refresh came yet.
	ReasonExpiring = "CredentialsExpiring"
	// ReasonExpired turns it False: pulls with these credentials fail now.
	ReasonExpired = "CredentialsExpired"
	// ReasonExpiresAtInvalid keeps it True: an expiry annotation that does
	// not parse is ignored, and said so.
	ReasonExpiresAtInvalid = "ExpiresAtInvalid"
)

// ExpiryOptions says when credentials count as expiring: when less than
// max(WarnShare × their lifetime, WarnMin) is left. Their lifetime counts
// from when this agent first saw their expiry, so a token the Secret
// refreshes every 6 h for 12 h warns after 10.8 h, not 6 h too late.
type ExpiryOptions struct {
	WarnShare float64
	WarnMin   time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// ExpiryState is where credentials stand against their expiry.
type ExpiryState int

const (
	ExpiryFresh ExpiryState = iota
	ExpiryExpiring
	ExpiryExpired
)

func (s ExpiryState) String() string {
	return [...]string{"fresh", "expiring", "expired"}[s]
}

// Expiry is one source's expiry as the agent sees it now.
type Expiry struct {
	Source string
	// Registries are the source's keys as every output prints them.
	Registries []string
	At         time.Time
	// Lifetime is At less when this agent first saw At (never below 0).
	Lifetime time.Duration
	// WarnAt is when the credentials start counting as expiring.
	WarnAt time.Time
	State  ExpiryState
}

// Expiries is an outcome's expiry part.
type Expiries struct {
	Sources []Expiry
	// Invalid are the annotations ignored (source.ErrExpiresAt).
	Invalid []error
	// Next is when the state of one of Sources changes next, with no
	// Secret changing (zero when none will): the agent wakes up then.
	Next time.Time
}

// expiryTracker is the agent's memory of the expiries: when each value
// was first seen (in memory only: a restarted agent counts the lifetime
// from its start), the metric series it set, and what it logged.
type expiryTracker struct {
	seen    map[string]seenExpiry // by source
	series  map[[2]string]bool    // {secret, registry} labels set
	said    map[string]ExpiryState
	invalid map[string]string // the invalid annotation last logged, by source
}

type seenExpiry struct{ at, first time.Time }

func (a *Agent) expiryNow() time.Time {
	if a.opts.Expiry.Now != nil {
		return a.opts.Expiry.Now()
	}
	return time.Now()
}

// expiries works out, for the sources whose credentials are in force on
// the node (the valid ones, and the last good ones of those that cannot
// be read now), where they stand against their nodecreds.io/expires-at;
// it sets the expiry metrics and logs each change. Call it after desired,
// which keeps lastGood.
func (a *Agent) expiries(snaps []source.Snapshot) Expiries {
	t := a.expiry
	if t == nil {
		t = &expiryTracker{seen: map[string]seenExpiry{}, series: map[[2]string]bool{}, said: map[string]ExpiryState{}, invalid: map[string]string{}}
		a.expiry = t
	}
	now := a.expiryNow()
	var out Expiries
	series := map[[2]string]bool{}
	seen := map[string]bool{}
	for _, s := range snaps {
		g, ok := a.lastGood[s.Name]
		if !ok {
			continue
		}
		log := a.log.WithField("source", g.Name)
		if g.ExpiryErr != nil {
			out.Invalid = append(out.Invalid, g.ExpiryErr)
			if t.invalid[g.Name] != g.ExpiryErr.Error() {
				log.WithError(g.ExpiryErr).Warn("expiry annotation ignored")
			}
			t.invalid[g.Name] = g.ExpiryErr.Error()
		} else {
			delete(t.invalid, g.Name)
		}
		if g.ExpiresAt.IsZero() {
			continue
		}
		seen[g.Name] = true
		first, ok := t.seen[g.Name]
		if !ok || !first.at.Equal(g.ExpiresAt) {
			first = seenExpiry{at: g.ExpiresAt, first: now}
			t.seen[g.Name] = first
		}
		e := a.expiryOf(g, first.first, now)
		out.Sources = append(out.Sources, e)
		for _, next := range []time.Time{e.WarnAt, e.At} {
			if next.After(now) && (out.Next.IsZero() || next.Before(out.Next)) {
				out.Next = next
			}
		}
		for _, reg := range e.Registries {
			labels := [2]string{g.Name, reg}
			series[labels] = true
			a.count(func(m *metrics.Metrics) {
				m.Expiry.WithLabelValues(labels[0], labels[1]).Set(float64(e.At.UnixNano()) / 1e9)
				m.Lifetime.WithLabelValues(labels[0], labels[1]).Set(e.Lifetime.Seconds())
			})
		}
		t.logState(log, e)
	}
	a.forgetExpiries(seen, series)
	return out
}

// forgetExpiries drops what is known of sources no longer seen with an
// expiry, and the metric series no longer set.
func (a *Agent) forgetExpiries(seen map[string]bool, series map[[2]string]bool) {
	t := a.expiry
	for name := range t.seen {
		if !seen[name] {
			delete(t.seen, name)
			delete(t.said, name)
		}
	}
	for name := range t.invalid {
		if _, ok := a.lastGood[name]; !ok {
			delete(t.invalid, name)
		}
	}
	for labels := range t.series {
		if !series[labels] {
			a.count(func(m *metrics.Metrics) {
				m.Expiry.DeleteLabelValues(labels[0], labels[1])
				m.Lifetime.DeleteLabelValues(labels[0], labels[1])
			})
		}
	}
	t.series = series
}

// expiryOf is where source g's credentials stand at now, their expiry
// first seen at first.
func (a *Agent) expiryOf(g source.Snapshot, first, now time.Time) Expiry {
	keys := dockercfg.SafeKeys(g.Set.Keys())
	slices.Sort(keys)
	e := Expiry{Source: g.Name, Registries: slices.Compact(keys), At: g.ExpiresAt, Lifetime: max(g.ExpiresAt.Sub(first), 0)}
	e.WarnAt = e.At.Add(-a.warnMargin(e.Lifetime))
	switch {
	case !now.Before(e.At):
		e.State = ExpiryExpired
	case !now.Before(e.WarnAt):
		e.State = ExpiryExpiring
	}
	return e
}

// warnMargin is how long before the expiry credentials of that lifetime
// count as expiring.
func (a *Agent) warnMargin(lifetime time.Duration) time.Duration {
	// A far expiry (RFC 3339 reaches year 9999) makes a lifetime at the
	// edge of time.Duration: its share is figured in float and clamped,
	// never converted past the edge.
	share := min(a.opts.Expiry.WarnShare*float64(lifetime), float64(maxMargin))
	return max(time.Duration(share), a.opts.Expiry.WarnMin)
}

// maxMargin is the longest warning: a century, well inside time.Duration.
const maxMargin = 100 * 365 * 24 * time.Hour

// maxWake bounds the wait for the next expiry threshold: a date centuries
// ahead would overflow time.Duration (and a negative wait would fire at
// once, again and again); waking once a day and working it out afresh
// costs nothing.
const maxWake = 24 * time.Hour

// logState logs a source's expiry state when it changes: nothing while
// fresh from the start, a warning, an error, and when a refresh clears it.
func (t *expiryTracker) logState(log *logrus.Entry, e Expiry) {
	before, known := t.said[e.Source]
	t.said[e.Source] = e.State
	if known && before == e.State || !known && e.State == ExpiryFresh {
		return
	}
	l := log.WithFields(logrus.Fields{"registries": e.Registries, "expiresAt": e.At.UTC().Format(time.RFC3339), "lifetime": e.Lifetime.String()})
	switch e.State {
	case ExpiryExpired:
		l.Error("credentials expired and the Secret was not refreshed: pulls with them fail")
	case ExpiryExpiring:
		l.Warn("credentials expire soon and the Secret was not refreshed yet")
	default:
		l.Info("credentials refreshed: the expiry is ahead again")
	}
}

// wakeIn is how long until the next expiry threshold (ok false: none is
// ahead), a little after it so the sync then finds it crossed.
func (a *Agent) wakeIn(e Expiries) (time.Duration, bool) {
	if e.Next.IsZero() {
		return 0, false
	}
	return min(max(e.Next.Sub(a.expiryNow()), 0), maxWake) + 50*time.Millisecond, true
}

// report adds the expiry to a status: an expiry passed is a problem (the
// condition False with reason CredentialsExpired, unless a failure already
// gave its reason); credentials expiring, and annotations ignored, are
// warnings (a reason of their own only where the sync is otherwise fine).
// The messages name Secrets, registries and times, never a value.
func (e Expiries) report(st *nodestatus.SyncStatus, problems, warnings []string) ([]string, []string) {
	failing := len(problems) > 0 || !st.OK
	var expired, expiring []string
	for _, x := range e.Sources {
		at := x.At.UTC().Format(time.RFC3339)
		switch x.State {
		case ExpiryExpired:
			expired = append(expired, fmt.Sprintf("credentials of Secret %s for %s expired at %s (its %s annotation) and the Secret was not refreshed", x.Source, listed(x.Registries), at, source.AnnotationExpiresAt))
		case ExpiryExpiring:
			expiring = append(expiring, fmt.Sprintf("credentials of Secret %s for %s expire at %s, no refresh came yet (warned %s before: the larger of a share of their %s lifetime and a minimum)", x.Source, listed(x.Registries), at, x.At.Sub(x.WarnAt), x.Lifetime))
		}
	}
	var invalid []string
	for _, err := range e.Invalid {
		invalid = append(invalid, err.Error())
	}
	if len(expired) > 0 {
		st.OK = false
		if !failing {
			st.Reason, st.Warn = ReasonExpired, false
		}
	}
	switch {
	case st.Reason != "Synced":
	case len(expiring) > 0:
		st.Reason, st.Warn = ReasonExpiring, true
	case len(invalid) > 0:
		st.Reason, st.Warn = ReasonExpiresAtInvalid, true
	}
	return append(problems, expired...), slices.Concat(expiring, invalid, warnings)
}

// listedRegistries bounds the registries one message names.
const listedRegistries = 5

// listed names registries for a message: all, or the first few and how
// many more.
func listed(regs []string) string {
	if len(regs) <= listedRegistries {
		return strings.Join(regs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(regs[:listedRegistries], ", "), len(regs)-listedRegistries)
}
