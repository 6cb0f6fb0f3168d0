package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecreds/nodecreds/scripts/bench/meter"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// fleet is the control plane and its hollow nodes.
type fleet struct {
	o       options
	c       *cluster.Cluster
	nodes   []nodeSpec
	workers []*worker
	pinned  bool
	undo    []func()
	apiPid  int
	etcdPid int
	etcd    *http.Client
	api     *http.Client
	tracker *nodeTracker
	files   *meter.FileWatch
}

// setupWorkers is how many Nodes, Pods and tokens are made at once.
const setupWorkers = 16

func newFleet(ctx context.Context, o options, work string) (*fleet, error) {
	f := &fleet{o: o}
	ok := false
	defer func() {
		if !ok {
			f.close()
		}
	}()
	logf("starting the control plane (priority and fairness on)")
	c, err := cluster.Start(ctx, filepath.Join(work, "cluster"), "--enable-priority-and-fairness=true")
	if err != nil {
		return nil, err
	}
	f.c = c
	f.undo = append(f.undo, c.Stop)
	f.etcdPid, f.apiPid = c.Pids()
	if o.pin {
		if err := f.pinCPUs(); err != nil {
			return nil, err
		}
	}
	// The set-up's own requests go as fast as the API server takes them.
	admin := rest.CopyConfig(c.RESTConfig)
	admin.QPS, admin.Burst = 2000, 4000
	if c.Admin, err = kubernetes.NewForConfig(admin); err != nil {
		return nil, err
	}
	tr, err := rest.TransportFor(c.RESTConfig)
	if err != nil {
		return nil, err
	}
	f.api = &http.Client{Transport: tr, Timeout: time.Minute}
	f.etcd = &http.Client{Timeout: time.Minute}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, err
	}
	if err := f.install(ctx); err != nil {
		return nil, err
	}
	if err := f.makeNodes(ctx, work); err != nil {
		return nil, err
	}
	if err := f.startWorkers(work); err != nil {
		return nil, err
	}
	logf("opening %d kubelet Node watches", len(f.nodes))
	if err := f.each("kubelets"); err != nil {
		return nil, err
	}
	ok = true
	return f, nil
}

// pinCPUs puts the API server and etcd on CPU 0 and this process on CPU 1
// (the workers it starts inherit its cpuset).
func (f *fleet) pinCPUs() error {
	undo, err := pin(fmt.Sprintf("nodecreds-fleet-%d-api", os.Getpid()), 0, f.etcdPid, f.apiPid)
	if err != nil {
		return err
	}
	f.undo = append(f.undo, undo)
	if undo, err = pin(fmt.Sprintf("nodecreds-fleet-%d", os.Getpid()), 1, os.Getpid()); err != nil {
		return err
	}
	f.undo = append(f.undo, undo)
	runtime.GOMAXPROCS(1) // the one CPU it has
	f.pinned = true
	logf("pinned: etcd and kube-apiserver on CPU 0, the fleet on CPU 1")
	return nil
}

// install applies the manifest a user would (RBAC, ServiceAccount, the
// admission policy; no controllers run the DaemonSet) and the Secret.
func (f *fleet) install(ctx context.Context) error {
	var data []byte
	var err error
	name := "deploy/daemonset.yaml"
	if f.o.flowControl {
		name = "the chart with flowControl.enabled=true"
		cmd := exec.CommandContext(ctx, f.o.chart, "manifest", "-chart", filepath.Join(cluster.RepoRoot(), "deploy", "helm", "nodecreds"), "-set", "flowControl.enabled=true")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if data, err = cmd.Output(); err != nil {
			return fmt.Errorf("rendering the chart with %s (make chart-tool builds bin/chart): %w: %s", f.o.chart, err, strings.TrimSpace(stderr.String()))
		}
	} else if data, err = os.ReadFile(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml")); err != nil {
		return err
	}
	objs, err := cluster.ParseManifest(data, name)
	if err != nil {
		return err
	}
	if err := cluster.Apply(ctx, f.c.RESTConfig, objs, false); err != nil {
		return err
	}
	_, err = f.c.Admin.CoreV1().Secrets(namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: namespace},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: secretData("v0")},
	}, metav1.CreateOptions{})
	return err
}

// makeNodes creates each hollow node's Node, its agent's Pod and the
// Pod-bound token the kubelet would mount, its kubelet's client
// certificate, and its root.
func (f *fleet) makeNodes(ctx context.Context, work string) error {
	logf("creating %d Nodes, agent Pods, tokens and kubelet certificates", f.o.agents)
	start := time.Now()
	f.nodes = make([]nodeSpec, f.o.agents)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(setupWorkers)
	for i := range f.nodes {
		h := &f.nodes[i]
		h.Name, h.Root = fmt.Sprintf("hollow-%05d", i), filepath.Join(work, "nodes", fmt.Sprintf("%05d", i))
		g.Go(func() error { return f.makeNode(gctx, h) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	logf("%d hollow nodes made in %s", f.o.agents, time.Since(start).Round(time.Second))
	return nil
}

func (f *fleet) makeNode(ctx context.Context, h *nodeSpec) error {
	if err := makeRoot(h.Root); err != nil {
		return err
	}
	if _, err := f.c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.Name}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	pod, err := f.c.AgentPod(ctx, namespace, "nodecreds", h.Name)
	if err != nil {
		return err
	}
	if h.Token, err = f.c.PodToken(ctx, pod); err != nil {
		return err
	}
	kubelet, err := f.c.UserConfig("system:node:"+h.Name, "system:nodes")
	if err != nil {
		return err
	}
	h.KubeletCert, h.KubeletKey = kubelet.CertData, kubelet.KeyData
	return nil
}

// startWorkers starts the processes that run the hollow nodes, each with
// its share (-per-process).
func (f *fleet) startWorkers(work string) error {
	for i := 0; i < len(f.nodes); i += f.o.perProcess {
		spec := workerSpec{URL: f.c.URL, CAFile: f.c.CAFile, Log: filepath.Join(f.o.out, "fleet-agents.log"),
			Nodes: f.nodes[i:min(i+f.o.perProcess, len(f.nodes))]}
		b, err := json.Marshal(spec)
		if err != nil {
			return err
		}
		path := filepath.Join(work, fmt.Sprintf("worker-%d.json", len(f.workers)))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return err
		}
		w, err := startWorker(path)
		if err != nil {
			return err
		}
		f.workers = append(f.workers, w)
	}
	logf("%d hollow nodes in %d processes", len(f.nodes), len(f.workers))
	return nil
}

// each sends cmd to every worker at once and waits for all answers.
func (f *fleet) each(cmd string) error {
	_, err := f.ask(cmd)
	return err
}

// ask sends cmd to every worker at once and returns their answers.
func (f *fleet) ask(cmd string) ([]string, error) {
	out := make([]string, len(f.workers))
	var g errgroup.Group
	for i, w := range f.workers {
		g.Go(func() error {
			var err error
			out[i], err = w.call(cmd)
			return err
		})
	}
	return out, g.Wait()
}

// startAgents starts every hollow agent at once, as a DaemonSet created
// (or all its Pods restarted) at once would.
func (f *fleet) startAgents(context.Context) error { return f.each("start") }

// stopAgents stops every agent at once.
func (f *fleet) stopAgents() error { return f.each("stop") }

// kubeletEvents is how many Node events the hollow kubelets received.
func (f *fleet) kubeletEvents() int {
	answers, err := f.ask("events")
	if err != nil {
		logf("%v", err)
	}
	n := 0
	for _, a := range answers {
		v, _ := strconv.Atoi(a)
		n += v
	}
	return n
}

func (f *fleet) close() {
	for _, w := range f.workers {
		w.close()
	}
	if f.tracker != nil {
		f.tracker.stop()
	}
	if f.files != nil {
		f.files.Close()
	}
	for i := len(f.undo) - 1; i >= 0; i-- {
		f.undo[i]()
	}
}

func (f *fleet) kubeletFiles() []string {
	out := make([]string, len(f.nodes))
	for i, h := range f.nodes {
		out[i] = filepath.Join(h.Root, "var/lib/kubelet/config.json")
	}
	return out
}

// rotate sets the Secret's password to pass.
func (f *fleet) rotate(ctx context.Context, pass string) error {
	s, err := f.c.Admin.CoreV1().Secrets(namespace).Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s.Data[corev1.DockerConfigJsonKey] = secretData(pass)
	_, err = f.c.Admin.CoreV1().Secrets(namespace).Update(ctx, s, metav1.UpdateOptions{})
	return err
}

// snapshot is what the API server, etcd and the processes say at one
// instant.
type snapshot struct {
	at                       time.Time
	api, etcd                meter.Samples
	apiCPU, etcdCPU, fleetCP time.Duration
	kubeletEvents            int
}

func (f *fleet) snapshot() (snapshot, error) {
	s := snapshot{at: time.Now(), apiCPU: meter.CPUTime(f.apiPid), etcdCPU: meter.CPUTime(f.etcdPid),
		fleetCP: f.fleetCPU(), kubeletEvents: f.kubeletEvents()}
	var err error
	if s.api, err = meter.Scrape(f.api, f.c.URL+"/metrics"); err != nil {
		return s, err
	}
	s.etcd, err = meter.Scrape(f.etcd, f.c.EtcdURL()+"/metrics")
	return s, err
}

// fleetCPU is the CPU time of the fleet's processes: this one and its
// workers.
func (f *fleet) fleetCPU() time.Duration {
	t := meter.CPUTime(os.Getpid())
	for _, w := range f.workers {
		t += meter.CPUTime(w.cmd.Process.Pid)
	}
	return t
}

// rssSampler keeps the API server's largest resident size seen.
type rssSampler struct {
	mu   sync.Mutex
	peak int
}

func (r *rssSampler) run(ctx context.Context, pid int) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if kib := meter.RSSKiB(pid); kib > 0 {
			r.mu.Lock()
			r.peak = max(r.peak, kib)
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// take returns the peak since the last take and starts again.
func (r *rssSampler) take() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.peak
	r.peak = 0
	return p
}

func durs(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v.Microseconds()) / 1000
	}
	slices.Sort(out)
	return out
}
