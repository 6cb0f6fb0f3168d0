package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nodecreds/nodecreds/scripts/bench/meter"
)

// phaseWithin bounds each phase; a fleet past it is reported as failed.
const phaseWithin = 10 * time.Minute

// settle is how long after every Node reported a phase's figures keep
// counting: Events and any report still under way land in it.
const settle = 3 * time.Second

func (f *fleet) measure(ctx context.Context, res *results) error {
	var err error
	if f.files, err = meter.NewFileWatch(f.kubeletFiles()); err != nil {
		return err
	}
	if f.tracker, err = newNodeTracker(ctx, f.c.Admin); err != nil {
		return err
	}
	rss := &rssSampler{}
	sctx, stopRSS := context.WithCancel(ctx)
	defer stopRSS()
	go rss.run(sctx, f.apiPid)
	names := make([]string, len(f.nodes))
	for i, h := range f.nodes {
		names[i] = h.Name
	}

	logf("cold start: %d agents at once", len(f.nodes))
	p, err := f.phase(ctx, "cold start", "v0", names, rss, f.startAgents)
	if err != nil {
		return err
	}
	res.Cold = p
	if res.APIConnections, err = connections(f.c.URL); err != nil {
		return err
	}
	logf("%d connections open to the API server", res.APIConnections)
	for r := 1; r <= f.o.rotations; r++ {
		pass := fmt.Sprintf("v%d", r)
		p, err := f.phase(ctx, fmt.Sprintf("rotation %d", r), pass, names, rss, func(ctx context.Context) error { return f.rotate(ctx, pass) })
		if err != nil {
			return err
		}
		res.Rotations = append(res.Rotations, p)
	}
	if f.o.restart {
		if res.Restart, err = f.massRestart(ctx, names, rss); err != nil {
			return err
		}
	}
	res.APIServerHWMMiB = float64(meterKiB(f.apiPid, "VmHWM:")) / 1024
	res.FleetRSSMiB = float64(meterKiB(0, "VmRSS:")) / 1024
	for _, w := range f.workers {
		res.FleetRSSMiB += float64(meter.RSSKiB(w.cmd.Process.Pid)) / 1024
	}
	res.summarise()
	return nil
}

// phase runs act (which starts the agents or rotates the Secret) and waits
// until every node's kubelet file holds pass and every Node reports a
// revision it did not before; what the API server and etcd did meanwhile
// is its cost.
func (f *fleet) phase(ctx context.Context, name, pass string, names []string, rss *rssSampler, act func(context.Context) error) (*phase, error) {
	before := f.tracker.revisions()
	rss.take()
	s0, err := f.snapshot()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := act(ctx); err != nil {
		return nil, err
	}
	fileLat, err := f.files.Until(ctx, wantAuth(pass), t0, phaseWithin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	repLat, err := f.tracker.until(ctx, names, before, t0, phaseWithin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	time.Sleep(settle)
	s1, err := f.snapshot()
	if err != nil {
		return nil, err
	}
	p := newPhase(name, len(names), s0, s1)
	p.Files, p.Reported = durs(fileLat), durs(repLat)
	p.APIServerPeakRSSMiB = float64(rss.take()) / 1024
	logf("%s: files p50 %.0f ms, p99 %.0f ms, max %.0f ms; Nodes reported max %.0f ms; API server %.2f s CPU, %.0f requests (%.2f writes per node), %.0f throttled",
		name, pctF(p.Files, 50), pctF(p.Files, 99), slices.Max(p.Files), slices.Max(p.Reported), p.APIServerCPU, p.RequestsTotal, p.WritesPerNode, p.Throttled)
	return p, nil
}

// newPhase is the cost between two snapshots.
func newPhase(name string, nodes int, s0, s1 snapshot) *phase {
	p := &phase{Name: name, Requests: map[string]float64{}, NotOK: map[string]float64{}, WatchEvents: map[string]float64{}, APFWaitSeconds: map[string]float64{},
		APIServerCPU: (s1.apiCPU - s0.apiCPU).Seconds(), EtcdCPU: (s1.etcdCPU - s0.etcdCPU).Seconds(), FleetCPU: (s1.fleetCP - s0.fleetCP).Seconds(),
		KubeletEvents: s1.kubeletEvents - s0.kubeletEvents}
	delta := func(s0, s1 meter.Samples, name string, labels ...string) map[string]float64 {
		a, b := s0.By(name, labels...), s1.By(name, labels...)
		out := map[string]float64{}
		for k, v := range b {
			if d := v - a[k]; d > 0 {
				out[strings.TrimSpace(k)] = d
			}
		}
		return out
	}
	for k, v := range delta(s0.api, s1.api, "apiserver_request_total", "verb", "resource", "subresource", "code") {
		f := strings.Fields(k)
		if len(f) < 3 {
			continue
		}
		verb, res, code := f[0], f[1], f[len(f)-1]
		if len(f) == 4 {
			res += "/" + f[2]
		}
		p.Requests[verb+" "+res] += v
		p.RequestsTotal += v
		if code == "429" {
			p.Throttled += v
		}
		if !strings.HasPrefix(code, "2") {
			p.NotOK[verb+" "+res+" "+code] += v
			continue // refused or failed: no work done, nothing written
		}
		if verb != "GET" && verb != "LIST" && verb != "WATCH" {
			p.Writes += v
		}
	}
	p.WritesPerNode = p.Writes / float64(nodes)
	p.WatchEvents = delta(s0.api, s1.api, "apiserver_watch_events_total", "resource", "kind")
	p.APFRejected = sum(delta(s0.api, s1.api, "apiserver_flowcontrol_rejected_requests_total", "priority_level"))
	p.APFWaitSeconds = delta(s0.api, s1.api, "apiserver_flowcontrol_request_wait_duration_seconds_sum", "priority_level")
	p.Dispatched = delta(s0.api, s1.api, "apiserver_flowcontrol_dispatched_requests_total", "priority_level")
	p.AdmissionPolicySeconds = delta(s0.api, s1.api, "apiserver_admission_controller_admission_duration_seconds_sum", "name")["ValidatingAdmissionPolicy"]
	p.EtcdPuts = sum(delta(s0.etcd, s1.etcd, "etcd_mvcc_put_total")) + sum(delta(s0.etcd, s1.etcd, "etcd_mvcc_delete_total"))
	return p
}

func sum(m map[string]float64) float64 {
	var v float64
	for _, x := range m {
		v += x
	}
	return v
}

// pctF is the p-th percentile of sorted values.
func pctF(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p/100)]
}

// meterKiB reads a kB field of a process's status (0: this process).
func meterKiB(pid int, field string) int {
	if pid == 0 {
		return meter.StatusKiB("self", field)
	}
	return meter.StatusKiB(fmt.Sprint(pid), field)
}

// connections counts the TCP connections established to the API server
// (client ends, read from /proc/net/tcp): a hollow agent and a hollow
// kubelet each hold their own, as on separate nodes.
func connections(apiURL string) (int, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return 0, err
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	remote := fmt.Sprintf("0100007F:%04X", port) // 127.0.0.1, as the kernel prints it
	n := 0
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && f[2] == remote && f[3] == "01" { // ESTABLISHED
			n++
		}
	}
	return n, nil
}
