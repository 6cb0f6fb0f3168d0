// Package meter is what the benchmarks (make bench, make fleet) read off
// the machine and the API server: node files seen changing, the API
// server's metrics, processes' CPU time and memory, and the host limits
// they lift for a run.
package meter

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/rest"
)

// FileWatch tells when each agent's copy of one file (its kubelet file,
// its hosts.toml) holds some content.
type FileWatch struct {
	w     *fsnotify.Watcher
	files map[string]int // file → agent index
	n     int
}

// NewFileWatch watches files, files[i] being agent i's; their folders must
// exist.
func NewFileWatch(files []string) (*FileWatch, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	fw := &FileWatch{w: w, files: map[string]int{}, n: len(files)}
	for i, f := range files {
		if err := w.Add(filepath.Dir(f)); err != nil {
			w.Close()
			return nil, err
		}
		fw.files[f] = i
	}
	return fw, nil
}

func (fw *FileWatch) Close() { fw.w.Close() }

// Contains reports whether the file at path holds want.
func Contains(path, want string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(want))
}

// Until waits until every watched file contains want and returns, per
// node, the time from t0 to the event that showed it.
func (fw *FileWatch) Until(ctx context.Context, want string, t0 time.Time, within time.Duration) ([]time.Duration, error) {
	lat := make([]time.Duration, fw.n)
	done := 0
	seen := make([]bool, fw.n)
	for f, i := range fw.files { // already there (one read each: a file
		// changing between two reads would be seen but never counted)
		if Contains(f, want) {
			lat[i], seen[i], done = time.Since(t0), true, done+1
		}
	}
	timeout := time.After(within)
	for done < fw.n {
		select {
		case ev := <-fw.w.Events:
			i, ok := fw.files[ev.Name]
			if !ok || seen[i] {
				continue
			}
			if Contains(ev.Name, want) {
				lat[i], seen[i] = time.Since(t0), true
				done++
			}
		case err := <-fw.w.Errors:
			return nil, err
		case <-timeout:
			// Say which, and whether the file has it now (an event the
			// benchmark missed) or not (an agent that did not apply it).
			var missing []string
			for f, i := range fw.files {
				if !seen[i] {
					missing = append(missing, fmt.Sprintf("%s (has it now: %v)", f, Contains(f, want)))
				}
			}
			return nil, fmt.Errorf("only %d of %d nodes updated within %s; missing: %s", done, fw.n, within, strings.Join(missing, ", "))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return lat, nil
}

// APIMetrics scrapes apiserver_request_total (by verb and resource) and the
// long-running request gauges.
func APIMetrics(cfg *rest.Config) (map[string]float64, error) {
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	samples, err := Scrape(&http.Client{Transport: tr, Timeout: 30 * time.Second}, cfg.Host+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, x := range samples {
		if x.Name != "apiserver_request_total" && x.Name != "apiserver_longrunning_requests" {
			continue
		}
		key := x.Name + " " + x.Labels["verb"] + " " + x.Labels["resource"]
		if sub := x.Labels["subresource"]; sub != "" {
			key += "/" + sub
		}
		out[key] += x.Value
	}
	return out, nil
}

const clkTck = 100 // USER_HZ on Linux

// CPUTime is a process's user+system CPU time (0 when it is gone).
func CPUTime(pid int) time.Duration {
	st := Stat(pid)
	return st.User + st.Sys
}

// Proc is what /proc/PID/stat says of a process's CPU time and page
// faults (zero when it is gone).
type Proc struct {
	User, Sys time.Duration
	Faults    int
}

func Stat(pid int) Proc {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Proc{}
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	n := func(i int) int { v, _ := strconv.Atoi(f[i]); return v }
	return Proc{User: time.Duration(n(11)) * time.Second / clkTck, Sys: time.Duration(n(12)) * time.Second / clkTck, Faults: n(7) + n(9)}
}

func RSSKiB(pid int) int { return StatusKiB(strconv.Itoa(pid), "VmRSS:") }

// StatusKiB is a kB field of /proc/<pid>/status (pid "self": this
// process), 0 when absent.
func StatusKiB(pid, field string) int { return procKiB("/proc/"+pid+"/status", field) }

// AnonKiB is the private, anonymous part of the resident memory (heap,
// stacks); the rest is the binary's clean file pages, shared between
// processes and reclaimable.
func AnonKiB(pid int) int {
	return procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Anonymous:")
}

// procKiB is the kB value of field in a /proc file, 0 when absent.
func procKiB(path, field string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			v, _ := strconv.Atoi(strings.Fields(l)[1])
			return v
		}
	}
	return 0
}

// PidByName finds the process called name (0 when there is none).
func PidByName(name string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(b)) == name {
			return pid
		}
	}
	return 0
}

// Pct is the p-th percentile of d (the nearest rank below).
func Pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// Machine describes this machine: cores, CPU model, memory, kernel, Go.
func Machine() string {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.Split(string(b), "\n")[0])
		if kb, err := strconv.Atoi(f[1]); err == nil {
			mem = fmt.Sprintf("%.0f GiB", float64(kb)/1024/1024)
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d cores (%s), %s memory, Linux %s, %s", runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)), runtime.Version())
}

const inotifyInstances = "/proc/sys/fs/inotify/max_user_instances"

// RaiseInotifyInstances makes room for n agents' inotify instances for the
// run and returns what puts the old limit back. All agents run as root on
// this one machine, where fs.inotify.max_user_instances (128 by default)
// is per user: a real node runs one agent, so without this the benchmark
// would measure agents past the 128th polling (their fallback), not a
// cluster. docs/scale.md explains the limit on real nodes.
func RaiseInotifyInstances(n int, logf func(string, ...any)) (func(), error) {
	return RaiseSysctl(inotifyInstances, n+128, logf) // the other root processes keep what they had
}

// damonStates are the switches of the kernel's DAMON monitors, which this
// benchmark machine (a VM) runs with a proactive "pageout" scheme: memory
// not touched for about a minute is reclaimed, clean file pages (the agents'
// code) included.
const damonStates = "/sys/kernel/mm/damon/admin/kdamonds/*/state"

// PauseProactiveReclaim switches the machine's DAMON monitors off for the
// run and returns what switches them back on. The benchmark's idle phase
// leaves every agent untouched for a minute; with proactive reclaim on,
// the first rotation after it re-reads the agents' code from disk (all 500
// at once in the curve: 3.5 s for that rotation against 1.4–2.1 s for the
// others, docs/scale.md). That measures the VM's memory policy, not
// nodecreds; BENCH_RECLAIM=on keeps it on to see it.
func PauseProactiveReclaim(logf func(string, ...any)) func() {
	if os.Getenv("BENCH_RECLAIM") == "on" {
		return func() {}
	}
	paths, _ := filepath.Glob(damonStates)
	var paused []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "on" {
			if err := os.WriteFile(p, []byte("off"), 0o644); err == nil {
				paused = append(paused, p)
			}
		}
	}
	if len(paused) == 0 {
		return func() {}
	}
	logf("proactive reclaim (DAMON pageout) off for this run: %s", strings.Join(paused, " "))
	return func() {
		for _, p := range paused {
			if err := os.WriteFile(p, []byte("on"), 0o644); err != nil {
				logf("could not switch %s back on: %v", p, err)
				continue
			}
		}
		logf("proactive reclaim back on")
	}
}

// Sample is one sample of a /metrics page: histograms give NAME_sum and
// NAME_count.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples are a /metrics page's samples.
type Samples []Sample

// Scrape reads the samples of url's Prometheus text page.
func Scrape(client *http.Client, url string) (Samples, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	var out Samples
	for name, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				out = append(out, Sample{name, labels, m.GetCounter().GetValue()})
			case m.GetGauge() != nil:
				out = append(out, Sample{name, labels, m.GetGauge().GetValue()})
			case m.GetUntyped() != nil:
				out = append(out, Sample{name, labels, m.GetUntyped().GetValue()})
			case m.GetHistogram() != nil:
				out = append(out, Sample{name + "_sum", labels, m.GetHistogram().GetSampleSum()},
					Sample{name + "_count", labels, float64(m.GetHistogram().GetSampleCount())})
			}
		}
	}
	return out, nil
}

// Sum adds the values of name's samples whose labels include match.
func (s Samples) Sum(name string, match map[string]string) float64 {
	var v float64
	for _, x := range s {
		if x.Name != name {
			continue
		}
		ok := true
		for k, want := range match {
			if x.Labels[k] != want {
				ok = false
				break
			}
		}
		if ok {
			v += x.Value
		}
	}
	return v
}

// By adds name's samples by the values of labels (joined with spaces).
func (s Samples) By(name string, labels ...string) map[string]float64 {
	out := map[string]float64{}
	for _, x := range s {
		if x.Name != name {
			continue
		}
		key := make([]string, len(labels))
		for i, l := range labels {
			key[i] = x.Labels[l]
		}
		out[strings.Join(key, " ")] += x.Value
	}
	return out
}

// RaiseSysctl sets the integer setting at path (a /proc/sys file) to at
// least want for the run and returns what puts the old value back.
func RaiseSysctl(path string, want int, logf func(string, ...any)) (func(), error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return func() {}, nil // not Linux, or no procfs: nothing to raise
	}
	old, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || old >= want {
		return func() {}, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return nil, fmt.Errorf("raising %s to %d (run as root): %w", path, want, err)
	}
	logf("%s %d → %d for this run", path, old, want)
	return func() {
		if err := os.WriteFile(path, []byte(strconv.Itoa(old)), 0o644); err != nil {
			logf("could not put %s back to %d: %v", path, old, err)
		}
	}, nil
}
