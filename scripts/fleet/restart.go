package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/test/cluster"
)

// restart is every agent restarted at once with a rotation pending, and
// what another client of the API server saw meanwhile.
type restart struct {
	Phase *phase
	// Probe is another workload's client (a ServiceAccount of its own, in
	// the default flow schema's priority level, as the agents are without
	// the chart's own), timed before and during the restart.
	ProbeBefore, ProbeDuring probeStats
}

type probeStats struct {
	Requests  int
	Throttled int // 429: priority and fairness turned it away
	Failed    int // any other answer but 200, or none
	P50, P99  float64
	Max       float64 // ms
}

// probeEvery is the other client's pace: sequential GETs, one every 20 ms.
const probeEvery = 20 * time.Millisecond

// probeBaseline is how long the other client is timed before the restart.
const probeBaseline = 5 * time.Second

func (f *fleet) massRestart(ctx context.Context, names []string, rss *rssSampler) (*restart, error) {
	pr, err := newProbe(ctx, f.c)
	if err != nil {
		return nil, err
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { pr.run(pctx); close(done) }()
	defer func() { stop(); <-done }()
	time.Sleep(probeBaseline)
	r := &restart{ProbeBefore: pr.take()}
	logf("restart: stopping all %d agents", len(names))
	if err := f.stopAgents(); err != nil {
		return nil, err
	}
	pr.take()
	logf("restart: a rotation, then all %d agents started at once", len(names))
	pass := "restart"
	r.Phase, err = f.phase(ctx, "restart", pass, names, rss, func(ctx context.Context) error {
		if err := f.rotate(ctx, pass); err != nil {
			return err
		}
		return f.startAgents(ctx)
	})
	if err != nil {
		return nil, err
	}
	r.ProbeDuring = pr.take()
	logf("restart: the other client's GETs p50 %.1f ms, p99 %.1f ms, max %.1f ms before; p50 %.1f ms, p99 %.1f ms, max %.1f ms, %d throttled during",
		r.ProbeBefore.P50, r.ProbeBefore.P99, r.ProbeBefore.Max, r.ProbeDuring.P50, r.ProbeDuring.P99, r.ProbeDuring.Max, r.ProbeDuring.Throttled)
	return r, nil
}

// probe GETs a ConfigMap as a ServiceAccount of another workload, over a
// connection of its own, and keeps each answer's time and status.
type probe struct {
	client *http.Client
	url    string
	token  string

	mu    sync.Mutex
	lat   []time.Duration
	codes []int
}

func newProbe(ctx context.Context, c *cluster.Cluster) (*probe, error) {
	const ns, name = "default", "fleet-probe"
	if _, err := c.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := c.Admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := c.Admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"configmaps"}}}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := c.Admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	pod, err := c.AgentPod(ctx, ns, name, "hollow-00000")
	if err != nil {
		return nil, err
	}
	token, err := c.PodToken(ctx, pod)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &probe{
		client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}},
		url:    fmt.Sprintf("%s/api/v1/namespaces/%s/configmaps/%s", c.URL, ns, name),
		token:  token,
	}, nil
}

func (p *probe) run(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
		req.Header.Set("Authorization", "Bearer "+p.token)
		t0 := time.Now()
		resp, err := p.client.Do(req)
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		} else if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.lat, p.codes = append(p.lat, time.Since(t0)), append(p.codes, code)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// take returns what was seen since the last take and starts again.
func (p *probe) take() probeStats {
	p.mu.Lock()
	lat, codes := p.lat, p.codes
	p.lat, p.codes = nil, nil
	p.mu.Unlock()
	s := probeStats{Requests: len(lat)}
	for _, c := range codes {
		switch c {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			s.Throttled++
		default:
			s.Failed++
		}
	}
	ms := durs(lat)
	if len(ms) > 0 {
		s.P50, s.P99, s.Max = pctF(ms, 50), pctF(ms, 99), slices.Max(ms)
	}
	return s
}
