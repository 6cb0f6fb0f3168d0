// Package verifier logs in to a registry with new credentials before they
// replace the ones a node pulls with, the way `docker login` does (the
// /v2/ challenge, then Basic or a token request without scope), so that a
// mistyped or not-yet-active password is caught on the node instead of by
// every new Pod.
//
// It keeps, in memory only, a verdict per registry host and credential
// (the credential kept to log in again, known by a digest): a login is
// made once, after a random wait (a fleet-wide rotation must not become a
// login storm), and a rejected one is tried again with a doubling backoff
// until the registry accepts it or the credential leaves the sources.
package verifier

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/kubeletcred"
	"github.com/nodecreds/nodecreds/internal/metrics"
	"github.com/nodecreds/nodecreds/internal/nodefile"
)

// Prober logs in (check.RegistryProber: pinned to the registry and the
// token service it names, never through a proxy in clear).
type Prober interface {
	Probe(ctx context.Context, registry, repository string, c kubeletcred.Cred) check.ProbeResult
}

// Verdict is what a login said of a credential.
type Verdict int

// The verdicts.
const (
	// Pending: no login has answered yet.
	Pending Verdict = iota
	// Verified: the registry let the credential in.
	Verified
	// Rejected: the registry or its token service refused it (401, 403).
	Rejected
	// Unverifiable: no answer that says (unreachable, TLS, timeout, 5xx,
	// a registry that lets anyone in).
	Unverifiable
	// InForce: found in the node's files already (Settle): the agent
	// started with it in place, and does not log in for it.
	InForce
)

func (v Verdict) String() string {
	return [...]string{"pending", "verified", "rejected", "unverifiable", "in-force"}[v]
}

// Store keeps the rejections across restarts (nodefile's rejected.json):
// a credential rejected once stays out until a login with it succeeds,
// whichever process makes it.
type Store interface {
	LoadRejections(ctx context.Context) ([]nodefile.Rejection, error)
	SaveRejections(ctx context.Context, rs []nodefile.Rejection) error
}

// Result is a credential's verdict. Status and Reason come from the probe,
// built from fixed texts and spec error codes: never a value.
type Result struct {
	Verdict Verdict
	// Status is the HTTP status of a rejection (or of the last answer).
	Status int
	// Reason says why, for people ("UNAUTHORIZED", "timed out").
	Reason string
	// At is when the verdict was reached.
	At time.Time
}

// Options tunes the logins.
type Options struct {
	// Spread is the longest a login waits, at random, before it is made.
	Spread time.Duration
	// Retry is the wait before a rejected credential is tried again; it
	// doubles up to MaxRetry.
	Retry, MaxRetry time.Duration
	// Workers bounds the logins made at once.
	Workers int
	// Deadline bounds the wait for a first verdict, from Start: past it,
	// queued behind other logins, a credential is Unverifiable (applied).
	// Spread plus 20 s when zero.
	Deadline time.Duration
	Metrics  *metrics.Metrics // optional
	// Store keeps rejections across restarts (optional).
	Store Store
}

// Defaults.
const (
	DefaultSpread   = time.Second
	DefaultRetry    = 15 * time.Second
	DefaultMaxRetry = 5 * time.Minute
	defaultWorkers  = 4
	// quickRetries are the retries at the doubling backoff; after them a
	// rejected credential is tried every slowRetry only: every node of a
	// fleet retrying for good would lock out accounts on registries that
	// count failed logins (LDAP, Harbor, Artifactory, Nexus).
	quickRetries = 6
	slowRetry    = 30 * time.Minute
)

// id names a credential for a registry without holding its value.
type id struct {
	host   string
	digest [sha256.Size]byte
}

// cred is one credential's login state.
type cred struct {
	login   kubeletcred.Cred
	known   bool // login is set (a rejection loaded from the Store has none yet)
	result  Result
	due     time.Time // when the next login is made (zero: none scheduled)
	started time.Time // when the first login was asked for (Start)
	retry   time.Duration
	retries int
	// recheck: a rejection loaded from the Store, logged in with again
	// once by this process (Wait waits for it).
	recheck  bool
	inFlight bool
	seen     uint64 // the generation that last asked for it
}

// Verifier keeps the verdicts and makes the logins (Run).
type Verifier struct {
	prober Prober
	opts   Options
	now    func() time.Time

	mu      sync.Mutex
	creds   map[id]*cred
	gen     uint64
	wake    chan struct{}
	changed chan struct{}
	idle    *sync.Cond // broadcast when a login ends or is dropped
	// saved is the rejected set last given to the Store; saveMu orders
	// the saves.
	saved  string
	saveMu sync.Mutex
	loaded time.Time // when Load ran
}

// keepLoaded is how long a rejection loaded from the Store is kept
// although no source asked about it: a Secret that cannot be read at the
// agent's start is not a Secret gone.
const keepLoaded = 24 * time.Hour

// New returns a Verifier; Run makes its logins.
func New(prober Prober, opts Options) *Verifier {
	if opts.Spread < 0 {
		opts.Spread = 0
	}
	if opts.Retry <= 0 {
		opts.Retry = DefaultRetry
	}
	if opts.MaxRetry < opts.Retry {
		opts.MaxRetry = max(DefaultMaxRetry, opts.Retry)
	}
	if opts.Workers <= 0 {
		opts.Workers = defaultWorkers
	}
	if opts.Deadline <= 0 {
		opts.Deadline = opts.Spread + 20*time.Second
	}
	v := &Verifier{prober: prober, opts: opts, now: time.Now, creds: map[id]*cred{}, wake: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	v.idle = sync.NewCond(&v.mu)
	return v
}

func idOf(host string, c kubeletcred.Cred) id {
	h := sha256.New()
	h.Write([]byte(c.Username))
	h.Write([]byte{0})
	h.Write([]byte(c.Password))
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return id{host: host, digest: d}
}

// Load seeds the verdicts with the rejections the Store kept: those
// credentials stay out until a login with them succeeds.
func (v *Verifier) Load(ctx context.Context) error {
	if v.opts.Store == nil {
		return nil
	}
	rs, err := v.opts.Store.LoadRejections(ctx)
	if err != nil {
		return fmt.Errorf("loading rejected credentials: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range rs {
		d, err := hex.DecodeString(r.Digest)
		if err != nil || len(d) != sha256.Size {
			continue
		}
		k := id{host: r.Host, digest: [sha256.Size]byte(d)}
		v.creds[k] = &cred{result: Result{Verdict: Rejected, Status: r.Status, Reason: r.Reason}, seen: v.gen}
	}
	v.saved, v.loaded = rejectedKey(v.rejected()), v.now()
	return nil
}

// Check returns the verdict on c for host, remembering c (Pending) when it
// is new. It starts no login: Start does; a rejection loaded from the
// Store gets its retry here, once its credential is known.
func (v *Verifier) Check(host string, c kubeletcred.Cred) Result {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := idOf(host, c)
	cr := v.creds[k]
	if cr == nil {
		cr = &cred{}
		v.creds[k] = cr
	}
	if !cr.known {
		cr.login, cr.known = c, true
		if cr.result.Verdict == Rejected && cr.due.IsZero() && !cr.inFlight {
			// Rejected by an earlier process: asked again once now,
			// then on the retry schedule.
			cr.recheck, cr.due = true, v.now().Add(v.jitter(v.opts.Spread))
			v.poke()
		}
	}
	cr.seen = v.gen
	return cr.result
}

// Settle marks c, pending and never started, as found in the node's files
// already: no login is made for it.
func (v *Verifier) Settle(host string, c kubeletcred.Cred) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if cr := v.creds[idOf(host, c)]; cr != nil && cr.result.Verdict == Pending && cr.due.IsZero() && !cr.inFlight {
		cr.result = Result{Verdict: InForce, At: v.now()}
	}
}

// Skip gives c, pending, the verdict Unverifiable with reason, without a
// login (more changed at once than are verified); Changed fires, so the
// agent applies it.
func (v *Verifier) Skip(host string, c kubeletcred.Cred, reason string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if cr := v.creds[idOf(host, c)]; cr != nil && cr.result.Verdict == Pending && cr.due.IsZero() && !cr.inFlight {
		cr.result = Result{Verdict: Unverifiable, Reason: reason, At: v.now()}
		select {
		case v.changed <- struct{}{}:
		default:
		}
	}
}

// retryLater schedules cr's next login after a rejection: the backoff
// doubles from Retry to MaxRetry for quickRetries, then slowRetry; each
// wait gets up to half of it again at random, so a fleet's retries
// spread.
func (v *Verifier) retryLater(cr *cred) {
	cr.retries++
	switch {
	case cr.retries > quickRetries:
		cr.retry = slowRetry
	default:
		cr.retry = min(max(cr.retry*2, v.opts.Retry), v.opts.MaxRetry)
	}
	cr.due = v.now().Add(cr.retry + v.jitter(cr.retry/2))
}

// Start schedules a login with c at host, after a random wait within
// Spread, unless one is scheduled, under way, or answered.
func (v *Verifier) Start(host string, c kubeletcred.Cred) { v.start(host, c, v.opts.Spread) }

// StartNow is Start without the wait, for the logins of an agent's first
// sync: the Spread is there because a Secret's update reaches every agent
// at the same instant, and agents do not start at the same instant (a
// DaemonSet rolls node by node), while the rotation that waits for them
// should reach the node as soon as they do.
func (v *Verifier) StartNow(host string, c kubeletcred.Cred) { v.start(host, c, 0) }

func (v *Verifier) start(host string, c kubeletcred.Cred, spread time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := idOf(host, c)
	cr := v.creds[k]
	if cr == nil {
		cr = &cred{seen: v.gen}
		v.creds[k] = cr
	}
	if !cr.known {
		cr.login, cr.known = c, true
	}
	if cr.result.Verdict != Pending || cr.inFlight || !cr.due.IsZero() {
		return
	}
	cr.started = v.now()
	cr.due = cr.started.Add(v.jitter(spread))
	v.poke()
}

// Waiting reports whether c's first login at host is still to answer.
func (v *Verifier) Waiting(host string, c kubeletcred.Cred) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	cr := v.creds[idOf(host, c)]
	return cr != nil && cr.result.Verdict == Pending && (cr.inFlight || !cr.due.IsZero())
}

// Sweep forgets the credentials no Check asked about since the last
// Sweep: they left the sources, and their retries stop.
func (v *Verifier) Sweep(ctx context.Context) error {
	v.mu.Lock()
	for k, cr := range v.creds {
		if cr.seen != v.gen && !cr.inFlight && (cr.known || v.now().Sub(v.loaded) > keepLoaded) {
			delete(v.creds, k)
		}
	}
	v.gen++
	v.idle.Broadcast()
	v.mu.Unlock()
	return v.save(ctx)
}

// rejected lists the rejections, sorted (v.mu held).
func (v *Verifier) rejected() []nodefile.Rejection {
	var out []nodefile.Rejection
	for k, cr := range v.creds {
		if cr.result.Verdict == Rejected {
			out = append(out, nodefile.Rejection{Host: k.host, Digest: hex.EncodeToString(k.digest[:]), Status: cr.result.Status, Reason: cr.result.Reason})
		}
	}
	slices.SortFunc(out, func(a, b nodefile.Rejection) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Digest, b.Digest))
	})
	return out
}

func rejectedKey(rs []nodefile.Rejection) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.Host + "\x00" + r.Digest + "\x00")
	}
	return b.String()
}

// save gives the Store the rejections when they changed.
func (v *Verifier) save(ctx context.Context) error {
	if v.opts.Store == nil {
		return nil
	}
	v.saveMu.Lock()
	defer v.saveMu.Unlock()
	v.mu.Lock()
	rs := v.rejected()
	key := rejectedKey(rs)
	same := key == v.saved
	v.mu.Unlock()
	if same {
		return nil
	}
	if err := v.opts.Store.SaveRejections(ctx, rs); err != nil {
		return fmt.Errorf("saving rejected credentials: %w", err)
	}
	v.mu.Lock()
	v.saved = key
	v.mu.Unlock()
	return nil
}

// Changed fires when a verdict changed.
func (v *Verifier) Changed() <-chan struct{} { return v.changed }

// Wait blocks until no login is scheduled before a verdict or under way
// (retries of rejected credentials aside), or ctx ends: sync --once
// verifies before it exits.
func (v *Verifier) Wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		v.mu.Lock()
		v.idle.Broadcast()
		v.mu.Unlock()
	})
	defer stop()
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.busy() && ctx.Err() == nil {
		v.idle.Wait()
	}
	return ctx.Err()
}

// busy: a credential still waits for its first verdict in this process.
func (v *Verifier) busy() bool {
	for _, cr := range v.creds {
		if (cr.result.Verdict == Pending || cr.recheck) && (cr.inFlight || !cr.due.IsZero()) {
			return true
		}
	}
	return false
}

func (v *Verifier) poke() {
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

func (v *Verifier) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// Run makes the scheduled logins until ctx ends, at most Workers at once.
func (v *Verifier) Run(ctx context.Context) error {
	slots := make(chan struct{}, v.opts.Workers)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// While every worker is busy, Run waits for one: the deadlines of
	// the logins queued meanwhile are kept by a tick of their own.
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				v.mu.Lock()
				v.expireLate(v.now())
				v.mu.Unlock()
			}
		}
	}()
	for {
		// A worker first, then the login: one taken while every worker
		// is busy would sit marked in flight, out of its deadline's reach.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		k, cr, wait := v.next()
		if cr != nil {
			go func() {
				defer func() { <-slots }()
				v.login(ctx, k, cr)
			}()
			continue
		}
		<-slots
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-v.wake:
		case <-timer.C:
		}
	}
}

// next is the login due now (taken: in flight), or how long until the
// next one is.
func (v *Verifier) next() (id, *cred, time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	wait := time.Hour
	var (
		first *cred
		fk    id
	)
	v.expireLate(now)
	for k, cr := range v.creds {
		if cr.due.IsZero() || cr.inFlight {
			continue
		}
		if d := cr.due.Sub(now); d > 0 {
			wait = min(wait, d)
			if cr.result.Verdict == Pending && !cr.started.IsZero() {
				wait = min(wait, cr.started.Add(v.opts.Deadline).Sub(now))
			}
			continue
		}
		// The longest due first: logins are taken in the order they
		// were asked for, whatever Secret asked.
		if first == nil || cr.due.Before(first.due) {
			first, fk = cr, k
		}
	}
	if first != nil {
		first.inFlight, first.due = true, time.Time{}
		return fk, first, 0
	}
	return id{}, nil, max(wait, 0)
}

// expireLate gives the verdict Unverifiable to the credentials still
// queued (not in flight) past their deadline, behind other logins: they
// are applied rather than held back any longer (v.mu held).
func (v *Verifier) expireLate(now time.Time) {
	late := false
	for _, cr := range v.creds {
		if cr.result.Verdict == Pending && !cr.inFlight && !cr.due.IsZero() && !cr.started.IsZero() && !now.Before(cr.started.Add(v.opts.Deadline)) {
			cr.due, cr.result = time.Time{}, Result{Verdict: Unverifiable, Reason: "not verified in time: other logins queued before it", At: now}
			late = true
		}
	}
	if late {
		v.idle.Broadcast()
		select {
		case v.changed <- struct{}{}:
		default:
		}
	}
}

// login asks the registry and records the verdict.
func (v *Verifier) login(ctx context.Context, k id, cr *cred) {
	v.mu.Lock()
	c := cr.login
	v.mu.Unlock()
	p := v.prober.Probe(ctx, k.host, "", c)
	res := Result{Status: p.Status, Reason: p.Error, At: v.now()}
	switch {
	case p.OK && !p.Anonymous:
		res.Verdict, res.Reason = Verified, ""
	case p.OK:
		res.Verdict, res.Reason = Unverifiable, "the registry lets anyone in, so a login proves nothing"
	case p.Status == http.StatusUnauthorized || p.Status == http.StatusForbidden:
		res.Verdict = Rejected
	case p.NotSent:
		res.Verdict = Unverifiable
	default:
		res.Verdict = Unverifiable
		if res.Reason == "" {
			res.Reason = "no answer"
		}
	}
	if v.opts.Metrics != nil {
		v.opts.Metrics.Logins.WithLabelValues(res.Verdict.String()).Inc()
	}

	changed := v.record(ctx, k, cr, res)
	if changed {
		// Kept before anyone is told (Wait, Changed), so a rejection the
		// agent acts on outlives this process.
		_ = v.save(ctx) // on failure: in memory still, saved with the next change
	}
	v.mu.Lock()
	v.idle.Broadcast()
	v.mu.Unlock()
	if changed {
		select {
		case v.changed <- struct{}{}:
		default:
		}
	}
}

// record sets cr's verdict after a login, and its next login after a
// rejection; it reports whether the verdict changed.
func (v *Verifier) record(ctx context.Context, k id, cr *cred, res Result) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	cr.inFlight, cr.recheck = false, false
	if ctx.Err() != nil {
		return false // stopping: no verdict from a cancelled login
	}
	prev := cr.result
	switch {
	case res.Verdict == Rejected:
		v.retryLater(cr)
	case prev.Verdict == Rejected && res.Verdict != Verified:
		// Once rejected, applied only after a login that succeeds: a
		// registry that cannot be reached meanwhile changes nothing.
		v.retryLater(cr)
		res = prev
	}
	cr.result = res
	if !cr.due.IsZero() {
		v.poke() // Run sleeps until the earliest login it knew of
	}
	_, ok := v.creds[k]
	return ok && (prev.Verdict != res.Verdict || prev.Status != res.Status || prev.Reason != res.Reason)
}
