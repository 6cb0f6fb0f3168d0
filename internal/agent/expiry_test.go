package agent

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"
)

// clock is the agent's injected time, moved by the test.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

const expiryPassword = "expiry-canary-password"

// ecrKey is the key external-secrets' ECR generator gives (proxy_endpoint).
const ecrKey = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"

func expiring(name string, at time.Time, keys ...string) source.Snapshot {
	s := source.Snapshot{Name: name, Revision: name + "@" + at.String(), ExpiresAt: at}
	for _, k := range keys {
		s.Set = append(s.Set, dockercfg.Item{Key: k, Entry: dockercfg.Entry{Username: "AWS", Password: expiryPassword}})
	}
	return s
}

type expiryAgent struct {
	*Agent
	src   *fakeSource
	clock *clock
	m     *metrics.Metrics
	reg   *prometheus.Registry
	files *fakeFiles
	logs  *logtest.Hook
}

func newExpiryAgent(share float64, minimum time.Duration) expiryAgent {
	c := &clock{now: t0}
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	src, files := &fakeSource{}, &fakeFiles{}
	reg := prometheus.NewRegistry()
	m := metrics.NewMetrics(reg)
	a := New(src, files, Options{Targets: []string{"/t"}, Prune: true, Metrics: m,
		Expiry: ExpiryOptions{WarnShare: share, WarnMin: minimum, Now: c.Now}}, logrus.NewEntry(logger))
	return expiryAgent{Agent: a, src: src, clock: c, m: m, reg: reg, files: files, logs: hook}
}

// sync syncs at t0+at with the sources given.
func (e expiryAgent) sync(t *testing.T, at time.Duration, snaps ...source.Snapshot) (Outcome, nodestatus.SyncStatus) {
	t.Helper()
	e.clock.now = t0.Add(at)
	e.src.snaps = snaps
	o := e.Sync(t.Context(), "test")
	return o, o.Status()
}

// TestExpiryThresholds: with the defaults (10 % or 15 minutes, the larger),
// the floor wins for a 1 h token and the share for a 12 h one; the
// condition is True and CredentialsExpiring inside the margin, False and
// CredentialsExpired after the expiry, and the agent wakes up at the next
// threshold.
func TestExpiryThresholds(t *testing.T) {
	tests := []struct {
		name       string
		lifetime   time.Duration
		elapsed    time.Duration // since first seen
		wantState  ExpiryState
		wantReason string
		wantOK     bool
		wantNext   time.Duration // since first seen; 0: none ahead
	}{
		{"1h token, fresh", time.Hour, 44 * time.Minute, ExpiryFresh, "Synced", true, 45 * time.Minute},
		{"1h token, the 15 min floor wins over 6 min", time.Hour, 45 * time.Minute, ExpiryExpiring, ReasonExpiring, true, time.Hour},
		{"1h token, expired", time.Hour, time.Hour, ExpiryExpired, ReasonExpired, false, 0},
		{"12h token, fresh with 73 min left", 12 * time.Hour, 12*time.Hour - 73*time.Minute, ExpiryFresh, "Synced", true, 12*time.Hour - 72*time.Minute},
		{"12h token, 10 % (72 min) wins over 15 min", 12 * time.Hour, 12*time.Hour - 72*time.Minute, ExpiryExpiring, ReasonExpiring, true, 12 * time.Hour},
		{"12h token, expired long ago", 12 * time.Hour, 20 * time.Hour, ExpiryExpired, ReasonExpired, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newExpiryAgent(0.1, 15*time.Minute)
			s := expiring("nodecreds/ecr", t0.Add(tt.lifetime), ecrKey)
			a.sync(t, 0, s) // first seen
			o, st := a.sync(t, tt.elapsed, s)
			if len(o.Expiry.Sources) != 1 {
				t.Fatalf("expiries = %+v", o.Expiry)
			}
			e := o.Expiry.Sources[0]
			if e.State != tt.wantState || e.Lifetime != tt.lifetime {
				t.Errorf("state %v lifetime %v, want %v %v", e.State, e.Lifetime, tt.wantState, tt.lifetime)
			}
			if st.Reason != tt.wantReason || st.OK != tt.wantOK || st.Warn != (tt.wantReason == ReasonExpiring) {
				t.Errorf("status = %+v, want reason %s OK %v", st, tt.wantReason, tt.wantOK)
			}
			if got := o.Expiry.Next; tt.wantNext == 0 && !got.IsZero() || tt.wantNext != 0 && !got.Equal(t0.Add(tt.wantNext)) {
				t.Errorf("next wake-up %v, want t0+%v", got, tt.wantNext)
			}
			if in, ok := a.wakeIn(o.Expiry); ok != (tt.wantNext != 0) || ok && in != tt.wantNext-tt.elapsed+50*time.Millisecond {
				t.Errorf("wakeIn = %v %v", in, ok)
			}
			if o.Err != nil || a.files.desired.Keys()[0] != ecrKey {
				t.Errorf("the credentials were not applied: %v %v", o.Err, a.files.desired.Keys())
			}
			if tt.wantState != ExpiryFresh {
				for _, want := range []string{"nodecreds/ecr", ecrKey, t0.Add(tt.lifetime).Format(time.RFC3339)} {
					if !strings.Contains(st.Message, want) {
						t.Errorf("message %q does not name %q", st.Message, want)
					}
				}
			}
		})
	}
}

// TestExpiryRefresh: a Secret updated with a later expiry clears the state
// at once, and the lifetime counts from when that new value was first seen
// (not from the first value, nor from each sync).
func TestExpiryRefresh(t *testing.T) {
	a := newExpiryAgent(0.1, 15*time.Minute)
	first := expiring("nodecreds/ecr", t0.Add(time.Hour), ecrKey)
	a.sync(t, 0, first)
	if _, st := a.sync(t, 61*time.Minute, first); st.Reason != ReasonExpired || st.OK {
		t.Fatalf("after the expiry: %+v", st)
	}
	later := expiring("nodecreds/ecr", t0.Add(3*time.Hour), ecrKey)
	o, st := a.sync(t, 62*time.Minute, later)
	if st.Reason != "Synced" || !st.OK || st.Warn {
		t.Errorf("a later expiry did not clear the condition: %+v", st)
	}
	if got := o.Expiry.Sources[0].Lifetime; got != 3*time.Hour-62*time.Minute {
		t.Errorf("lifetime after a new value = %v, want %v", got, 3*time.Hour-62*time.Minute)
	}
	// The same value seen again keeps its first-seen time.
	if o, _ := a.sync(t, 90*time.Minute, later); o.Expiry.Sources[0].Lifetime != 3*time.Hour-62*time.Minute {
		t.Errorf("lifetime moved with the same value: %v", o.Expiry.Sources[0].Lifetime)
	}
	// An expiry seen only after it passed: lifetime 0, expired.
	past := expiring("nodecreds/ecr", t0.Add(2*time.Hour), ecrKey)
	if o, st := a.sync(t, 4*time.Hour, past); o.Expiry.Sources[0].Lifetime != 0 || st.Reason != ReasonExpired {
		t.Errorf("an expiry seen after it passed: %+v, %+v", o.Expiry.Sources[0], st)
	}
}

// TestExpiryPrecedence: a failure keeps its reason over both expiry states
// (an expiry passed still turns the condition False and is named); an
// expiry passed wins over another one expiring; expiring wins over a
// containerd warning; an invalid annotation is a warning that never blocks
// the credentials.
func TestExpiryPrecedence(t *testing.T) {
	soon := expiring("nodecreds/a", t0.Add(10*time.Minute), "a.test")
	gone := expiring("nodecreds/b", t0.Add(-time.Minute), "b.test")
	invalid := expiring("nodecreds/c", time.Time{}, "c.test")
	invalid.ExpiryErr = fmt.Errorf("Secret nodecreds/c: %w: an RFC 3339 time is needed", source.ErrExpiresAt)
	targetErr := []nodefile.Result{{Target: "/t", Err: errors.New("/t: read-only file system")}}
	tests := []struct {
		name       string
		snaps      []source.Snapshot
		results    []nodefile.Result
		wantReason string
		wantOK     bool
		wantWarn   bool
		wantIn     []string
	}{
		{"expiring", []source.Snapshot{soon}, nil, ReasonExpiring, true, true, []string{"nodecreds/a", "a.test"}},
		{"expired wins over expiring", []source.Snapshot{soon, gone}, nil, ReasonExpired, false, false, []string{"nodecreds/a", "nodecreds/b"}},
		{"a failure wins over expiring", []source.Snapshot{soon}, targetErr, "TargetError", false, false, []string{"read-only", "nodecreds/a"}},
		{"a failure wins over expired", []source.Snapshot{gone}, targetErr, "TargetError", false, false, []string{"read-only", "nodecreds/b"}},
		{"invalid annotation", []source.Snapshot{invalid}, nil, ReasonExpiresAtInvalid, true, true, []string{"nodecreds/c", "RFC 3339"}},
		{"expiring wins over an invalid annotation", []source.Snapshot{invalid, soon}, nil, ReasonExpiring, true, true, []string{"nodecreds/c", "nodecreds/a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newExpiryAgent(0.1, 15*time.Minute)
			o, _ := a.sync(t, 0, tt.snaps...)
			if len(a.files.desired) != len(tt.snaps) {
				t.Errorf("applied %v", a.files.desired.Keys())
			}
			o.Results = tt.results
			if tt.results != nil {
				o.Err = tt.results[0].Err
			}
			st := o.Status()
			if st.Reason != tt.wantReason || st.OK != tt.wantOK || st.Warn != tt.wantWarn {
				t.Errorf("status = %+v; want %s OK %v warn %v", st, tt.wantReason, tt.wantOK, tt.wantWarn)
			}
			for _, want := range tt.wantIn {
				if !strings.Contains(st.Message, want) {
					t.Errorf("message %q does not name %q", st.Message, want)
				}
			}
		})
	}
}

// TestExpiryMetrics: one series per registry key of each source carrying
// the annotation, the expiry as Unix seconds and the lifetime from first
// seen; the series go when a key, the annotation or the source goes.
func TestExpiryMetrics(t *testing.T) {
	a := newExpiryAgent(0.1, 15*time.Minute)
	at := t0.Add(12 * time.Hour)
	ecr := expiring("nodecreds/ecr", at, ecrKey, "mirror.example.test")
	plain := expiring("nodecreds/plain", time.Time{}, "plain.test")
	a.sync(t, 0, ecr, plain)
	a.sync(t, time.Hour, ecr, plain) // the lifetime counts from first seen
	for _, key := range []string{ecrKey, "mirror.example.test"} {
		if got := a.gauge(t, "nodecreds_credentials_expiry_timestamp_seconds", "nodecreds/ecr", key); got != float64(at.Unix()) {
			t.Errorf("expiry{%s} = %v, want %d", key, got, at.Unix())
		}
		if got := a.gauge(t, "nodecreds_credentials_lifetime_seconds", "nodecreds/ecr", key); got != (12 * time.Hour).Seconds() {
			t.Errorf("lifetime{%s} = %v, want %v", key, got, (12 * time.Hour).Seconds())
		}
	}
	if n := a.series(t, "nodecreds_credentials_expiry_timestamp_seconds"); n != 2 {
		t.Errorf("%d expiry series, want 2 (none for a Secret without the annotation)", n)
	}
	one := expiring("nodecreds/ecr", at, ecrKey)
	a.sync(t, 2*time.Hour, one, plain)
	if n := a.series(t, "nodecreds_credentials_expiry_timestamp_seconds"); n != 1 {
		t.Errorf("%d expiry series after a key left, want 1", n)
	}
	a.sync(t, 3*time.Hour, plain)
	if n, l := a.series(t, "nodecreds_credentials_expiry_timestamp_seconds"), a.series(t, "nodecreds_credentials_lifetime_seconds"); n != 0 || l != 0 {
		t.Errorf("%d expiry and %d lifetime series after the Secret went, want 0", n, l)
	}
}

// TestExpiryLastGoodCounts: a Secret that cannot be read now keeps its
// last good credentials in force, and with them their expiry.
func TestExpiryLastGoodCounts(t *testing.T) {
	a := newExpiryAgent(0.1, 15*time.Minute)
	a.sync(t, 0, expiring("nodecreds/ecr", t0.Add(time.Hour), ecrKey))
	broken := bad("nodecreds/ecr", errors.New("not JSON"))
	o, st := a.sync(t, 2*time.Hour, broken)
	if len(o.Expiry.Sources) != 1 || o.Expiry.Sources[0].State != ExpiryExpired || !strings.Contains(st.Message, "expired at") {
		t.Errorf("the last good credentials' expiry is not reported: %+v, %+v", o.Expiry, st)
	}
}

// TestExpiryReportsNoSecret: the condition message and the logs of every
// expiry state name Secrets, registries and times, never a password.
func TestExpiryReportsNoSecret(t *testing.T) {
	a := newExpiryAgent(0.1, 15*time.Minute)
	s := expiring("nodecreds/ecr", t0.Add(time.Hour), ecrKey)
	var said strings.Builder
	for _, at := range []time.Duration{0, 50 * time.Minute, 2 * time.Hour} {
		_, st := a.sync(t, at, s)
		said.WriteString(st.Message + "\n")
	}
	_, st := a.sync(t, 3*time.Hour, expiring("nodecreds/ecr", t0.Add(5*time.Hour), ecrKey))
	said.WriteString(st.Message + "\n")
	for _, e := range a.logs.AllEntries() {
		line, _ := e.String()
		said.WriteString(line)
	}
	text := said.String()
	for _, want := range []string{"expire soon", "credentials expired", "credentials refreshed"} {
		if !strings.Contains(text, want) {
			t.Errorf("nothing logged saying %q:\n%s", want, text)
		}
	}
	for _, leak := range []string{expiryPassword, "AWS:" + expiryPassword, b64("AWS:" + expiryPassword)} {
		if strings.Contains(text, leak) {
			t.Errorf("a report holds a credential value:\n%s", text)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// gauge is the value of the series of name with those secret and registry
// labels, NaN when there is none.
func (e expiryAgent) gauge(t *testing.T, name, secret, registry string) float64 {
	t.Helper()
	for _, m := range e.family(t, name) {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["secret"] == secret && labels["registry"] == registry {
			return m.GetGauge().GetValue()
		}
	}
	return math.NaN()
}

func (e expiryAgent) series(t *testing.T, name string) int { return len(e.family(t, name)) }

func (e expiryAgent) family(t *testing.T, name string) []*dto.Metric {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

// TestFarExpiryWakesRarely: an expiry centuries ahead (valid RFC 3339)
// neither overflows the wait for the next threshold into a negative one
// (a timer firing after every sync) nor the warning margin.
func TestFarExpiryWakesRarely(t *testing.T) {
	a := New(&fakeSource{}, &fakeFiles{}, Options{Expiry: ExpiryOptions{WarnShare: 0.1, WarnMin: 15 * time.Minute}}, logrus.NewEntry(logrus.New()))
	far := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	in, ok := a.wakeIn(Expiries{Next: far})
	if !ok || in <= 0 || in > maxWake+time.Second {
		t.Errorf("wake in %s for an expiry in year 9999, want at most %s", in, maxWake)
	}
	if m := a.warnMargin(time.Duration(1<<63 - 1)); m <= 0 {
		t.Errorf("warning margin %s for the longest lifetime", m)
	}
}
