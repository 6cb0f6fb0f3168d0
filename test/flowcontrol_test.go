package test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// flowControlObjects is what the chart renders of the API group
// flowcontrol.apiserver.k8s.io.
func flowControlObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GroupVersionKind().Group == "flowcontrol.apiserver.k8s.io" {
			out = append(out, o)
		}
	}
	return out
}

// TestChartFlowControl: off by default, whatever else is set, nothing of
// flowcontrol is rendered. On, a Limited priority level that queues, and a
// FlowSchema whose subjects are exactly the agents' ServiceAccounts of the
// release namespace (the default agents' and each pool's, listed, so none
// other matches), covering every request of theirs, placed after the
// system schemas and before service-accounts; nothing when no agent runs
// (a FlowSchema needs a subject). Values the API server would take but
// that defeat the purpose are refused, naming the fix.
func TestChartFlowControl(t *testing.T) {
	const on = "flowControl.enabled=true"
	for _, tc := range []struct {
		name, set string
		subjects  []string // nil: nothing of flowcontrol rendered
	}{
		{"defaults", "", nil},
		{"defaults with pools", poolsSet, nil},
		{"everything else on", "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,credentialProvider.enabled=true", nil},
		{"on", on, []string{"nodecreds"}},
		{"on, with pools", on + "," + poolsSet, []string{"nodecreds", "nodecreds-tenant-a", "nodecreds-tenant-b"}},
		{"on, pools only", on + ",secrets=null," + poolsSet, []string{"nodecreds-tenant-a", "nodecreds-tenant-b"}},
		{"on, a label selector", on + ",selector=team=a,secrets=null", []string{"nodecreds"}},
		{"on, no agent at all", on + ",secrets=null", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := renderChart(tc.set, "ns1")
			if err != nil {
				t.Fatal(err)
			}
			objs := flowControlObjects(objects(t, out))
			if tc.subjects == nil {
				if len(objs) != 0 {
					t.Fatalf("%d flowcontrol objects rendered, want none", len(objs))
				}
				return
			}
			if len(objs) != 2 {
				t.Fatalf("%d flowcontrol objects rendered, want a PriorityLevelConfiguration and a FlowSchema", len(objs))
			}
			pl, _ := find[flowcontrolv1.PriorityLevelConfiguration](t, objs, "PriorityLevelConfiguration")
			fs, _ := find[flowcontrolv1.FlowSchema](t, objs, "FlowSchema")
			if pl == nil || fs == nil {
				t.Fatalf("rendered %v, want a PriorityLevelConfiguration and a FlowSchema", objs)
			}
			l := pl.Spec.Limited
			if pl.Name != "nodecreds" || pl.Spec.Type != flowcontrolv1.PriorityLevelEnablementLimited || l == nil ||
				l.LimitResponse.Type != flowcontrolv1.LimitResponseTypeQueue || l.LimitResponse.Queuing == nil {
				t.Fatalf("priority level %s: %+v, want a Limited level that queues", pl.Name, pl.Spec)
			}
			q := l.LimitResponse.Queuing
			if *l.NominalConcurrencyShares != 10 || *l.LendablePercent != 50 || q.Queues != 64 || q.HandSize != 6 || q.QueueLengthLimit != 50 {
				t.Errorf("priority level: %+v %+v, want values.yaml's defaults (10, 50, 64/6/50)", *l, *q)
			}
			if fs.Name != "nodecreds" || fs.Spec.PriorityLevelConfiguration.Name != pl.Name {
				t.Errorf("FlowSchema %s refers to level %q, want nodecreds", fs.Name, fs.Spec.PriorityLevelConfiguration.Name)
			}
			// After kube-system-service-accounts (900), the last system
			// schema, and before service-accounts (9000).
			if p := fs.Spec.MatchingPrecedence; p != 1000 {
				t.Errorf("matchingPrecedence %d, want 1000", p)
			}
			if fs.Spec.DistinguisherMethod == nil || fs.Spec.DistinguisherMethod.Type != flowcontrolv1.FlowDistinguisherMethodByUserType {
				t.Errorf("distinguisher %+v, want ByUser (a flow per ServiceAccount: per pool)", fs.Spec.DistinguisherMethod)
			}
			if len(fs.Spec.Rules) != 1 {
				t.Fatalf("%d rules, want 1", len(fs.Spec.Rules))
			}
			r := fs.Spec.Rules[0]
			var subjects []string
			for _, s := range r.Subjects {
				if s.Kind != flowcontrolv1.SubjectKindServiceAccount || s.ServiceAccount == nil || s.ServiceAccount.Namespace != "ns1" || s.User != nil || s.Group != nil {
					t.Errorf("subject %+v is not a ServiceAccount of ns1", s)
					continue
				}
				subjects = append(subjects, s.ServiceAccount.Name)
			}
			if !slices.Equal(subjects, tc.subjects) {
				t.Errorf("subjects %v, want exactly the agents' ServiceAccounts %v", subjects, tc.subjects)
			}
			all := []string{"*"}
			if len(r.ResourceRules) != 1 || !slices.Equal(r.ResourceRules[0].Verbs, all) || !slices.Equal(r.ResourceRules[0].APIGroups, all) ||
				!slices.Equal(r.ResourceRules[0].Resources, all) || !slices.Equal(r.ResourceRules[0].Namespaces, all) || !r.ResourceRules[0].ClusterScope {
				t.Errorf("resource rules %+v, want every verb, group and resource, namespaced and cluster-scoped", r.ResourceRules)
			}
			if len(r.NonResourceRules) != 1 || !slices.Equal(r.NonResourceRules[0].Verbs, all) || !slices.Equal(r.NonResourceRules[0].NonResourceURLs, all) {
				t.Errorf("non-resource rules %+v, want every one", r.NonResourceRules)
			}
		})
	}

	for _, tc := range []struct {
		name, set, ns string
		want          []string
	}{
		{"precedence of a system schema", on + ",flowControl.matchingPrecedence=900", "ns1", []string{"flowControl.matchingPrecedence: 900", "above 900 and below 9000", "kube-system-service-accounts"}},
		{"precedence of service-accounts", on + ",flowControl.matchingPrecedence=9000", "ns1", []string{"flowControl.matchingPrecedence: 9000", "service-accounts (9000)"}},
		{"precedence not whole", on + ",flowControl.matchingPrecedence=1000.5", "ns1", []string{"flowControl.matchingPrecedence: 1000.5"}},
		{"no shares", on + ",flowControl.nominalConcurrencyShares=0", "ns1", []string{"flowControl.nominalConcurrencyShares: 0 is not a whole number of at least 1"}},
		{"a share as a word", on + ",flowControl.nominalConcurrencyShares=ten", "ns1", []string{"flowControl.nominalConcurrencyShares: ten"}},
		{"a share a stolen token could starve the kubelets with", on + ",flowControl.nominalConcurrencyShares=41", "ns1", []string{"flowControl.nominalConcurrencyShares: 41 is more than 40", "root on any node"}},
		{"lending over 100 %", on + ",flowControl.lendablePercent=101", "ns1", []string{"flowControl.lendablePercent: 101 is not a whole number from 0 to 100"}},
		{"no queues", on + ",flowControl.queuing.queues=0", "ns1", []string{"flowControl.queuing.queues: 0"}},
		{"a hand larger than the deck", on + ",flowControl.queuing.handSize=65", "ns1", []string{"flowControl.queuing.handSize: 65 is not a whole number from 1 to 64"}},
		{"no queue length", on + ",flowControl.queuing.queueLengthLimit=0", "ns1", []string{"flowControl.queuing.queueLengthLimit: 0"}},
		{"in kube-system", on, "kube-system", []string{"kube-system-service-accounts", "matches every ServiceAccount of kube-system", "namespace of its own"}},
	} {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			_, err := renderChart(tc.set, tc.ns)
			if err == nil {
				t.Fatal("rendered; want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the refusal %q does not say %q", err, w)
				}
			}
		})
	}
	// Off, its values are not looked at (as every opt-in's).
	if _, err := renderChart("flowControl.matchingPrecedence=9000,flowControl.queuing.handSize=0", "kube-system"); err != nil {
		t.Errorf("flowControl's values refused while it is off: %v", err)
	}
}

// TestChartFlowControlOnRealAPIServer: with priority and fairness on, the
// API server accepts the chart's FlowSchema and priority level (the
// schema's level is found: not Dangling), and classifies the requests of
// an agent, the default one's and a pool's, each with a Pod-bound token as
// the kubelet gives it, into them, as the response headers
// X-Kubernetes-PF-FlowSchema-UID and X-Kubernetes-PF-PriorityLevel-UID say;
// another ServiceAccount, of the release namespace but named like a pool
// that is not in the values, or named nodecreds in another namespace,
// stays in service-accounts / workload-low. A knob the chart passes but
// the server's validation does not (a shuffle-sharding hand too large for
// its deck) is refused by the server.
func TestChartFlowControlOnRealAPIServer(t *testing.T) {
	// cluster.Start drops its own --enable-priority-and-fairness=false for
	// this one (checked below: the admin's requests are classified).
	c := startClusterWith(t, "--enable-priority-and-fairness=true")
	ctx := t.Context()
	const ns = "nodecreds"
	if h, err := pfHeaders(ctx, c.RESTConfig, "/api/v1/namespaces"); err != nil || h.Get("X-Kubernetes-PF-FlowSchema-UID") == "" {
		t.Fatalf("priority and fairness is not on in the test API server (%v): headers %v", err, h)
	}
	for _, n := range []string{ns, "elsewhere"} {
		if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	const set = "flowControl.enabled=true" +
		`,pools[0].name=tenant-a,pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-a,pools[0].secrets={registry-credentials,tenant-a-registry}`

	// The server validates what the chart cannot: a hand of 11 of 64
	// queues needs 66 bits of entropy, over its 60.
	bad := flowControlObjects(objects(t, renderWithCluster(t, c, set+",flowControl.queuing.handSize=11", ns)))
	if err := cluster.Apply(ctx, c.RESTConfig, bad, true); err == nil || !strings.Contains(err.Error(), "required entropy bits") {
		t.Errorf("a hand of 11 of 64 queues: want the API server's refusal, got %v", err)
	}

	objs := objects(t, renderWithCluster(t, c, set, ns))
	if len(flowControlObjects(objs)) != 2 {
		t.Fatalf("the chart with %s renders %d flowcontrol objects, want 2", set, len(flowControlObjects(objs)))
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, true); err != nil {
		t.Fatalf("server-side dry run of the chart with %s: %v", set, err)
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		t.Fatalf("applying the chart with %s: %v", set, err)
	}
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry-credentials"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fcc := c.Admin.FlowcontrolV1()
	ours, err := fcc.FlowSchemas().Get(ctx, "nodecreds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	level, err := fcc.PriorityLevelConfigurations().Get(ctx, "nodecreds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	saSchema, err := fcc.FlowSchemas().Get(ctx, "service-accounts", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	low, err := fcc.PriorityLevelConfigurations().Get(ctx, "workload-low", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The API server's config controller marks a schema whose level is
	// missing Dangling.
	if err := testsupport.WaitFor(ctx, 30*time.Second, 100*time.Millisecond, "the FlowSchema's Dangling condition", func() bool {
		fs, err := fcc.FlowSchemas().Get(ctx, "nodecreds", metav1.GetOptions{})
		return err == nil && slices.ContainsFunc(fs.Status.Conditions, func(c flowcontrolv1.FlowSchemaCondition) bool {
			return c.Type == flowcontrolv1.FlowSchemaConditionDangling && c.Status == flowcontrolv1.ConditionFalse
		})
	}); err != nil {
		fs, _ := fcc.FlowSchemas().Get(ctx, "nodecreds", metav1.GetOptions{})
		t.Fatalf("%v: %+v", err, fs.Status)
	}

	// The agents' own request: their Secret.
	const path = "/api/v1/namespaces/" + ns + "/secrets/registry-credentials"
	agent := func(namespace, name string) *rest.Config {
		t.Helper()
		kubeconfig, _, _, err := c.AgentKubeconfig(ctx, namespace, name, "node-"+name)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, name := range []string{"nodecreds", "nodecreds-tenant-a"} {
		cfg := agent(ns, name)
		// The API server takes the new schema up asynchronously.
		var h http.Header
		var lastErr error
		if err := testsupport.WaitFor(ctx, 30*time.Second, 100*time.Millisecond, name+"'s request classified by the chart's FlowSchema", func() bool {
			h, lastErr = pfHeaders(ctx, cfg, path)
			return lastErr == nil && h.Get("X-Kubernetes-PF-FlowSchema-UID") == string(ours.UID)
		}); err != nil {
			t.Fatalf("%s: %v: last headers %v, error %v (nodecreds is %s, service-accounts %s)", name, err, h, lastErr, ours.UID, saSchema.UID)
		}
		if got := h.Get("X-Kubernetes-PF-PriorityLevel-UID"); got != string(level.UID) {
			t.Errorf("%s: priority level %s, want the chart's nodecreds (%s)", name, got, level.UID)
		}
	}

	// Others: a ServiceAccount of the namespace named like a pool the
	// values do not have, and one named nodecreds elsewhere.
	for _, sa := range []struct{ namespace, name string }{{ns, "nodecreds-tenant-z"}, {"elsewhere", "nodecreds"}} {
		if _, err := c.Admin.CoreV1().ServiceAccounts(sa.namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		h, err := pfHeaders(ctx, agent(sa.namespace, sa.name), path)
		if err != nil {
			t.Fatal(err)
		}
		if fs, pl := h.Get("X-Kubernetes-PF-FlowSchema-UID"), h.Get("X-Kubernetes-PF-PriorityLevel-UID"); fs != string(saSchema.UID) || pl != string(low.UID) {
			t.Errorf("%s/%s: classified by FlowSchema %s and level %s, want service-accounts (%s) and workload-low (%s), not nodecreds (%s, %s)",
				sa.namespace, sa.name, fs, pl, saSchema.UID, low.UID, ours.UID, level.UID)
		}
	}
}

// pfHeaders makes a GET of path with cfg and returns the response's
// headers, whatever its status (priority and fairness classifies a request
// before it is authorized).
func pfHeaders(ctx context.Context, cfg *rest.Config, path string) (http.Header, error) {
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	resp.Body.Close()
	return resp.Header, nil
}
