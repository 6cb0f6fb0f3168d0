package test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// helmOrder sorts objects as Helm's install order does: kinds it does not
// know, such as the ValidatingAdmissionPolicy, last.
func helmOrder(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	order := []string{"Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
	rank := func(k string) int {
		if i := slices.Index(order, k); i >= 0 {
			return i
		}
		return len(order)
	}
	out := slices.Clone(objs)
	slices.SortStableFunc(out, func(a, b *unstructured.Unstructured) int {
		if d := rank(a.GetKind()) - rank(b.GetKind()); d != 0 {
			return d
		}
		return strings.Compare(a.GetKind(), b.GetKind())
	})
	return out
}

// TestPoolsAddedByUpgradeAreCoveredAtOnce: the admission policy covers
// every agent ServiceAccount the chart can make from the moment its token
// can exist, also for pools added or renamed by `helm upgrade`. Helm
// applies an upgrade's ServiceAccounts, Node grant and DaemonSets before
// the policy (a kind it does not know comes last), and the API server
// enforces a changed policy only some time later; a policy that listed
// today's accounts left the new pool's agent free to relabel its Node into
// another pool in that window. Here each upgrade is applied without the
// policy at all (the state between Helm's steps), and the new agents'
// tokens, taken as root on the node would take them, are refused at once.
// The first install follows docs/node-pools.md ("A first install with the policy
// in force first"): the policy alone (secrets=null, no pools), the
// operator's check that it is enforced, then the agents; the time the API
// server takes to enforce it is logged.
func TestPoolsAddedByUpgradeAreCoveredAtOnce(t *testing.T) {
	c := startClusterWith(t) // Node,RBAC and NodeRestriction, as every test cluster
	ctx := t.Context()
	admin := c.Admin
	if err := c.StartControllers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labelNS(t, c, ns, "privileged")
	readme := readReadmePools(t)
	nodeA, nodeB := readme.nodeOf(t, "tenant-a"), readme.nodeOf(t, "tenant-b")
	for name, pool := range map[string]string{nodeA: "tenant-a", nodeB: "tenant-b", "node-d": ""} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		if pool != "" {
			node.Labels[poolLabel] = pool
		}
		node.Spec.Taints = readme.taints[name]
		schedulable(t, admin, node)
	}

	var policy []*unstructured.Unstructured
	// render returns the chart's objects for set in Helm's order, and
	// checks that its admission policy is the one of the first install.
	render := func(set string) []*unstructured.Unstructured {
		objs := helmOrder(objects(t, renderWithCluster(t, c, set, ns)))
		var own []*unstructured.Unstructured
		for _, o := range objs {
			if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
				own = append(own, o)
			}
		}
		if policy == nil {
			policy = own
		} else if !reflect.DeepEqual(own, policy) {
			t.Errorf("the admission policy with %q differs from the first install's", set)
		}
		return objs
	}
	install := func(objs []*unstructured.Unstructured) {
		t.Helper()
		if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
			t.Fatal(err)
		}
	}
	withoutPolicy := func(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
		return slices.DeleteFunc(slices.Clone(objs), func(o *unstructured.Unstructured) bool {
			return strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy")
		})
	}

	// 1. The docs' first install: the policy alone. It is enforced some
	// time after it is created: the docs' check, before going on.
	first := render(readme.first.set)
	if kinds := kindsOf(first); !slices.Equal(kinds, []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}) {
		t.Fatalf("the first step renders %v, want the admission policy alone", kinds)
	}
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: strings.Replace(readme.first.as, ":nodecreds:", ":"+ns+":", 1), Groups: []string{readme.first.asGroup}}
	if readme.first.probeDryRun != "server" {
		t.Fatalf("the docs' check is not a server-side dry run: --dry-run=%s", readme.first.probeDryRun)
	}
	probe, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	install(first)
	testsupport.Eventually(t, 30*time.Second, "the policy is enforced (the operator's check)", func() bool {
		_, err := probe.CoreV1().Nodes().Patch(ctx, "node-d", types.MergePatchType, []byte(readme.first.probe), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "nodecreds-agents")
	})
	t.Logf("the API server enforced the new policy %v after it was created", time.Since(start).Round(10*time.Millisecond))
	// Every expression type-checks against Node (a field misnamed would
	// otherwise only show when evaluated).
	vap, err := admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "nodecreds-agents", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tc := vap.Status.TypeChecking; tc == nil || len(tc.ExpressionWarnings) != 0 {
		t.Errorf("the admission policy's type checking: %+v", tc)
	}

	// relabelRefused takes, as root on node would, the token of the agent
	// Pod of ds that the DaemonSet controller puts there, and tries to move
	// node into pool A.
	relabelRefused := func(node, ds string) {
		t.Helper()
		var pod *corev1.Pod
		testsupport.Eventually(t, 60*time.Second, "an agent Pod of "+ds+" on "+node, func() bool {
			for _, p := range agentPods(t, admin, node) {
				if owner(p) == ds {
					pod = p
					return true
				}
			}
			return false
		})
		_, tok, err := c.PodTokenKubeconfig(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		nodes := tok.CoreV1().Nodes()
		for what, err := range map[string]error{
			"merge patch": func() error {
				_, err := nodes.Patch(ctx, node, types.MergePatchType, []byte(`{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`), metav1.PatchOptions{FieldManager: "nodecreds"})
				return err
			}(),
			"JSON patch":        jsonPatch(ctx, nodes, node, `[{"op":"add","path":"/metadata/labels/node-restriction.kubernetes.io~1pool","value":"tenant-a"}]`),
			"server-side apply": apply(ctx, nodes, node, `{"apiVersion":"v1","kind":"Node","metadata":{"name":"`+node+`","labels":{"`+poolLabel+`":"tenant-a"}}}`),
		} {
			if err == nil || !strings.Contains(err.Error(), "nodecreds-agents") {
				t.Errorf("%s's new agent token (%s) relabels %s into pool A by %s: %v", ds, pod.Name, node, what, err)
			}
		}
	}

	// 2. The default agents; 3. the docs' pools; 4. pool B renamed:
	// each applied up to the point where Helm would come to the policy.
	renamed := strings.ReplaceAll(readme.helmSet, "pools[1].name=tenant-b", "pools[1].name=tenant-bee")
	for _, step := range []struct{ set, node, ds string }{
		{readme.first.upgradeSet, nodeB, "nodecreds"},
		{readme.helmSet, nodeB, "nodecreds-tenant-b"},
		{renamed, nodeB, "nodecreds-tenant-bee"},
	} {
		objs := render(step.set)
		install(withoutPolicy(objs))
		relabelRefused(step.node, step.ds)
		install(objs)
	}
	if n := getNode(t, admin, nodeB); n.Labels[poolLabel] != "tenant-b" {
		t.Errorf("%s moved to pool %q", nodeB, n.Labels[poolLabel])
	}
}

func kindsOf(objs []*unstructured.Unstructured) []string {
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	slices.Sort(kinds)
	return kinds
}
