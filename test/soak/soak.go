// Package soak runs one agent against a real API server through many
// rotations — with drift edits, a deleted target and an API server restart
// on the way — and samples its resident memory, heap, goroutines and open
// file descriptors, to show that nothing grows. `make soak` runs it long
// (test/soak/cmd/soak); `make test` runs a short version of the same code
// (test.TestSoakShort).
package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// Config says how long to soak.
type Config struct {
	Binary      string // the nodecreds binary
	Dir         string // work folder (cluster, node root)
	Rotations   int
	SampleEvery int
	Logf        func(format string, args ...any)
}

// Sample is the agent as seen through its /metrics.
type Sample struct {
	Rotation   int
	RSS        float64 // bytes
	Heap       float64 // bytes in use
	Goroutines float64
	FDs        float64
}

// Result is what a soak measured.
type Result struct {
	Samples    []Sample
	Applied    int           // rotations seen in the kubelet file
	Drift      int           // drift edits corrected
	CatchUp    time.Duration // API server back → a change in the file
	IdleWrites float64       // writes during the quiet minute at the end (want 0)
	Took       time.Duration
}

const (
	ns       = "nodecreds"
	secret   = "registry-credentials"
	node     = "soak-node"
	registry = "soak.example.test"
	foreign  = "foreign.example.test"
)

// Run soaks one agent. The control plane comes from `make controlplane`.
func Run(ctx context.Context, cfg Config) (Result, error) {
	start := time.Now()
	var res Result
	c, err := cluster.Start(ctx, filepath.Join(cfg.Dir, "cluster"))
	if err != nil {
		return res, fmt.Errorf("starting the control plane (make controlplane builds it): %w", err)
	}
	defer c.Stop()
	if err := cluster.Install(ctx, c.RESTConfig, filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml")); err != nil {
		return res, err
	}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		return res, err
	}
	secrets := c.Admin.CoreV1().Secrets(ns)
	if _, err := secrets.Create(ctx, secretFor(0), metav1.CreateOptions{}); err != nil {
		return res, err
	}
	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", node)
	if err != nil {
		return res, err
	}
	root := filepath.Join(cfg.Dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return res, err
	}
	addr, err := freeAddr()
	if err != nil {
		return res, err
	}
	// A 1 s resync, so the quiet period at the end proves that re-checks
	// that find nothing to do write nothing.
	agent := exec.CommandContext(ctx, cfg.Binary, "sync", "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", node,
		"--host-root", root, "--metrics-addr", addr, "--resync", "1s", "--verify=off")
	logFile, err := os.Create(filepath.Join(cfg.Dir, "agent.log"))
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	agent.Stdout, agent.Stderr = logFile, logFile
	if err := agent.Start(); err != nil {
		return res, err
	}
	defer func() { _ = agent.Process.Kill(); _ = agent.Wait() }()
	s := &soaker{cfg: cfg, root: root, metrics: "http://" + addr + "/metrics"}
	if err := testsupport.WaitFor(ctx, 30*time.Second, 5*time.Millisecond, "the first sync", func() bool { return s.has(0) }); err != nil {
		log, _ := os.ReadFile(logFile.Name())
		return res, fmt.Errorf("%w; agent log:\n%s", err, log)
	}

	for i := 1; i <= cfg.Rotations; i++ {
		if i == cfg.Rotations/2 {
			c.StopAPIServer()
			time.Sleep(2 * time.Second)
			if err := c.RestartAPIServer(ctx); err != nil {
				return res, err
			}
			secrets = c.Admin.CoreV1().Secrets(ns)
		}
		back := time.Now()
		if err := rotate(ctx, secrets, i); err != nil {
			return res, fmt.Errorf("rotation %d: %w", i, err)
		}
		if err := testsupport.WaitFor(ctx, 20*time.Second, 5*time.Millisecond, fmt.Sprintf("rotation %d in both files", i), func() bool { return s.has(i) }); err != nil {
			return res, err
		}
		if i == cfg.Rotations/2 {
			res.CatchUp = time.Since(back)
		}
		res.Applied++
		if err := s.disturb(ctx, i, &res); err != nil {
			return res, err
		}
		if i%cfg.SampleEvery == 0 {
			sm, err := s.sample(i)
			if err != nil {
				return res, err
			}
			res.Samples = append(res.Samples, sm)
			cfg.Logf("rotation %d: RSS %.1f MiB, heap %.1f MiB, %d goroutines, %d fds", i, sm.RSS/(1<<20), sm.Heap/(1<<20), int(sm.Goroutines), int(sm.FDs))
		}
	}
	// Quiet: resyncs every second find nothing to do and write nothing.
	before, err := s.writes()
	if err != nil {
		return res, err
	}
	time.Sleep(5 * time.Second)
	after, err := s.writes()
	if err != nil {
		return res, err
	}
	res.IdleWrites = after - before
	res.Took = time.Since(start)
	return res, nil
}

// disturb makes every 10th rotation followed by a drift edit of the kubelet
// file, and every 25th by the docker file's deletion; both must be undone.
func (s *soaker) disturb(ctx context.Context, i int, res *Result) error {
	switch {
	case i%25 == 0:
		if err := os.Remove(filepath.Join(s.root, "root/.docker/config.json")); err != nil {
			return err
		}
	case i%10 == 0:
		doc := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, foreign, testsupport.B64("them:foreign"))
		if err := os.WriteFile(filepath.Join(s.root, "var/lib/kubelet/config.json"), []byte(doc), 0o600); err != nil {
			return err
		}
	default:
		return nil
	}
	res.Drift++
	return testsupport.WaitFor(ctx, 10*time.Second, 5*time.Millisecond, fmt.Sprintf("drift after rotation %d corrected", i), func() bool { return s.has(i) })
}

type soaker struct {
	cfg     Config
	root    string
	metrics string
}

func secretFor(i int) *corev1.Secret {
	doc, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": testsupport.B64(password(i))}}})
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: doc},
	}
}

func password(i int) string { return "robot:soak-" + strconv.Itoa(i) }

func rotate(ctx context.Context, secrets interface {
	Update(context.Context, *corev1.Secret, metav1.UpdateOptions) (*corev1.Secret, error)
}, i int) error {
	// The API server may still be finding its feet after the restart.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := secrets.Update(ctx, secretFor(i), metav1.UpdateOptions{})
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// has reports whether both targets hold rotation i's credentials.
func (s *soaker) has(i int) bool {
	for _, rel := range []string{"var/lib/kubelet/config.json", "root/.docker/config.json"} {
		data, err := os.ReadFile(filepath.Join(s.root, rel))
		if err != nil {
			return false
		}
		var doc struct {
			Auths map[string]struct{ Auth string } `json:"auths"`
		}
		if json.Unmarshal(data, &doc) != nil || doc.Auths[registry].Auth != testsupport.B64(password(i)) {
			return false
		}
	}
	return true
}

func (s *soaker) scrape() (map[string]float64, error) {
	resp, err := http.Get(s.metrics)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] += v
		}
	}
	return out, sc.Err()
}

// sample scrapes the agent a few times, 300 ms apart, keeping the fewest
// goroutines and open files seen: the sample follows a rotation and,
// every tenth, a drift edit, so a sync may be running at the first scrape,
// holding its folders and temp file open for a moment; a leak shows in
// every scrape.
func (s *soaker) sample(i int) (Sample, error) {
	var out Sample
	for n := range 3 {
		if n > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		m, err := s.scrape()
		if err != nil {
			return Sample{}, err
		}
		sm := Sample{Rotation: i, RSS: m["process_resident_memory_bytes"], Heap: m["go_memstats_heap_inuse_bytes"],
			Goroutines: m["go_goroutines"], FDs: m["process_open_fds"]}
		if n > 0 {
			sm.Goroutines, sm.FDs = min(sm.Goroutines, out.Goroutines), min(sm.FDs, out.FDs)
		}
		out = sm
	}
	return out, nil
}

func (s *soaker) writes() (float64, error) {
	m, err := s.scrape()
	if err != nil {
		return 0, err
	}
	total := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "nodecreds_writes_total") {
			total += v
		}
	}
	return total, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Tolerances: what "flat" means. The first sample is taken after warm-up
// (the first SampleEvery rotations); the last must not exceed it by more.
const (
	RSSGrowth        = 4 << 20 // bytes: GC and page-cache noise, not a leak
	HeapGrowth       = 4 << 20
	GoroutinesGrowth = 3 // a reconnecting watch may hold one briefly
	FDsGrowth        = 2
)

// Flat checks the samples against the tolerances and says what grew.
func (r Result) Flat() error {
	if len(r.Samples) < 2 {
		return fmt.Errorf("%d samples: too few to tell", len(r.Samples))
	}
	first := r.Samples[0]
	// The last three, so one sample taken mid-GC does not decide.
	tail := r.Samples[max(1, len(r.Samples)-3):]
	minOf := func(f func(Sample) float64) float64 {
		vals := make([]float64, len(tail))
		for i, s := range tail {
			vals[i] = f(s)
		}
		return slices.Min(vals)
	}
	var grew []string
	check := func(what string, f func(Sample) float64, tol float64) {
		if last := minOf(f); last > f(first)+tol {
			grew = append(grew, fmt.Sprintf("%s %.0f → %.0f (tolerance +%.0f)", what, f(first), last, tol))
		}
	}
	check("RSS bytes", func(s Sample) float64 { return s.RSS }, RSSGrowth)
	check("heap bytes", func(s Sample) float64 { return s.Heap }, HeapGrowth)
	check("goroutines", func(s Sample) float64 { return s.Goroutines }, GoroutinesGrowth)
	check("open fds", func(s Sample) float64 { return s.FDs }, FDsGrowth)
	if len(grew) > 0 {
		return fmt.Errorf("grew: %s", strings.Join(grew, "; "))
	}
	return nil
}
