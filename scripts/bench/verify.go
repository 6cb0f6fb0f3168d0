package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/verifier"
	"github.com/nodecreds/nodecreds/scripts/bench/meter"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// registryDouble is the bench's registry: /v2/ answers 401 with a Basic
// challenge, and 200 to robot with the current password. It only counts
// and times what reaches it; the agents' Secret names it as their
// registry, so with --verify=on each rotation's logins land here.
type registryDouble struct {
	addr string
	srv  *http.Server

	mu       sync.Mutex
	password string
	arrivals []time.Time // every HTTP request to /v2/
	ok       int         // answered 200
	conns    int         // TCP connections accepted
}

func startRegistry() (*registryDouble, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("registry double: %w", err)
	}
	d := &registryDouble{addr: ln.Addr().String()}
	d.srv = &http.Server{
		Handler:           http.HandlerFunc(d.serve),
		ReadHeaderTimeout: 10 * time.Second,
		// A TLS hello on this plain listener (go-containerregistry's
		// ping tries https too) is answered 400 by net/http: not logged.
		ErrorLog: log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				d.mu.Lock()
				d.conns++
				d.mu.Unlock()
			}
		},
	}
	go func() { _ = d.srv.Serve(ln) }()
	return d, nil
}

func (d *registryDouble) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.arrivals = append(d.arrivals, time.Now())
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("robot:"+d.password))
	good := d.password != "" && r.Header.Get("Authorization") == want
	if good {
		d.ok++
	}
	d.mu.Unlock()
	if r.URL.Path != "/v2/" {
		http.NotFound(w, r)
		return
	}
	if !good {
		w.Header().Set("WWW-Authenticate", `Basic realm="bench"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	_, _ = io.WriteString(w, "{}")
}

// reset sets the password the next logins must bring and forgets what
// arrived before.
func (d *registryDouble) reset(password string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.password, d.arrivals, d.ok, d.conns = password, nil, 0, 0
}

// loginLoad is what reached the registry double in one rotation.
type loginLoad struct {
	requests, ok, conns int
	first, last         time.Duration // arrivals relative to the Secret update
	peak100ms           int           // most requests in any 100 ms
}

func (d *registryDouble) load(t0 time.Time) loginLoad {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := loginLoad{requests: len(d.arrivals), ok: d.ok, conns: d.conns}
	if len(d.arrivals) == 0 {
		return l
	}
	at := slices.Clone(d.arrivals)
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	l.first, l.last = at[0].Sub(t0), at[len(at)-1].Sub(t0)
	j := 0
	for i := range at {
		for at[i].Sub(at[j]) >= 100*time.Millisecond {
			j++
		}
		l.peak100ms = max(l.peak100ms, i-j+1)
	}
	return l
}

func (d *registryDouble) close() { _ = d.srv.Close() }

// verifyRun is the rotations measured with verification on.
type verifyRun struct {
	spread    time.Duration
	rotations []time.Duration // every node, every rotation
	perRot    []verifyRotation
	startup   loginLoad // logins the restarted agents made before the first rotation
}

type verifyRotation struct {
	slowest, p50 time.Duration
	load         loginLoad
}

// measureVerify runs last: the agents ran with --verify=off for every
// figure before (the Secret update → file path as issue 16 measured it);
// here the annotation of the hosts.toml rotations is taken off, the agents
// are restarted with verification on (the default, --verify-spread 1s),
// and cfg.rotations more rotations are timed to every kubelet file while
// the registry double counts the logins.
func measureVerify(ctx context.Context, c *cluster.Cluster, cfg config, agents []*agent, start func(verify bool) error, kubelet *meter.FileWatch, d *registryDouble, res *results) error {
	res.verify.spread = verifier.DefaultSpread // the agents' --verify-spread: not set
	secrets := c.Admin.CoreV1().Secrets(ns)
	s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		return err
	}
	delete(s.Annotations, runtimeAuth)
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return err
	}
	// Not a measurement: the headers leave hosts.toml before the restart.
	last := wantHeader(fmt.Sprintf("v%d", 2*cfg.rotations))
	if err := waitLacks(ctx, hostsTOMLFiles(agents, res.registry), last, 2*time.Minute); err != nil {
		return fmt.Errorf("taking the Secret out of hosts.toml: %w", err)
	}
	logf("verification: restarting the %d agents with --verify=on (--verify-spread %s)", cfg.agents, res.verify.spread)
	stopAgents(agents)
	if err := waitWatches(ctx, c, func(n float64) bool { return n <= res.watchesBefore }, "closed", 2*time.Minute); err != nil {
		return err
	}
	// The restarted agents log in once with the credentials they find (the
	// node's, unchanged): the password stays the one they have.
	d.reset(fmt.Sprintf("v%d", 2*cfg.rotations))
	t0 := time.Now()
	if err := start(true); err != nil {
		return err
	}
	if err := waitWatches(ctx, c, func(n float64) bool { return n >= res.watchesSecrets }, "open", 2*time.Minute); err != nil {
		return err
	}
	time.Sleep(res.verify.spread + 2*settle) // their start-up logins end
	res.verify.startup = d.load(t0)
	logf("verification: agents back (%d watches); %d registry requests at their start", int(res.watchesSecrets), res.verify.startup.requests)
	for r := 2*cfg.rotations + 1; r <= 3*cfg.rotations; r++ {
		time.Sleep(settle)
		pass := fmt.Sprintf("v%d", r)
		s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Data[corev1.DockerConfigJsonKey] = secretData(res.registry, pass)
		d.reset(pass)
		t0 := time.Now()
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return err
		}
		lat, err := kubelet.Until(ctx, wantAuth(pass), t0, time.Minute)
		if err != nil {
			return fmt.Errorf("verified rotation %d: %w", r, err)
		}
		// Every node writes after its login answered: all arrived.
		load := d.load(t0)
		if load.ok < cfg.agents {
			return fmt.Errorf("verified rotation %d: %d of %d logins accepted by the registry double", r, load.ok, cfg.agents)
		}
		res.verify.rotations = append(res.verify.rotations, lat...)
		vr := verifyRotation{slowest: slices.Max(lat), p50: meter.Pct(lat, 50), load: load}
		res.verify.perRot = append(res.verify.perRot, vr)
		logf("rotation %d (verified): all %d nodes in %s (p50 %s); registry: %d requests (%d accepted) on %d connections, from %s to %s, peak %d in 100 ms",
			r, cfg.agents, vr.slowest.Round(time.Millisecond), vr.p50.Round(time.Millisecond), load.requests, load.ok, load.conns,
			load.first.Round(time.Millisecond), load.last.Round(time.Millisecond), load.peak100ms)
	}
	return nil
}

// waitWatches waits until the count of open watches on Secrets is ok:
// every stopped agent's closed, or every restarted agent's open.
func waitWatches(ctx context.Context, c *cluster.Cluster, ok func(float64) bool, what string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		m, err := meter.APIMetrics(c.RESTConfig)
		if err != nil {
			return err
		}
		got, _ := watches(m)
		if ok(got) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agents' watches on Secrets not %s after %s: %.0f open", what, within, got)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitLacks polls until no file contains want (a missing file does not).
func waitLacks(ctx context.Context, files []string, want string, within time.Duration) error {
	deadline := time.Now().Add(within)
	left := slices.Clone(files)
	for {
		left = slices.DeleteFunc(left, func(f string) bool { return !meter.Contains(f, want) })
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d files still with it after %s, such as %s", len(left), len(files), within, left[0])
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func stopAgents(agents []*agent) {
	for _, a := range agents {
		if a.cmd != nil && a.cmd.Process != nil {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, a := range agents {
		if a.cmd != nil {
			_ = a.cmd.Wait()
			a.cmd = nil
		}
	}
}

// requestsSummary is the registry's load per rotation over the verified
// rotations: requests (min–max), the logins' window and peak.
func (v verifyRun) requestsSummary() string {
	var reqs, peaks []int
	var last time.Duration
	for _, r := range v.perRot {
		reqs = append(reqs, r.load.requests)
		peaks = append(peaks, r.load.peak100ms)
		last = max(last, r.load.last)
	}
	return fmt.Sprintf("%s requests (%s per node), the last %s after the update, at most %d in any 100 ms",
		span(reqs), perNode(reqs, v), ms(last), slices.Max(peaks))
}

func span(v []int) string {
	lo, hi := slices.Min(v), slices.Max(v)
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d–%d", lo, hi)
}

func perNode(reqs []int, v verifyRun) string {
	n := len(v.rotations) / max(len(v.perRot), 1)
	return fmt.Sprintf("%.2f", float64(slices.Max(reqs))/float64(max(n, 1)))
}

// verifyMarkdown is the section of the verified rotations.
func (r *results) verifyMarkdown() string {
	v := r.verify
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("\n### Rotation with verification (`--verify=on`, `--verify-spread %s`: the defaults)\n\n", v.spread)
	w("After the rotations above, the hosts.toml opt-in is taken off the Secret again and the %d agents are restarted with the default flags; %d more rotations follow, each setting the registry double's password to the new one just before the Secret update, so that every login is accepted. Each sample is one node's time from the Secret update to the new password in its kubelet file, which an agent writes only after its login answered; the registry columns are what reached the double for that rotation, timed from the same update.\n\n", r.cfg.agents, len(v.perRot))
	w("| | without verification (`--verify=off`, the rotations above) | with verification |\n| --- | --- | --- |\n")
	w("| rotation p50 | %s | %s |\n", ms(meter.Pct(r.rotations, 50)), ms(meter.Pct(v.rotations, 50)))
	w("| rotation p99 | %s | %s |\n", ms(meter.Pct(r.rotations, 99)), ms(meter.Pct(v.rotations, 99)))
	w("| rotation max | %s | %s |\n", ms(slices.Max(r.rotations)), ms(slices.Max(v.rotations)))
	w("| registry requests per rotation | 0 | %s |\n\n", r.verify.requestsSummary())
	w("| rotation | slowest node | p50 | registry requests (accepted) | TCP connections | first / last request after the update | most requests in any 100 ms |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for i, x := range v.perRot {
		w("| %d | %s | %s | %d (%d) | %d | %s / %s | %d |\n", i+1, ms(x.slowest), ms(x.p50), x.load.requests, x.load.ok, x.load.conns, ms(x.load.first), ms(x.load.last), x.load.peak100ms)
	}
	w("\nPer login the double sees two HTTP requests — the unauthenticated `GET /v2/` that returns the challenge (401, `WWW-Authenticate: Basic`) and the `GET /v2/` with the credentials (200) — on one connection, plus a second connection that carries no request: for a registry that may be plain HTTP (loopback, private addresses) go-containerregistry's ping tries `https` first and `http` as soon as that fails, and this plain listener refuses the TLS hello. An HTTPS registry sees no such connection; a Bearer-token registry sees three requests per login (the challenge, the token request to its token service, `GET /v2/` with the token): docs/scale.md works out what that means for a fleet. ")
	w("The restarted agents also logged in once each at start, with the credentials they found (%d requests for %d agents before the first of these rotations): an agent keeps its verdicts in memory only, so a restart of the DaemonSet verifies every node's current credentials once, spread the same way.\n", v.startup.requests, r.cfg.agents)
	return b.String()
}
