package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nodecreds/nodecreds/scripts/bench/benchdoc"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// phase is one measured phase: latencies per node (ms, sorted) and what it
// cost the API server and etcd, from the API server's and etcd's own
// metrics and their processes' CPU time.
type phase struct {
	Name                string
	Files               []float64 // Secret update (or start) → the node's kubelet file
	Reported            []float64 // → the Node's nodecreds.io/revision
	APIServerCPU        float64   // s
	EtcdCPU             float64
	FleetCPU            float64
	APIServerPeakRSSMiB float64
	// Requests by "VERB resource[/subresource]" (apiserver_request_total;
	// a WATCH is counted when it ends).
	Requests      map[string]float64
	RequestsTotal float64
	// NotOK are the requests answered other than 2xx, by "VERB resource
	// code" (429: turned away by priority and fairness).
	NotOK          map[string]float64
	Writes         float64 // requests other than GET, LIST and WATCH, answered 2xx
	WritesPerNode  float64
	Throttled      float64            // answered 429
	APFRejected    float64            // apiserver_flowcontrol_rejected_requests_total
	APFWaitSeconds map[string]float64 // time requests queued, by priority level
	Dispatched     map[string]float64 // requests executed, by priority level
	WatchEvents    map[string]float64 // sent to watchers, by resource
	EtcdPuts       float64            // etcd_mvcc_put_total + delete_total
	// AdmissionPolicySeconds is the time the API server spent evaluating
	// ValidatingAdmissionPolicies (nodecreds' own on the agents' Node
	// writes).
	AdmissionPolicySeconds float64
	KubeletEvents          int // Node events the hollow kubelets' watches received
}

type results struct {
	Label       string
	Agents      int
	FlowControl bool
	Date        string
	Machine     string
	Pinned      bool
	Cold        *phase
	Rotations   []*phase
	Restart     *restart `json:",omitempty"`
	// APIServerHWMMiB is the API server's peak resident size over the run.
	APIServerHWMMiB float64
	FleetRSSMiB     float64
	// APIConnections are the connections open to the API server after
	// the cold start.
	APIConnections int
	Summary        summary
}

// summary is the rotations taken together: latencies over all their
// samples, costs as the median rotation's.
type summary struct {
	FilesP50, FilesP99, FilesMax          float64
	ReportedP50, ReportedP99, ReportedMax float64
	APIServerCPU, APIServerPeakRSSMiB     float64
	Requests, WritesPerNode, Throttled    float64
	EtcdPuts, WatchEvents, APFWait        float64
	KubeletEventsPerNode                  float64
	FleetCPU, AdmissionPolicySeconds      float64
	RequestsPerNode                       map[string]float64
}

func (r *results) summarise() {
	var files, reported []float64
	med := func(get func(*phase) float64) float64 {
		v := make([]float64, len(r.Rotations))
		for i, p := range r.Rotations {
			v[i] = get(p)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	s := summary{RequestsPerNode: map[string]float64{}}
	for _, p := range r.Rotations {
		files, reported = append(files, p.Files...), append(reported, p.Reported...)
		s.Throttled += p.Throttled
		s.APIServerPeakRSSMiB = max(s.APIServerPeakRSSMiB, p.APIServerPeakRSSMiB)
		for k, v := range p.Requests {
			s.RequestsPerNode[k] += v / float64(r.Agents) / float64(len(r.Rotations))
		}
	}
	slices.Sort(files)
	slices.Sort(reported)
	if len(files) > 0 {
		s.FilesP50, s.FilesP99, s.FilesMax = pctF(files, 50), pctF(files, 99), slices.Max(files)
		s.ReportedP50, s.ReportedP99, s.ReportedMax = pctF(reported, 50), pctF(reported, 99), slices.Max(reported)
	}
	s.APIServerCPU = med(func(p *phase) float64 { return p.APIServerCPU })
	s.Requests = med(func(p *phase) float64 { return p.RequestsTotal })
	s.WritesPerNode = med(func(p *phase) float64 { return p.WritesPerNode })
	s.EtcdPuts = med(func(p *phase) float64 { return p.EtcdPuts })
	s.WatchEvents = med(func(p *phase) float64 { return sum(p.WatchEvents) })
	s.APFWait = med(func(p *phase) float64 { return sum(p.APFWaitSeconds) })
	s.FleetCPU = med(func(p *phase) float64 { return p.FleetCPU })
	s.AdmissionPolicySeconds = med(func(p *phase) float64 { return p.AdmissionPolicySeconds })
	s.KubeletEventsPerNode = med(func(p *phase) float64 { return float64(p.KubeletEvents) / float64(r.Agents) })
	r.Summary = s
}

func (r *results) file() string {
	name := fmt.Sprintf("%s-%05d", r.Label, r.Agents)
	if r.FlowControl {
		name += "-flowcontrol"
	}
	if r.Restart != nil {
		name += "-restart"
	}
	return name + ".json"
}

func (r *results) save(dir string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, r.file())
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	logf("results: %s", path)
	return nil
}

// commit names a run by the commit it measured (dirty: with changes).
func commit() string {
	out, err := exec.Command("git", "-C", cluster.RepoRoot(), "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func loadResults(dir string) ([]*results, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var all []*results
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		r := &results{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		all = append(all, r)
	}
	slices.SortFunc(all, func(a, b *results) int {
		return cmp.Or(cmp.Compare(a.Date+a.Label, b.Date+b.Label), cmp.Compare(a.Agents, b.Agents),
			cmp.Compare(fmt.Sprint(a.FlowControl), fmt.Sprint(b.FlowControl)))
	})
	return all, nil
}

// writeTable renders the results in dir into doc's fleet section.
func writeTable(dir, doc string) error {
	all, err := loadResults(dir)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(all, func(r *results) bool { return r.Restart == nil }) {
		return fmt.Errorf("no results of rotations in %s: run make fleet first", dir)
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	restarts := slices.DeleteFunc(slices.Clone(all), func(r *results) bool { return r.Restart == nil })
	all = slices.DeleteFunc(all, func(r *results) bool { return r.Restart != nil })
	w("Runs: %s. Machine: %s.\n\n", runsList(all), all[0].Machine)
	w("| run | nodes | cold start: all files / all Nodes reported | rotation → file p50 / p99 / max | rotation → Node reported p50 / p99 / max | API server CPU per rotation | admission policies' time per rotation | API server peak RSS | requests per rotation | writes per node per rotation | answered 429 per rotation | etcd writes per rotation | watch events per rotation | request-seconds queued by APF per rotation | the fleet's CPU per rotation |\n")
	w("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range all {
		s := r.Summary
		w("| %s | %d | %s / %s | %s / %s / %s | %s / %s / %s | %.2f s | %s | %.0f MiB | %.0f | %.2f | %.0f | %.0f | %.0f | %.2f s | %.2f s |\n",
			r.Label, r.Agents, sec(slices.Max(r.Cold.Files)), sec(slices.Max(r.Cold.Reported)),
			msec(s.FilesP50), msec(s.FilesP99), msec(s.FilesMax), msec(s.ReportedP50), msec(s.ReportedP99), msec(s.ReportedMax),
			s.APIServerCPU, orDash(s.AdmissionPolicySeconds), max(s.APIServerPeakRSSMiB, r.Cold.APIServerPeakRSSMiB), s.Requests, s.WritesPerNode,
			s.Throttled/float64(max(len(r.Rotations), 1)), s.EtcdPuts, s.WatchEvents, s.APFWait, s.FleetCPU)
	}
	w("\nRequests per node per rotation, by verb and resource (the rotations' mean):\n\n| run | nodes | requests |\n| --- | ---: | --- |\n")
	for _, r := range all {
		keys := make([]string, 0, len(r.Summary.RequestsPerNode))
		for k := range r.Summary.RequestsPerNode {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			if v := r.Summary.RequestsPerNode[k]; v >= 0.005 {
				parts = append(parts, fmt.Sprintf("%s %.2f", k, v))
			}
		}
		w("| %s | %d | %s |\n", r.Label, r.Agents, strings.Join(parts, ", "))
	}
	if err := benchdoc.Replace(doc, "fleet", b.String()); err != nil {
		return err
	}
	if len(restarts) == 0 {
		return nil
	}
	b.Reset()
	w("| run | nodes | agents' FlowSchema | all files / all Nodes reported | API server CPU | requests (429s) | time queued by priority level | the other client's GET p50 / p99 / max, before → during | its 429s |\n| --- | ---: | --- | --- | ---: | --- | --- | --- | ---: |\n")
	for _, r := range restarts {
		p, pb, pd := r.Restart.Phase, r.Restart.ProbeBefore, r.Restart.ProbeDuring
		fs := "none (default `service-accounts`)"
		if r.FlowControl {
			fs = "the chart's (`flowControl.enabled`)"
		}
		w("| %s | %d | %s | %s / %s | %.2f s | %.0f (%.0f) | %s | %.1f / %.1f / %.1f ms → %.1f / %.1f / %.1f ms | %d of %d |\n", r.Label, r.Agents, fs,
			sec(slices.Max(p.Files)), sec(slices.Max(p.Reported)), p.APIServerCPU, p.RequestsTotal, p.Throttled, byLevel(p.APFWaitSeconds),
			pb.P50, pb.P99, pb.Max, pd.P50, pd.P99, pd.Max, pd.Throttled, pd.Requests)
	}
	return benchdoc.Replace(doc, "fleet-restart", b.String())
}

// byLevel says seconds by priority level, in name order.
func byLevel(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.1f s", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func runsList(all []*results) string {
	var s []string
	for _, r := range all {
		s = append(s, fmt.Sprintf("%s at %d on %s", r.Label, r.Agents, r.Date))
	}
	return strings.Join(s, "; ")
}

// orDash is seconds, or "—" where a run did not measure them (results of
// before the fleet read the admission controller's histogram).
func orDash(v float64) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f s", v)
}

func msec(v float64) string { return fmt.Sprintf("%.0f ms", v) }
func sec(v float64) string  { return fmt.Sprintf("%.1f s", v/1000) }
