package verifier

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
)

// script answers each login with the next result, the last one again
// once they run out.
type script struct {
	mu    sync.Mutex
	next  []check.ProbeResult
	calls int
}

func (s *script) Probe(_ context.Context, registry, repository string, _ kubeletcred.Cred) check.ProbeResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	r := s.next[0]
	if len(s.next) > 1 {
		s.next = s.next[1:]
	}
	return r
}

var (
	ok           = check.ProbeResult{OK: true, Status: 200}
	anonymous    = check.ProbeResult{OK: true, Status: 200, Anonymous: true}
	unauthorized = check.ProbeResult{Status: 401, Codes: []string{"UNAUTHORIZED"}, Error: "UNAUTHORIZED"}
	forbidden    = check.ProbeResult{Status: 403, Error: "Forbidden"}
	unavailable  = check.ProbeResult{Status: 503, Error: "Service Unavailable"}
	timedOut     = check.ProbeResult{Error: "timed out"}
)

// TestVerdicts: each answer's verdict, and the rule that a rejected
// credential is let in only by a login that succeeds (never because the
// registry could not be asked).
func TestVerdicts(t *testing.T) {
	tests := []struct {
		name    string
		answers []check.ProbeResult
		want    []Verdict // the verdicts seen, in order
		status  int
	}{
		{"verified", []check.ProbeResult{ok}, []Verdict{Verified}, 0},
		{"rejected with 401", []check.ProbeResult{unauthorized}, []Verdict{Rejected}, 401},
		{"rejected with 403", []check.ProbeResult{forbidden}, []Verdict{Rejected}, 403},
		{"a 5xx is unverifiable", []check.ProbeResult{unavailable}, []Verdict{Unverifiable}, 503},
		{"no answer is unverifiable", []check.ProbeResult{timedOut}, []Verdict{Unverifiable}, 0},
		{"a registry that lets anyone in proves nothing", []check.ProbeResult{anonymous}, []Verdict{Unverifiable}, 200},
		{"rejected, then accepted on a retry", []check.ProbeResult{unauthorized, ok}, []Verdict{Rejected, Verified}, 0},
		{"rejected, then unreachable: still rejected, then accepted", []check.ProbeResult{unauthorized, timedOut, unavailable, anonymous, ok}, []Verdict{Rejected, Verified}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := metrics.NewMetrics(reg)
			s := &script{next: tt.answers}
			v := New(s, Options{Retry: 5 * time.Millisecond, MaxRetry: 20 * time.Millisecond, Metrics: m})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go v.Run(ctx) // returns nil when ctx ends
			c := kubeletcred.Cred{Key: "r.test", Username: "u", Password: "p"}
			if got := v.Check("r.test", c); got.Verdict != Pending {
				t.Fatalf("before any login: %v, want pending", got.Verdict)
			}
			v.Start("r.test", c)
			var seen []Verdict
			deadline := time.After(5 * time.Second)
			for len(seen) < len(tt.want) {
				select {
				case <-v.Changed():
				case <-deadline:
					t.Fatalf("verdicts seen %v, want %v", seen, tt.want)
				}
				got := v.Check("r.test", c)
				if len(seen) == 0 || seen[len(seen)-1] != got.Verdict {
					seen = append(seen, got.Verdict)
				}
			}
			for i := range tt.want {
				if seen[i] != tt.want[i] {
					t.Fatalf("verdicts %v, want %v", seen, tt.want)
				}
			}
			if got := v.Check("r.test", c); got.Status != tt.status && tt.status != 0 {
				t.Errorf("status %d, want %d", got.Status, tt.status)
			}
			if n := testutil.ToFloat64(m.Logins.WithLabelValues(tt.want[len(tt.want)-1].String())); n < 1 {
				t.Errorf("no login counted as %s", tt.want[len(tt.want)-1])
			}
		})
	}
}

// TestOneLoginPerCredential: a credential is logged in with once, however
// often it is checked and started, and again only when it changes.
func TestOneLoginPerCredential(t *testing.T) {
	s := &script{next: []check.ProbeResult{ok}}
	v := New(s, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go v.Run(ctx) // returns nil when ctx ends
	c := kubeletcred.Cred{Username: "u", Password: "p"}
	for range 5 {
		v.Check("r.test", c)
		v.Start("r.test", c)
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		v.Start("r.test", c)
	}
	if s.calls != 1 {
		t.Errorf("%d logins for one credential, want 1", s.calls)
	}
	c.Password = "rotated"
	v.Start("r.test", c)
	if err := v.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if s.calls != 2 {
		t.Errorf("%d logins after a rotation, want 2", s.calls)
	}
}

// TestSweepStopsRetries: a rejected credential that left the sources is
// forgotten, and no longer tried.
func TestSweepStopsRetries(t *testing.T) {
	s := &script{next: []check.ProbeResult{unauthorized}}
	v := New(s, Options{Retry: time.Millisecond, MaxRetry: time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go v.Run(ctx) // returns nil when ctx ends
	c := kubeletcred.Cred{Username: "u", Password: "wrong"}
	v.Check("r.test", c)
	v.Start("r.test", c)
	<-v.Changed()
	v.Sweep(ctx) // asked this generation: kept
	v.Sweep(ctx) // not asked since: forgotten
	v.mu.Lock()
	n := len(v.creds)
	v.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d credentials kept after they left the sources", n)
	}
	time.Sleep(20 * time.Millisecond) // retries would have run many times
	s.mu.Lock()
	before := s.calls
	s.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	s.mu.Lock()
	after := s.calls
	s.mu.Unlock()
	if after != before {
		t.Errorf("a forgotten credential is still tried: %d logins, then %d", before, after)
	}
}

// memStore is a Store in memory.
type memStore struct {
	mu sync.Mutex
	rs []nodefile.Rejection
}

func (m *memStore) LoadRejections(context.Context) ([]nodefile.Rejection, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.rs), nil
}

func (m *memStore) SaveRejections(_ context.Context, rs []nodefile.Rejection) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rs = slices.Clone(rs)
	return nil
}

// TestRejectionOutlivesTheProcess: a rejection is kept in the Store (a
// digest, never the password), so a new process (a restarted agent, the
// next sync --once) holds the credential back until a login succeeds —
// an unreachable registry does not let it in.
func TestRejectionOutlivesTheProcess(t *testing.T) {
	store := &memStore{}
	c := kubeletcred.Cred{Username: "u", Password: "rejected-pw"}
	first := New(&script{next: []check.ProbeResult{unauthorized}}, Options{Store: store})
	ctx, cancel := context.WithCancel(t.Context())
	go first.Run(ctx) // returns nil when ctx ends
	first.Check("r.test", c)
	first.Start("r.test", c)
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if len(store.rs) != 1 || store.rs[0].Status != 401 {
		t.Fatalf("store holds %+v, want the rejection", store.rs)
	}
	if strings.Contains(fmt.Sprint(store.rs), "rejected-pw") {
		t.Fatal("the store holds the password")
	}

	s := &script{next: []check.ProbeResult{timedOut, ok}}
	second := New(s, Options{Store: store, Retry: 5 * time.Millisecond, MaxRetry: 5 * time.Millisecond})
	if err := second.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := second.Check("r.test", c); got.Verdict != Rejected {
		t.Fatalf("after a restart: %v, want rejected", got.Verdict)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	go second.Run(ctx2) // returns nil when ctx ends
	deadline := time.Now().Add(5 * time.Second)
	for second.Check("r.test", c).Verdict != Verified {
		if time.Now().After(deadline) {
			t.Fatalf("never verified after the registry came back: %v", second.Check("r.test", c).Verdict)
		}
		if v := second.Check("r.test", c).Verdict; v != Rejected && v != Verified {
			t.Fatalf("an unreachable registry turned a rejection into %v", v)
		}
		time.Sleep(time.Millisecond)
	}
	if err := second.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(store.rs) != 0 {
		t.Errorf("a verified credential is still recorded as rejected: %+v", store.rs)
	}
}

// TestRetriesSlowDown: a rejected credential is retried at the doubling
// backoff a few times only, then every half hour: a fleet retrying for
// good would lock the account out.
func TestRetriesSlowDown(t *testing.T) {
	s := &script{next: []check.ProbeResult{unauthorized}}
	v := New(s, Options{Retry: time.Millisecond, MaxRetry: time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go v.Run(ctx) // returns nil when ctx ends
	c := kubeletcred.Cred{Username: "u", Password: "wrong"}
	v.Check("r.test", c)
	v.Start("r.test", c)
	time.Sleep(200 * time.Millisecond)
	s.mu.Lock()
	calls := s.calls
	s.mu.Unlock()
	if calls != quickRetries+1 {
		t.Errorf("%d logins, want the first and %d quick retries", calls, quickRetries)
	}
}

// hang answers no login until released.
type hang struct{ release chan struct{} }

func (h hang) Probe(ctx context.Context, _, _ string, _ kubeletcred.Cred) check.ProbeResult {
	select {
	case <-h.release:
	case <-ctx.Done():
	}
	return check.ProbeResult{Error: "timed out"}
}

// TestQueuedPastTheDeadline: logins queued behind others that do not
// answer get the verdict Unverifiable at their deadline (applied), so no
// Secret's logins hold another's rotation back for long.
func TestQueuedPastTheDeadline(t *testing.T) {
	h := hang{release: make(chan struct{})}
	defer close(h.release)
	v := New(h, Options{Workers: 1, Deadline: 1500 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go v.Run(ctx) // returns nil when ctx ends
	blocker := kubeletcred.Cred{Username: "u", Password: "slow"}
	v.Check("black.hole", blocker)
	v.Start("black.hole", blocker)
	time.Sleep(100 * time.Millisecond)
	queued := kubeletcred.Cred{Username: "u", Password: "good"}
	v.Check("r.test", queued)
	v.Start("r.test", queued)
	select {
	case <-v.Changed():
	case <-time.After(10 * time.Second):
		t.Fatal("no verdict for a login queued past its deadline")
	}
	if got := v.Check("r.test", queued); got.Verdict != Unverifiable {
		t.Errorf("queued past its deadline: %v, want unverifiable", got.Verdict)
	}
}

// TestStartNowSkipsTheSpread: an agent's first sync logs in at once; later
// ones wait a random time within the spread.
func TestStartNowSkipsTheSpread(t *testing.T) {
	v := New(&script{next: []check.ProbeResult{ok}}, Options{Spread: time.Hour})
	now, later := kubeletcred.Cred{Username: "u", Password: "now"}, kubeletcred.Cred{Username: "u", Password: "later"}
	v.StartNow("r.test", now)
	v.Start("r.test", later)
	v.mu.Lock()
	defer v.mu.Unlock()
	if cr := v.creds[idOf("r.test", now)]; !cr.due.Equal(cr.started) {
		t.Errorf("StartNow: due %s after it was started, want at once", cr.due.Sub(cr.started))
	}
	// rand.N(time.Hour) is 0 with a chance of one in 3.6e12.
	if cr := v.creds[idOf("r.test", later)]; !cr.due.After(cr.started) || cr.due.Sub(cr.started) >= time.Hour {
		t.Errorf("Start: due %s after it was started, want within the spread", cr.due.Sub(cr.started))
	}
}
