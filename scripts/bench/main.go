// Command bench is `make bench`: it starts the local control plane and N
// nodecreds agents (BENCH_AGENTS, default 100), each a separate process with
// its own node root, Node object and ServiceAccount-token client, as
// DaemonSet pods would be, and measures cold start, rotation latency,
// per-agent memory and idle CPU, API server cost, and the file engine. It
// compares with a hand-rolled periodic copy loop measured in the same run,
// and writes docs/benchmarks.md.
//
// BENCH_ONLY=big-secret runs only the 10,000-entry mounted-Secret case
// (BENCH_ROTATIONS changes, default 20) and writes nothing.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/scripts/bench/benchdoc"
	"github.com/nodecreds/nodecreds/scripts/bench/meter"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const (
	ns     = "nodecreds"
	secret = "registry-credentials"
)

type config struct {
	agents     int
	rotations  int
	idle       time.Duration
	copyEvery  time.Duration
	pluginRuns int
	out        string
	curve      []int // BENCH_CURVE: agent counts to run one after another
	verify     bool  // also measure rotations with --verify=on (make bench, not the curve)
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDur(k string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

func main() {
	cfg := config{
		agents:     envInt("BENCH_AGENTS", 100),
		rotations:  envInt("BENCH_ROTATIONS", 5),
		idle:       envDur("BENCH_IDLE", 30*time.Second),
		copyEvery:  envDur("BENCH_COPY_PERIOD", 30*time.Second),
		pluginRuns: envInt("BENCH_PLUGIN_RUNS", 200),
		curve:      envInts("BENCH_CURVE"),
		verify:     os.Getenv("BENCH_VERIFY") != "off",
		out:        filepath.Join(cluster.RepoRoot(), "docs", "benchmarks.md"),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench failed:", err)
		os.Exit(1)
	}
}

func logf(format string, a ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

// secretData is the bench Secret's .dockerconfigjson: robot with pass for
// registry (the registry double's address).
func secretData(registry, pass string) []byte {
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte("robot:" + pass))}}})
	return b
}

func wantAuth(pass string) string {
	return `"auth": "` + base64.StdEncoding.EncodeToString([]byte("robot:"+pass)) + `"`
}

type agent struct {
	name string
	root string
	cmd  *exec.Cmd
}

type results struct {
	cfg                          config
	cold                         time.Duration
	coldNodeSynced               time.Duration
	rotations                    []time.Duration // every node, every rotation
	rotationMax                  []time.Duration // per rotation
	copyLoop                     []time.Duration
	rssKiB                       []int
	anonKiB                      []int
	watchesBefore                float64
	idleCPU                      []time.Duration
	startReqs, idleReqs          map[string]float64
	rotationReqs                 map[string]float64 // per agent per rotation
	watchesSecrets, watchesTotal float64
	engine                       string
	apiserverRSSKiB              int
	plugin                       []time.Duration // credential-provider runs
	bigSecret                    []time.Duration // ..data swap → both files, 10,000-entry Secret
	rotationCPU                  []cpuShare      // who used the cores while a rotation reached every node
	hostsTOML                    []time.Duration // every node, every rotation of the annotated Secret: → hosts.toml header
	hostsTOMLKubelet             []time.Duration // the same rotations: → kubelet file
	pluginEntries                int
	registry                     string // the registry double's host:port, the Secret's key
	verify                       verifyRun
}

func run(ctx context.Context, cfg config) error {
	if len(cfg.curve) > 0 {
		return runCurve(ctx, cfg)
	}
	if os.Getenv("BENCH_ONLY") == "big-secret" {
		// One case alone, for working on it; nothing is written.
		bin, err := agentBinary()
		if err != nil {
			return err
		}
		work, err := os.MkdirTemp("", "nodecreds-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		return (&results{cfg: cfg}).measureBigSecret(ctx, bin, work, envInt("BENCH_ROTATIONS", 20))
	}
	if os.Getenv("BENCH_ONLY") == "rotations" {
		// The control plane, the agents and their rotations alone (with
		// BENCH_AGENTS etc.), for working on them; nothing is written.
		res := &results{cfg: cfg}
		if err := measure(ctx, cfg, res); err != nil {
			return err
		}
		if cfg.verify {
			fmt.Print(res.verifyMarkdown())
		}
		return nil
	}
	res := &results{cfg: cfg}
	if err := measure(ctx, cfg, res); err != nil {
		return err
	}
	return res.finish(ctx, cfg)
}

// writeCalibration writes, to the file BENCH_CALIBRATION names, what make
// fleet's hollow agents are compared with (docs/scale.md): the rotation
// latencies and the API requests per agent at start and per rotation.
func writeCalibration(res *results) error {
	path := os.Getenv("BENCH_CALIBRATION")
	if path == "" {
		return nil
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b, err := json.MarshalIndent(map[string]any{
		"agents": res.cfg.agents, "rotations": res.cfg.rotations,
		"p50": ms(meter.Pct(res.rotations, 50)), "p99": ms(meter.Pct(res.rotations, 99)), "max": ms(slices.Max(res.rotations)),
		"startRequestsPerAgent": res.startReqs, "rotationRequestsPerAgent": res.rotationReqs,
	}, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func agentBinary() (string, error) {
	bin := filepath.Join(cluster.RepoRoot(), "bin", "nodecreds")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s missing: run make build", bin)
	}
	return bin, nil
}

// measure runs cfg.agents agents against a local control plane: cold start,
// idle cost, rotations (with the copy loop beside them).
func measure(ctx context.Context, cfg config, res *results) error {
	restore, err := meter.RaiseInotifyInstances(cfg.agents, logf)
	if err != nil {
		return err
	}
	defer restore()
	defer meter.PauseProactiveReclaim(logf)()
	bin := filepath.Join(cluster.RepoRoot(), "bin", "nodecreds")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s missing: run make build", bin)
	}
	work, err := os.MkdirTemp("", "nodecreds-bench-")
	if err != nil {
		return err
	}
	if os.Getenv("BENCH_KEEP") != "" {
		logf("work folder kept (BENCH_KEEP): %s", work)
	} else {
		defer os.RemoveAll(work)
	}

	d, err := startRegistry()
	if err != nil {
		return err
	}
	defer d.close()
	res.registry = d.addr

	logf("starting the control plane")
	// Priority and fairness on, as on real API servers (and make fleet).
	c, err := cluster.Start(ctx, filepath.Join(work, "cluster"), "--enable-priority-and-fairness=true")
	if err != nil {
		return err
	}
	defer c.Stop()
	objs, err := cluster.ReadManifest(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml"))
	if err != nil {
		return err
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		return err
	}
	secrets := c.Admin.CoreV1().Secrets(ns)
	if _, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: secretData(res.registry, "v0")},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}

	logf("creating %d Nodes and ServiceAccount tokens", cfg.agents)
	agents := make([]*agent, cfg.agents)
	for i := range agents {
		a := &agent{name: fmt.Sprintf("bench-%03d", i), root: filepath.Join(work, "nodes", fmt.Sprintf("%03d", i))}
		for _, d := range []string{"var/lib/kubelet", "root/.docker", certsDir} {
			if err := os.MkdirAll(filepath.Join(a.root, d), 0o700); err != nil {
				return err
			}
		}
		if _, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.name}}, metav1.CreateOptions{}); err != nil {
			return err
		}
		agents[i] = a
	}
	kubeconfigs := make([]string, cfg.agents)
	for i := range agents {
		// A token per agent, bound to a Pod on its node, as each DaemonSet
		// Pod gets its own.
		kc, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", agents[i].name)
		if err != nil {
			return err
		}
		p := filepath.Join(work, fmt.Sprintf("agent-%03d.kubeconfig", i))
		if err := os.Rename(kc, p); err != nil {
			return err
		}
		kubeconfigs[i] = p
	}

	watch, err := meter.NewFileWatch(kubeletFiles(agents))
	if err != nil {
		return err
	}
	defer watch.Close()

	before, err := meter.APIMetrics(c.RESTConfig)
	if err != nil {
		return err
	}
	res.watchesBefore, _ = watches(before)
	logf("starting %d agents", cfg.agents)
	// Every figure but the verified rotations' is taken with --verify=off:
	// the Secret update → file path, as issue 16's targets measure it.
	startAll := func(verify bool) error {
		for i, a := range agents {
			args := []string{"sync", "--kubeconfig", kubeconfigs[i], "--namespace", ns, "--node-name", a.name,
				"--host-root", a.root, "--containerd-certs-dir", certsDir, "--metrics-addr", "0", "--log-level", "warn"}
			if !verify {
				args = append(args, "--verify=off")
			}
			a.cmd = exec.Command(bin, args...)
			logFile, err := os.OpenFile(filepath.Join(a.root, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			// The child has its own descriptor once started.
			err = func() error {
				defer logFile.Close()
				a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
				return a.cmd.Start()
			}()
			if err != nil {
				return err
			}
		}
		return nil
	}
	start := time.Now()
	defer stopAgents(agents)
	if err := startAll(false); err != nil {
		return err
	}
	lat, err := watch.Until(ctx, wantAuth("v0"), start, 3*time.Minute)
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	res.cold = slices.Max(lat)
	logf("cold start: all %d kubelet files written after %s", cfg.agents, res.cold.Round(time.Millisecond))
	if err := waitAnnotated(ctx, c, cfg.agents, 2*time.Minute); err != nil {
		return err
	}
	res.coldNodeSynced = time.Since(start)
	time.Sleep(3 * time.Second) // let start-up traffic drain
	afterStart, err := meter.APIMetrics(c.RESTConfig)
	if err != nil {
		return err
	}
	res.startReqs = perAgent(diff(afterStart, before), cfg.agents)

	logf("idle for %s: CPU, memory and API requests", cfg.idle)
	cpu0 := cpuTimes(agents)
	time.Sleep(cfg.idle)
	cpu1 := cpuTimes(agents)
	afterIdle, err := meter.APIMetrics(c.RESTConfig)
	if err != nil {
		return err
	}
	res.idleReqs = perAgent(diff(afterIdle, afterStart), cfg.agents)
	for i := range agents {
		res.idleCPU = append(res.idleCPU, cpu1[i]-cpu0[i])
		res.rssKiB = append(res.rssKiB, meter.RSSKiB(agents[i].cmd.Process.Pid))
		res.anonKiB = append(res.anonKiB, meter.AnonKiB(agents[i].cmd.Process.Pid))
	}
	res.watchesSecrets, res.watchesTotal = watches(afterIdle)
	res.apiserverRSSKiB = meter.RSSKiB(meter.PidByName("kube-apiserver"))

	// The hand-rolled alternative: every period, GET the Secret and write
	// the file if it changed. One loop is enough to measure its latency.
	copyRoot := filepath.Join(work, "copyloop")
	if err := os.MkdirAll(filepath.Join(copyRoot, "var/lib/kubelet"), 0o700); err != nil {
		return err
	}
	copyCtx, stopCopy := context.WithCancel(ctx)
	defer stopCopy()
	var copyMu sync.Mutex
	copySeen := map[string]time.Time{}
	go copyLoop(copyCtx, c, cfg.copyEvery, filepath.Join(copyRoot, "var/lib/kubelet/config.json"), func(data []byte) {
		copyMu.Lock()
		defer copyMu.Unlock()
		if _, ok := copySeen[string(data)]; !ok {
			copySeen[string(data)] = time.Now()
		}
	})

	for r := 1; r <= cfg.rotations; r++ {
		// Rotate at spread-out points of the copy loop's period, as real
		// rotations would fall, so its latency samples are not all worst case.
		time.Sleep(time.Duration(float64(cfg.copyEvery) * (float64(2*r-1) / float64(2*cfg.rotations))))
		pass := fmt.Sprintf("v%d", r)
		s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Data[corev1.DockerConfigJsonKey] = secretData(res.registry, pass)
		cpu0 := rotationCPU(agents)
		t0 := time.Now()
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			return err
		}
		lat, err := watch.Until(ctx, wantAuth(pass), t0, time.Minute)
		if err != nil {
			return fmt.Errorf("rotation %d: %w", r, err)
		}
		res.rotationCPU = append(res.rotationCPU, rotationCPU(agents).minus(cpu0, slices.Max(lat)))
		res.rotations = append(res.rotations, lat...)
		res.rotationMax = append(res.rotationMax, slices.Max(lat))
		// Wait for the copy loop to catch up too, so each rotation gets
		// one sample of it.
		deadline := time.Now().Add(cfg.copyEvery + 10*time.Second)
		var copyLat time.Duration
		for time.Now().Before(deadline) {
			copyMu.Lock()
			seen, ok := copySeen[string(secretData(res.registry, pass))]
			copyMu.Unlock()
			if ok {
				copyLat = seen.Sub(t0)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		res.copyLoop = append(res.copyLoop, copyLat)
		logf("rotation %d: all %d nodes in %s (p50 %s); copy loop %s", r, cfg.agents,
			slices.Max(lat).Round(time.Millisecond), meter.Pct(lat, 50).Round(time.Millisecond), copyLat.Round(time.Millisecond))
	}
	stopCopy()
	time.Sleep(3 * time.Second) // the last rotation's reports land
	afterRotations, err := meter.APIMetrics(c.RESTConfig)
	if err != nil {
		return err
	}
	res.rotationReqs = perAgent(diff(afterRotations, afterIdle), cfg.agents*cfg.rotations)
	if err := writeCalibration(res); err != nil {
		return err
	}
	if err := measureHostsTOML(ctx, c, cfg, agents, watch, res); err != nil {
		return err
	}
	if !cfg.verify {
		return nil
	}
	return measureVerify(ctx, c, cfg, agents, startAll, watch, d, res)
}

// finish adds the file-engine benchmark and the plugin runs, writes
// benchmarks.md and says which targets were missed.
func (r *results) finish(ctx context.Context, cfg config) error {
	bin, err := agentBinary()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "nodecreds-bench-plugin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	logf("file engine: go test -bench ./internal/nodefile (5 runs)")
	out, err := exec.CommandContext(ctx, "go", "test", "-run=^$", "-bench=.", "-benchtime=20x", "-count=5", "-benchmem", "./internal/nodefile").CombinedOutput()
	if err != nil {
		return fmt.Errorf("go test -bench: %w\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			r.engine += l + "\n"
		}
	}
	fmt.Print(r.engine)

	logf("big Secret: one-entry changes of a 10,000-entry mounted Secret")
	if err := r.measureBigSecret(ctx, bin, work, 20); err != nil {
		return err
	}

	logf("credential provider: %d runs as the kubelet makes them", cfg.pluginRuns)
	if err := r.measurePlugin(ctx, bin, work, cfg.pluginRuns); err != nil {
		return err
	}
	report := r.markdown(meter.Machine())
	// The curve's and the soak's sections are other commands': keep them.
	report = benchdoc.Keep(report, cfg.out)
	if err := os.WriteFile(cfg.out, []byte(report), 0o644); err != nil {
		return err
	}
	logf("wrote %s", cfg.out)
	fmt.Println(report)
	if missed := r.missed(); len(missed) > 0 {
		return fmt.Errorf("targets missed: %s", strings.Join(missed, "; "))
	}
	return nil
}

// target is one figure the benchmark is held to.
type target struct {
	what string
	got  float64
	max  float64
	unit string
}

func (t target) met() bool { return t.got <= t.max }

func (t target) String() string {
	verdict := "met"
	if !t.met() {
		verdict = "**MISSED**"
	}
	return fmt.Sprintf("≤ %g %s: %s", t.max, t.unit, verdict)
}

// targets are issue 16's: rotation p99 ≤ 0.5 s at 100 agents (≤ 2 s at
// 500), max ≤ 2 s, median RSS ≤ 20 MiB, idle CPU ≈ 0 (≤ 0.01 % of a core
// per agent), the 10,000-entry merge + write ≤ 50 ms (median of the runs).
func (r *results) targets() []target {
	p99 := 500.0
	if r.cfg.agents >= 500 {
		p99 = 2000
	}
	cpu := time.Duration(0)
	for _, c := range r.idleCPU {
		cpu += c
	}
	ts := []target{
		{"rotation p99, --verify=off", float64(meter.Pct(r.rotations, 99).Milliseconds()), p99, "ms"},
		{"rotation max, --verify=off", float64(slices.Max(r.rotations).Milliseconds()), 2000, "ms"},
		{"median agent RSS", float64(median(r.rssKiB)) / 1024, 20, "MiB"},
		{"idle CPU per agent", 100 * cpu.Seconds() / float64(r.cfg.agents) / r.cfg.idle.Seconds(), 0.01, "% of a core"},
	}
	if r.engine != "" { // not measured by the curve's runs
		ts = append(ts,
			target{"10,000-entry merge + write, median", r.engineMedianMs("BenchmarkApply/entries=10000"), 50, "ms"},
			target{"one-entry change of a 10,000-entry mounted Secret → both files, median", float64(meter.Pct(r.bigSecret, 50).Milliseconds()), 300, "ms"})
	}
	return ts
}

func (r *results) missed() []string {
	var out []string
	for _, t := range r.targets() {
		if !t.met() {
			out = append(out, fmt.Sprintf("%s %.3g %s (target ≤ %g)", t.what, t.got, t.unit, t.max))
		}
	}
	return out
}

// engineMedianMs is the median ns/op of one go benchmark over its runs.
func (r *results) engineMedianMs(name string) float64 {
	var vals []float64
	for _, l := range strings.Split(r.engine, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && strings.HasPrefix(f[0], name+"-") {
			if ns, err := strconv.ParseFloat(f[2], 64); err == nil {
				vals = append(vals, ns/1e6)
			}
		}
	}
	if len(vals) == 0 {
		return math.Inf(1)
	}
	slices.Sort(vals)
	return vals[len(vals)/2]
}

// measurePlugin times `nodecreds credential-provider` the way the kubelet
// runs it: a fresh process per request, the request on stdin, reading a
// kubelet file of pluginEntries registries.
func (r *results) measurePlugin(ctx context.Context, bin, work string, runs int) error {
	root := filepath.Join(work, "plugin-node")
	file := filepath.Join(root, "var/lib/kubelet/config.json")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	r.pluginEntries = 100
	var doc strings.Builder
	doc.WriteString(`{"auths":{`)
	for i := range r.pluginEntries {
		if i > 0 {
			doc.WriteString(",")
		}
		fmt.Fprintf(&doc, `"registry-%d.example.com":{%s}`, i, wantAuth(fmt.Sprintf("bench-%d", i)))
	}
	doc.WriteString("}}")
	if err := os.WriteFile(file, []byte(doc.String()), 0o600); err != nil {
		return err
	}
	req := `{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry-42.example.com/team/app:v1"}`
	for range runs {
		cmd := exec.CommandContext(ctx, bin, "credential-provider", "--host-root", root)
		cmd.Stdin = strings.NewReader(req)
		t0 := time.Now()
		out, err := cmd.Output()
		d := time.Since(t0)
		if err != nil || !strings.Contains(string(out), `"registry-42.example.com":{"username":"robot"`) {
			if err != nil {
				return fmt.Errorf("credential-provider run: %w", err)
			}
			return errors.New("credential-provider run: answer without the expected entry")
		}
		r.plugin = append(r.plugin, d)
	}
	logf("credential provider: p50 %s, p99 %s", meter.Pct(r.plugin, 50).Round(time.Millisecond), meter.Pct(r.plugin, 99).Round(time.Millisecond))
	return nil
}

func kubeletFiles(agents []*agent) []string {
	out := make([]string, len(agents))
	for i, a := range agents {
		out[i] = filepath.Join(a.root, "var/lib/kubelet/config.json")
	}
	return out
}

func waitAnnotated(ctx context.Context, c *cluster.Cluster, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		nodes, err := c.Admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ok := 0
		for _, nd := range nodes.Items {
			if nd.Annotations["nodecreds.io/revision"] != "" {
				ok++
			}
		}
		if ok >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d Nodes annotated", ok, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func copyLoop(ctx context.Context, c *cluster.Cluster, every time.Duration, file string, seen func([]byte)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s, err := c.Admin.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
		if err == nil {
			data := s.Data[corev1.DockerConfigJsonKey]
			if old, _ := os.ReadFile(file); !bytes.Equal(old, data) {
				_ = os.WriteFile(file, data, 0o600)
			}
			seen(data)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func diff(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if strings.HasPrefix(k, "apiserver_request_total") {
			if d := v - before[k]; d > 0 {
				out[k] = d
			}
		}
	}
	return out
}

func perAgent(m map[string]float64, n int) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		out[strings.TrimPrefix(k, "apiserver_request_total ")] = v / float64(n)
	}
	return out
}

func watches(m map[string]float64) (secrets, total float64) {
	for k, v := range m {
		if strings.HasPrefix(k, "apiserver_longrunning_requests WATCH") {
			total += v
			if strings.HasSuffix(k, " secrets") {
				secrets += v
			}
		}
	}
	return
}

func cpuTimes(agents []*agent) []time.Duration {
	out := make([]time.Duration, len(agents))
	for i, a := range agents {
		out[i] = meter.CPUTime(a.cmd.Process.Pid)
	}
	return out
}

func median(v []int) int {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func (r *results) markdown(machine string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	cpuTotal := time.Duration(0)
	for _, c := range r.idleCPU {
		cpuTotal += c
	}
	rssMax := slices.Max(r.rssKiB)
	w("# nodecreds benchmarks\n\n")
	w("Measured %s by `make bench` (scripts/bench) on: %s.\n", time.Now().UTC().Format("2006-01-02"), machine)
	w("Command: `BENCH_AGENTS=%d BENCH_ROTATIONS=%d BENCH_IDLE=%s BENCH_COPY_PERIOD=%s make bench`.\n\n", r.cfg.agents, r.cfg.rotations, r.cfg.idle, r.cfg.copyEvery)
	w("Setup: one local etcd + kube-apiserver (built from Go modules, 127.0.0.1) and %d `nodecreds sync` processes, each with its own node root (containerd's certs.d folder included, passed as `--containerd-certs-dir`), Node object and ServiceAccount token (RBAC from deploy/daemonset.yaml), all on this one machine — the agents, the API server and the measuring program share its %d cores. The machine's proactive memory reclaim (DAMON pageout of memory idle for about a minute, a setting of this VM) is paused for the run and switched back on after (`BENCH_RECLAIM=on` keeps it; docs/scale.md shows what it costs). The Secret's registry is a registry double the benchmark serves on 127.0.0.1 (plain HTTP, a Basic challenge, the current password accepted).\n\n**Verification**: every figure but those of the section \"Rotation with verification\" is measured with the agents run with `--verify=off`, so that they measure what issue 16's targets are about — a Secret update reaching the node files — as before verification existed. With verification on (the default), a rotation also waits for each node's login, by design up to `--verify-spread` (random) plus the login: that is measured last, in its own section, after the agents are restarted with the defaults, and reported, not held to a target.\n\n", r.cfg.agents, runtime.NumCPU())
	w("## Targets\n\n| target | measured | |\n| --- | --- | --- |\n")
	for _, t := range r.targets() {
		w("| %s | %.3g %s | %s |\n", t.what, t.got, t.unit, t)
	}
	w("\n`make bench` exits non-zero when a target is missed.\n\n")
	w("## Results\n\n| measure | result | target |\n| --- | --- | --- |\n")
	w("| cold start: all %d kubelet files written | %s | |\n", r.cfg.agents, ms(r.cold))
	w("| cold start: all %d Nodes annotated | %s | |\n", r.cfg.agents, ms(r.coldNodeSynced))
	w("| rotation, Secret update → kubelet file, p50 (%d samples) | %s | |\n", len(r.rotations), ms(meter.Pct(r.rotations, 50)))
	w("| rotation p99 | %s | ≤ 0.5 s (≤ 2 s at 500 agents) |\n", ms(meter.Pct(r.rotations, 99)))
	w("| rotation max | %s | ≤ 2 s |\n", ms(slices.Max(r.rotations)))
	w("| rotation, Secret update → containerd hosts.toml header, p50 (%d samples) | %s | |\n", len(r.hostsTOML), ms(meter.Pct(r.hostsTOML, 50)))
	w("| rotation → hosts.toml p99 | %s | |\n", ms(meter.Pct(r.hostsTOML, 99)))
	if v := r.verify; len(v.rotations) > 0 {
		w("| rotation with verification (`--verify=on`, `--verify-spread %s`), Secret update → kubelet file, p50 / p99 / max (%d samples) | %s / %s / %s | reported, no target |\n",
			v.spread, len(v.rotations), ms(meter.Pct(v.rotations, 50)), ms(meter.Pct(v.rotations, 99)), ms(slices.Max(v.rotations)))
		w("| registry requests per rotation with verification, all %d nodes | %s | |\n", r.cfg.agents, v.requestsSummary())
	}
	w("| agent resident memory (RSS), median / max | %.1f / %.1f MiB | median ≤ 20 MiB |\n", float64(median(r.rssKiB))/1024, float64(rssMax)/1024)
	w("| of which anonymous (heap, stacks), median / max | %.1f / %.1f MiB | |\n", float64(median(r.anonKiB))/1024, float64(slices.Max(r.anonKiB))/1024)
	w("| agent CPU while idle for %s, all %d agents together | %s (%.3f%% of one core per agent) | ≈ 0 |\n", r.cfg.idle, r.cfg.agents, cpuTotal.Round(time.Millisecond), 100*cpuTotal.Seconds()/float64(r.cfg.agents)/r.cfg.idle.Seconds())
	w("| kube-apiserver resident memory with %d agents | %.0f MiB | |\n", r.cfg.agents, float64(r.apiserverRSSKiB)/1024)
	w("| open watches on Secrets opened by the agents | %.0f (%.2f per agent; %.0f were open before they started) | one per source Secret per agent |\n\n", r.watchesSecrets-r.watchesBefore, (r.watchesSecrets-r.watchesBefore)/float64(r.cfg.agents), r.watchesBefore)
	w("**The hosts.toml rows**: each sample is one node's time from a Secret update to the file event after which its `%s/%s/hosts.toml` holds the new `Authorization` header, watched as the kubelet files are. They come from %d more rotations after the kubelet-file ones, once the bench's Secret is annotated `nodecreds.io/runtime-auth: \"true\"` and every agent has created that file (all agents run with `--containerd-certs-dir %s` under their node root, which writes nothing while no Secret is annotated); each sync writes the node files first, then hosts.toml, and in these rotations the kubelet file took p50 %s, p99 %s.\n\n",
		certsDir, "127.0.0.1:<port>", len(r.hostsTOML)/max(r.cfg.agents, 1), certsDir, ms(meter.Pct(r.hostsTOMLKubelet, 50)), ms(meter.Pct(r.hostsTOMLKubelet, 99)))
	w("### API server requests per agent\n\n| verb resource | at start (until all synced) | during %s idle |\n| --- | --- | --- |\n", r.cfg.idle)
	keys := map[string]bool{}
	for k := range r.startReqs {
		keys[k] = true
	}
	for k := range r.idleReqs {
		keys[k] = true
	}
	keys["LIST secrets"], keys["WATCH secrets"] = true, true
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		if r.startReqs[k] < 0.05 && r.idleReqs[k] < 0.005 && !strings.HasSuffix(k, " secrets") {
			continue // the benchmark's own set-up, not the agents
		}
		w("| %s | %.2f | %.3f |\n", k, r.startReqs[k], r.idleReqs[k])
	}
	w("\n`PUT leases` and `GET /openapi/v3`, where they appear, are the API server's own housekeeping, not the agents'.\n\nWATCH requests are counted by `apiserver_request_total` only when they end, so open watches are counted from `apiserver_longrunning_requests` above. No `LIST secrets` at all: client-go %s streams the informer's initial list over its watch (WatchListClient), so each agent opens exactly one request per source Secret and keeps it, plus one watch of its own Node (field-selected; for Secrets limited to node pools).\n\n", "v0.37")
	w("Start-up requests are, per agent: the Secret informer's watch; the watch of its own Node; one GET of its Node; one PATCH of nodes/status carrying the annotations and the condition, and the CredentialsApplied Event POST (the condition turned True; a routine rotation afterwards is the PATCH alone); apiserver counts also include the benchmark's own Node creations and token requests, divided by the agent count. Idle: nothing but the open watch (no polling; the resync re-reads the informer's cache, not the API).\n\n")
	w("### Rotation latency per rotation (all %d nodes)\n\n| rotation | slowest node | p50 | CPU used until the slowest node had it |\n| --- | --- | --- | --- |\n", r.cfg.agents)
	for i, m := range r.rotationMax {
		lat := r.rotations[i*r.cfg.agents : (i+1)*r.cfg.agents]
		w("| %d | %s | %s | %s |\n", i+1, ms(m), ms(meter.Pct(lat, 50)), r.rotationCPU[i])
	}
	if len(r.verify.rotations) > 0 {
		w("%s", r.verifyMarkdown())
	}
	w("\n## Alternatives, measured or cited in the same run\n\n| approach | time until the node file changes after a rotation | API cost per node |\n| --- | --- | --- |\n")
	w("| nodecreds (watch) | p50 %s, max %s | one watch; nothing while idle |\n", ms(meter.Pct(r.rotations, 50)), ms(slices.Max(r.rotations)))
	copyStr := make([]string, len(r.copyLoop))
	for i, c := range r.copyLoop {
		copyStr[i] = ms(c)
	}
	w("| hand-rolled copy loop, GET every %s (measured here, %d rotations at spread-out points of its period) | %s (uniform in 0–%s) | one GET every %s whether anything changed or not: %.0f requests/hour/node |\n", r.cfg.copyEvery, len(r.copyLoop), strings.Join(copyStr, ", "), r.cfg.copyEvery, r.cfg.copyEvery, time.Hour.Seconds()/r.cfg.copyEvery.Seconds())
	w("| Secret mounted as a volume, copied from there | the kubelet refreshes mounted Secrets on its periodic pod sync (`syncFrequency`, default 1 m) plus its Secret cache TTL (`configMapAndSecretChangeDetectionStrategy: Watch` by default): typically up to about a minute, then the copy | the kubelet's own watch |\n")
	w("\nEvery approach that writes node files, nodecreds included, then meets the kubelet's credential cache: `k8s.io/kubernetes/pkg/credentialprovider` caches what it read from `config.json` for **5 minutes** (`Lifetime: 5 * time.Minute` in `NewDefaultDockerKeyring`), so new pulls can use the old credentials for up to 5 minutes after the file changed. Keep the old password valid for that long when rotating — or, where kubelet flags can be set, run nodecreds as the kubelet's credential provider as well ([credential-provider.md](credential-provider.md)): the kubelet then asks it per registry every 10 s, and a rotation reaches new pulls within seconds (measured on a real node below).\n\n")
	w("## File engine (`go test -bench ./internal/nodefile`)\n\nParse + merge + atomic write (temp file, fsync, rename-exchange, folder fsync, and the state file written before and after) of one `config.json` holding N entries (half foreign, half from the source); each iteration rotates one entry. The no-change path reads, parses, merges and compares, and writes nothing (the benchmark fails if the file's inode or mtime changes).\n\n```\n%s```\n\n", r.engine)
	w("## Credential-provider plugin runs\n\nThe kubelet starts `nodecreds credential-provider` at most once per registry per cache period (1 s by default): one process, the request on stdin, a kubelet file of %d registries read and matched, the answer on stdout. %d runs, measured from exec to exit: p50 %s, p99 %s, max %s.\n\n", r.pluginEntries, len(r.plugin), ms(meter.Pct(r.plugin, 50)), ms(meter.Pct(r.plugin, 99)), ms(slices.Max(r.plugin)))
	w("## On a real node (`make e2e-node`)\n\nRecorded runs of the seed scenario on a real kubelet with containerd, both modes: [real-node.md](real-node.md).\n\n")
	w(`## Notes on the targets

* **Rotation** (p99 ≤ 0.5 s at 100 agents, ≤ 2 s at 500; max ≤ 2 s): see
  the targets table; measured with ` + "`--verify=off`" + ` (the rotation with
  verification is above, reported without a target: it is the spread plus a
  login by design). A watch event is a whole new version, so the agent
  syncs at once (the 100 ms debounce applies only to what follows within
  it, and to target drift); its own writes no longer trigger a second sync.
  What remains is the watch event reaching 100 processes that share this
  machine's 2 cores and one disk with the API server and etcd: the
  per-rotation CPU column above shows the agents' own CPU filling the
  cores. A CPU profile of one agent through 300 rotations (` + "`NODECREDS_CPUPROFILE=/tmp/agent.prof NODECREDS_CPUPROFILE_FOR=40s go run ./test/soak/cmd/soak -rotations 300 -out '' -tags profile`" + `)
  puts about 60 %% of it in the file engine and most of that in system
  calls — creating, fsyncing and renaming the temp files and the state that
  make every write atomic and crash-safe (two state saves and two targets
  per sync, each a temp file, fsync, rename and folder fsync) — and about
  10 %% in the Node report; see docs/scale.md for what grows with the fleet.
* **Memory** (median RSS ≤ 20 MiB): what each part costs, measured with
  stripped static test programs on this machine: a process that creates a
  client-go clientset is 18 MiB resident (client-go registers every API
  group's types at start-up); one with only a core/v1 REST client and its
  own scheme is 9.6 MiB. The agent therefore talks to the API server
  through internal/kube (core/v1 and apps/v1 over client-go's REST client),
  records its Events with one API call each instead of client-go's
  broadcaster (which pulled in the strategic-merge-patch and OpenAPI
  packages), and parses the compiled-in TLS roots only for check --probe
  (0.7 MiB allocated at every start before). The anonymous part (heap,
  stacks) is about 4.5 MiB; the rest is the binary's pages that start-up
  touches, clean and file-backed. The request is 24 MiB; the limit, 112
  MiB with GOMEMLIMIT=64MiB, is for the largest inputs nodecreds accepts
  (section "Memory: the largest inputs", and values.yaml).
* **Idle CPU** ≈ 0 and **API traffic**: met; see above.
* **Rotation with the credential provider** (new Pod Running < 15 s after a
  rotation): met with the default 1 s cache (2 s in the runs recorded
  above). With a 10 s cache the recorded runs took 14–18 s: a pull that meets the stale cached answer fails and the Pod
  waits out an image-pull back-off (10 s plus jitter) before the next try,
  so any cache longer than the time from a rotation to the next pull costs
  a whole back-off. Hence the 1 s default; a plugin run costs about 14 ms.
* **10,000-entry merge + write** (≤ 50 ms) and the **10,000-entry mounted
  Secret** end to end (≤ 300 ms): see the targets table. Where the time
  went (140 ms and 809 ms before), measured phase by phase and with pprof:
  parsing the file with encoding/json's decoder (now json.Valid plus one
  walk that keeps values as slices of the file, and an indenter of our own;
  both checked byte for byte against encoding/json by FuzzDocument);
  sorting thousands of keys several times per merge (now once, and not at
  all when the file is already in order, as nodecreds writes it); the state
  file through encoding/json's reflection (now encoded and decoded by hand,
  with pending fingerprints only where they differ from the owned ones);
  parsing and hashing again the file nodecreds itself wrote the sync before
  (the engine now remembers, by the SHA-256 of the content, what it read
  and wrote: a file anyone else changed, even by one byte, is parsed
  afresh; BenchmarkApplyFirst measures an engine that remembers nothing,
  as after a restart); four state saves per sync of two targets (now one
  for every target's intent before the first is touched and one for the
  final records after the last — the fault suite's SIGKILL runs hold);
  a second full sync after every change, set off by the agent's own writes
  (now told apart by the file it left); and, end to end, the 100 ms
  debounce before a ..data swap was synced (now at once). What is left for
  the big Secret: validating the Secret's 10,000 entries (~45 ms), the two
  targets' merges (a few map operations per entry, ~40 ms each for
  10–12,000 entries on this machine) and the atomic writes. Files of that
  size are rare; typical node files hold a handful of entries and take a
  few ms, almost all of it fsync.
`)
	return b.String()
}

func envInts(k string) []int {
	var out []int
	for _, f := range strings.Split(os.Getenv(k), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// runCurve measures each agent count in turn, each on a fresh control
// plane, and writes the side-by-side table into benchmarks.md (between its
// curve markers, leaving the rest of the file to `make bench`).
func runCurve(ctx context.Context, cfg config) error {
	var all []*results
	for _, n := range cfg.curve {
		c := cfg
		c.agents, c.curve, c.verify = n, nil, false
		logf("=== %d agents ===", n)
		res := &results{cfg: c}
		if err := measure(ctx, c, res); err != nil {
			return fmt.Errorf("%d agents: %w", n, err)
		}
		all = append(all, res)
	}
	section := curveMarkdown(all)
	fmt.Print(section)
	if err := benchdoc.Replace(cfg.out, benchdoc.Curve, section); err != nil {
		return err
	}
	logf("wrote %s", cfg.out)
	var missed []string
	for _, r := range all {
		for _, m := range r.missed() {
			if strings.HasPrefix(m, "rotation") {
				missed = append(missed, fmt.Sprintf("%d agents: %s", r.cfg.agents, m))
			}
		}
	}
	if len(missed) > 0 {
		return fmt.Errorf("targets missed: %s", strings.Join(missed, "; "))
	}
	return nil
}

func curveMarkdown(all []*results) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("## Cost curve (`make bench-curve`)\n\nMeasured %s by `BENCH_CURVE=%s make bench-curve` on %s: for each agent count a fresh control plane and that many agents, all on this machine, with its proactive memory reclaim paused as for make bench. Rotation targets: p99 ≤ 0.5 s at 100 agents, ≤ 2 s at 500.\n\n", time.Now().UTC().Format("2006-01-02"), joinInts(all), meter.Machine())
	w("| agents |")
	for _, r := range all {
		w(" %d |", r.cfg.agents)
	}
	w("\n| --- |%s\n", strings.Repeat(" --- |", len(all)))
	row := func(name string, f func(r *results) string) {
		w("| %s |", name)
		for _, r := range all {
			w(" %s |", f(r))
		}
		w("\n")
	}
	row("cold start: all kubelet files written", func(r *results) string { return ms(r.cold) })
	row("cold start: all Nodes annotated", func(r *results) string { return ms(r.coldNodeSynced) })
	row("rotation p50", func(r *results) string { return ms(meter.Pct(r.rotations, 50)) })
	row("rotation p99", func(r *results) string { return ms(meter.Pct(r.rotations, 99)) })
	row("rotation max", func(r *results) string { return ms(slices.Max(r.rotations)) })
	row("rotation → hosts.toml p50 / p99 (annotated Secret)", func(r *results) string {
		return ms(meter.Pct(r.hostsTOML, 50)) + " / " + ms(meter.Pct(r.hostsTOML, 99))
	})
	row("agent RSS, median", func(r *results) string { return fmt.Sprintf("%.1f MiB", float64(median(r.rssKiB))/1024) })
	row("idle CPU, all agents together", func(r *results) string {
		var c time.Duration
		for _, x := range r.idleCPU {
			c += x
		}
		return fmt.Sprintf("%s in %s", c.Round(time.Millisecond), r.cfg.idle)
	})
	row("open watches on Secrets opened by the agents", func(r *results) string { return fmt.Sprintf("%.0f", r.watchesSecrets-r.watchesBefore) })
	row("API requests per agent at start", func(r *results) string { return fmt.Sprintf("%.1f", sum(r.startReqs)) })
	row("API requests per agent while idle", func(r *results) string { return fmt.Sprintf("%.2f", sum(r.idleReqs)) })
	row("CPU while the slowest rotation reached every node", func(r *results) string {
		worst := slices.MaxFunc(r.rotationCPU, func(a, b cpuShare) int { return cmp.Compare(a.wall, b.wall) })
		return worst.String()
	})
	row("kube-apiserver RSS", func(r *results) string { return fmt.Sprintf("%.0f MiB", float64(r.apiserverRSSKiB)/1024) })
	row("copy loop (GET every 30 s), rotation to file, median", func(r *results) string { return ms(meter.Pct(r.copyLoop, 50)) })
	w("\nThe copy loop is one loop measured beside the agents in the same run: its latency does not depend on the node count (uniform in 0–30 s), its cost does (one GET per node every 30 s).\n\n")
	return b.String()
}

func joinInts(all []*results) string {
	parts := make([]string, len(all))
	for i, r := range all {
		parts[i] = strconv.Itoa(r.cfg.agents)
	}
	return strings.Join(parts, ",")
}

func sum(m map[string]float64) float64 {
	t := 0.0
	for k, v := range m {
		if strings.Contains(k, "leases") || strings.Contains(k, "openapi") {
			continue // the API server's own housekeeping
		}
		t += v
	}
	return t
}

// cpuShare is the CPU time the agents, the API server and etcd used while
// a rotation went from the Secret update to the last node's file: it shows
// which of them the machine's cores were busy with.
type cpuShare struct {
	agents, agentsSys, apiserver, etcd, wall time.Duration
	agentFaults                              int // page faults (minor and major) of all agents
}

func rotationCPU(agents []*agent) cpuShare {
	var c cpuShare
	for _, a := range agents {
		st := meter.Stat(a.cmd.Process.Pid)
		c.agents += st.User + st.Sys
		c.agentsSys += st.Sys
		c.agentFaults += st.Faults
	}
	c.apiserver = meter.CPUTime(meter.PidByName("kube-apiserver"))
	c.etcd = meter.CPUTime(meter.PidByName("etcd"))
	return c
}

func (c cpuShare) minus(before cpuShare, wall time.Duration) cpuShare {
	return cpuShare{agents: c.agents - before.agents, agentsSys: c.agentsSys - before.agentsSys, agentFaults: c.agentFaults - before.agentFaults,
		apiserver: c.apiserver - before.apiserver, etcd: c.etcd - before.etcd, wall: wall}
}

func (c cpuShare) String() string {
	avail := time.Duration(runtime.NumCPU()) * c.wall
	pctOf := func(d time.Duration) float64 { return 100 * d.Seconds() / avail.Seconds() }
	return fmt.Sprintf("agents %s (%.0f%%; %s of it in the kernel; %d page faults), kube-apiserver %s (%.0f%%), etcd %s (%.0f%%) of %s (%d cores × %s)",
		c.agents.Round(10*time.Millisecond), pctOf(c.agents), c.agentsSys.Round(10*time.Millisecond), c.agentFaults,
		c.apiserver.Round(10*time.Millisecond), pctOf(c.apiserver),
		c.etcd.Round(10*time.Millisecond), pctOf(c.etcd), avail.Round(10*time.Millisecond), runtime.NumCPU(), c.wall.Round(time.Millisecond))
}
