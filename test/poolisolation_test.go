package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// The pools of TestNodePoolIsolation, as the README's helm --set gives them.
const isolationPools = `pools[0].name=tenant-a,pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-a,pools[0].secrets={registry-credentials,tenant-a-registry}` +
	`,pools[1].name=tenant-b,pools[1].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-b,pools[1].secrets={tenant-b-registry}`

const poolLabel = "node-restriction.kubernetes.io/pool"

// The registries and passwords of the three Secrets.
var isolationCreds = map[string]struct{ secret, registry, userpass string }{
	"default":  {"registry-credentials", "shared.example.test", "shared:iso-canary-shared"},
	"tenant-a": {"tenant-a-registry", "registry.tenant-a.example", "tenant-a:iso-canary-a"},
	"tenant-b": {"tenant-b-registry", "registry.tenant-b.example", "tenant-b:iso-canary-b"},
}

// TestNodePoolIsolation proves the chart's pools on a real API server that
// runs as a production one does (the Node authorizer and the
// NodeRestriction admission plugin, the DaemonSet controller and the
// scheduler), attacking as whoever is root on a pool-B node would: with
// the agent's Pod-bound token and with the kubelet's own credentials.
//
//   - each pool's agent reads its own Secrets and gets 403 on the other
//     pool's (so does the default agent);
//   - the admission policy keeps an agent's token to nodecreds' own
//     annotations, condition and startup taint on its own Node: it cannot
//     relabel its Node into pool A, touch another Node, or change labels,
//     other annotations, taints, other spec or status fields, by any patch
//     type; a token not bound to a Pod changes no Node;
//   - the kubelet cannot set the pool label, read pool A's Secret, or get a
//     token of pool A's ServiceAccount;
//   - the real agent binary with its Pod's token still annotates its Node,
//     sets its condition and removes its startup taint (and, asked for pool
//     A's Secret, gets nothing of it);
//   - the DaemonSet controller runs exactly one agent on every node, and on
//     a node relabelled from the default pool into pool A ends with exactly
//     one, pool A's;
//   - two agents on one node's files: the second (pool A's new Pod, while
//     the default one still runs) waits, and says so in its log, on /readyz
//     and in an Event on the Node; it syncs once the first stops.
func TestNodePoolIsolation(t *testing.T) {
	ca := newTestCA(t)
	c := startClusterWith(t, "--enable-admission-plugins=NodeRestriction", "--authorization-mode=Node,RBAC", "--client-ca-file="+ca.file)
	ctx := t.Context()
	admin := c.Admin
	if err := c.StartControllers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labelNS(t, c, ns, "privileged")
	if err := cluster.Apply(ctx, c.RESTConfig, objects(t, renderWithCluster(t, c, isolationPools, ns)), false); err != nil {
		t.Fatalf("applying the chart with two pools: %v", err)
	}
	for _, cr := range isolationCreds {
		sec := registrySecret(dockerconfigjson(t, map[string]string{cr.registry: cr.userpass}))
		sec.Name = cr.secret
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// node-a and node-b are in the pools (an admin's labels), node-d and
	// node-r in none; node-b registered with the startup taint and a
	// tenant taint; node-b carries an annotation of someone else.
	startup := corev1.Taint{Key: "nodecreds.io/not-ready", Effect: corev1.TaintEffectNoSchedule}
	tenantB := corev1.Taint{Key: "tenant", Value: "b", Effect: corev1.TaintEffectNoSchedule}
	pools := map[string]string{"node-a": "tenant-a", "node-b": "tenant-b", "node-d": "", "node-r": ""}
	for name, pool := range pools {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		if pool != "" {
			node.Labels[poolLabel] = pool
		}
		if name == "node-b" {
			node.Spec.Taints = []corev1.Taint{startup, tenantB}
			node.Annotations = map[string]string{"example.com/owner": "team-b"}
		}
		schedulable(t, admin, node)
	}
	dsOf := func(pool string) string {
		if pool == "" {
			return "nodecreds"
		}
		return "nodecreds-" + pool
	}
	pods := map[string]*corev1.Pod{}
	testsupport.Eventually(t, 60*time.Second, "the DaemonSets run exactly one agent per node, each its pool's", func() bool {
		for name, pool := range pools {
			running := agentPods(t, admin, name)
			if len(running) != 1 || owner(running[0]) != dsOf(pool) {
				return false
			}
			pods[name] = running[0]
		}
		return true
	})
	type agentToken struct {
		kubeconfig string
		client     *kubernetes.Clientset
	}
	tokens := map[string]agentToken{}
	for name, pod := range pods {
		kc, client, err := c.PodTokenKubeconfig(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = agentToken{kc, client}
	}

	t.Run("secrets", func(t *testing.T) {
		for _, tc := range []struct{ node, pool string }{{"node-a", "tenant-a"}, {"node-b", "tenant-b"}, {"node-d", "default"}} {
			for pool, cr := range isolationCreds {
				allowed := pool == tc.pool || tc.pool == "tenant-a" && pool == "default"
				secrets := tokens[tc.node].client.CoreV1().Secrets(ns)
				_, getErr := secrets.Get(ctx, cr.secret, metav1.GetOptions{})
				_, listErr := secrets.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + cr.secret})
				for what, err := range map[string]error{"get": getErr, "list": listErr} {
					if allowed && err != nil || !allowed && !apierrors.IsForbidden(err) {
						t.Errorf("the agent of %s on %s: %s Secret %s: %v (allowed: %v)", tc.pool, tc.node, what, cr.secret, err, allowed)
					}
				}
			}
		}
	})

	t.Run("policy", func(t *testing.T) {
		b := tokens["node-b"].client.CoreV1().Nodes()
		// The API server loads a new policy in the background.
		testsupport.Eventually(t, 20*time.Second, "the nodecreds-agents policy is in force", func() bool {
			_, err := b.Patch(ctx, "node-b", types.MergePatchType, []byte(`{"metadata":{"labels":{"example.com/probe":"x"}}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
			return apierrors.IsForbidden(err)
		})
		merge := func(node, patch string, sub ...string) error {
			_, err := b.Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, sub...)
			return err
		}
		taints := func(ts ...corev1.Taint) string {
			raw, _ := json.Marshal(map[string]any{"spec": map[string]any{"taints": ts}})
			return string(raw)
		}
		other := corev1.Taint{Key: "example.com/evil", Effect: corev1.TaintEffectNoSchedule}
		startupNoExecute := startup
		startupNoExecute.Effect = corev1.TaintEffectNoExecute
		forbidden := []struct {
			what string
			err  error
		}{
			{"relabel its Node into pool A", merge("node-b", `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`)},
			{"relabel its Node into pool A (JSON patch)", jsonPatch(ctx, b, "node-b", `[{"op":"replace","path":"/metadata/labels/node-restriction.kubernetes.io~1pool","value":"tenant-a"}]`)},
			{"relabel its Node into pool A (server-side apply)", apply(ctx, b, "node-b", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-b","labels":{"`+poolLabel+`":"tenant-a"}}}`)},
			{"relabel its Node into pool A (strategic merge, status subresource)", strategic(ctx, b, "node-b", `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`, "status")},
			{"add a label", merge("node-b", `{"metadata":{"labels":{"example.com/x":"y"}}}`)},
			{"remove a label", merge("node-b", `{"metadata":{"labels":{"kubernetes.io/os":null}}}`)},
			{"add another annotation", merge("node-b", `{"metadata":{"annotations":{"example.com/x":"y"}}}`)},
			{"change another annotation", merge("node-b", `{"metadata":{"annotations":{"example.com/owner":"me"}}}`)},
			{"remove another annotation", merge("node-b", `{"metadata":{"annotations":{"example.com/owner":null}}}`)},
			{"add a finalizer", merge("node-b", `{"metadata":{"finalizers":["example.com/hold"]}}`)},
			{"add a taint", merge("node-b", taints(startup, tenantB, other))},
			{"remove another taint", merge("node-b", taints(startup))},
			{"remove another taint with the startup one", merge("node-b", taints())},
			{"change the startup taint", merge("node-b", taints(startupNoExecute, tenantB))},
			{"cordon its Node", merge("node-b", `{"spec":{"unschedulable":true}}`)},
			{"set a provider ID", merge("node-b", `{"spec":{"providerID":"evil://x"}}`)},
			{"set another condition", strategic(ctx, b, "node-b", `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Evil"}]}}`, "status")},
			{"set its addresses", merge("node-b", `{"status":{"addresses":[{"type":"InternalIP","address":"10.6.6.6"}]}}`, "status")},
			{"set its capacity", merge("node-b", `{"status":{"capacity":{"pods":"1000"}}}`, "status")},
			{"annotate another Node", merge("node-a", `{"metadata":{"annotations":{"nodecreds.io/revision":"forged"}}}`)},
			{"remove another Node's startup taint", merge("node-d", taints())},
			{"set another Node's condition", strategic(ctx, b, "node-a", `{"status":{"conditions":[{"type":"RegistryCredentialsSynced","status":"False","reason":"Forged"}]}}`, "status")},
			{"relabel another Node out of its pool", merge("node-a", `{"metadata":{"labels":{"`+poolLabel+`":null}}}`)},
		}
		for _, f := range forbidden {
			if !apierrors.IsForbidden(f.err) {
				t.Errorf("pool B's agent token can %s (err %v), want Forbidden", f.what, f.err)
			}
		}
		// The label attempt is refused by the policy (RBAC allows patch).
		if err := merge("node-b", `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`); err == nil || !strings.Contains(err.Error(), "nodecreds-agents") {
			t.Errorf("relabelling is not refused by the nodecreds-agents policy: %v", err)
		}
		// What the agent does on its own Node is allowed.
		if err := merge("node-b", `{"metadata":{"annotations":{"nodecreds.io/revision":"r0","nodecreds.io/synced-at":"2026-11-30T12:00:00Z","nodecreds.io/sources":"x"}}}`); err != nil {
			t.Errorf("the agent cannot annotate its own Node: %v", err)
		}
		if err := strategic(ctx, b, "node-b", `{"status":{"conditions":[{"type":"RegistryCredentialsSynced","status":"False","reason":"Starting"}]}}`, "status"); err != nil {
			t.Errorf("the agent cannot set its condition on its own Node: %v", err)
		}
		// A token of the same ServiceAccount that is not bound to a Pod
		// (so to no node) changes no Node, not even its own annotations.
		unbound := tokenClient(t, c, ns, "nodecreds-tenant-b")
		if _, err := unbound.CoreV1().Nodes().Patch(ctx, "node-b", types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r1"}}}`), metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("a token not bound to a Pod annotates a Node: %v", err)
		}
		n := getNode(t, admin, "node-b")
		if n.Labels[poolLabel] != "tenant-b" || n.Labels["example.com/x"] != "" || n.Annotations["example.com/owner"] != "team-b" ||
			!hasTaint(n, startup.Key) || !hasTaint(n, tenantB.Key) || hasTaint(n, other.Key) || n.Spec.Unschedulable {
			t.Errorf("node-b changed: labels %v annotations %v taints %v", n.Labels, n.Annotations, n.Spec.Taints)
		}
	})

	t.Run("kubelet", func(t *testing.T) {
		kubelet := ca.client(t, c, "system:node:node-b", "system:nodes")
		nodes := kubelet.CoreV1().Nodes()
		_, labelErr := nodes.Patch(ctx, "node-b", types.MergePatchType, []byte(`{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`), metav1.PatchOptions{})
		_, taintErr := nodes.Patch(ctx, "node-b", types.MergePatchType, []byte(`{"spec":{"taints":[]}}`), metav1.PatchOptions{})
		_, secretErr := kubelet.CoreV1().Secrets(ns).Get(ctx, isolationCreds["tenant-a"].secret, metav1.GetOptions{})
		tokenFor := func(pod *corev1.Pod) error {
			_, err := kubelet.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "nodecreds-tenant-a", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
				BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}, metav1.CreateOptions{})
			return err
		}
		_, unboundErr := kubelet.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "nodecreds-tenant-a", &authv1.TokenRequest{}, metav1.CreateOptions{})
		for what, err := range map[string]error{
			"set the pool label on its Node":                   labelErr,
			"remove its Node's taints":                         taintErr,
			"read pool A's Secret":                             secretErr,
			"get a token of pool A's agent (its Pod's)":        tokenFor(pods["node-a"]),
			"get a token of pool A's agent (bound to its Pod)": tokenFor(pods["node-b"]),
			"get a token of pool A's agent (unbound)":          unboundErr,
		} {
			if err == nil {
				t.Errorf("node-b's kubelet can %s", what)
			}
		}
		// The kubelet can still do its own job (so the refusals above are
		// about what it asked, not about who it is).
		if _, err := kubelet.CoreV1().Nodes().Get(ctx, "node-b", metav1.GetOptions{}); err != nil {
			t.Errorf("node-b's kubelet cannot read its Node: %v", err)
		}
	})

	t.Run("agent", func(t *testing.T) {
		root := t.TempDir()
		sync := func(kubeconfig, node, pool string, secrets ...string) (string, int) {
			_, stderr, code := run(t, "sync", "--once", "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", node,
				"--pool", pool, "--secret", strings.Join(secrets, ","), "--host-root", root, "--metrics-addr", "0")
			return stderr, code
		}
		// Pool B's agent asked for pool A's Secret is refused it.
		thief := startAgent(t, "--kubeconfig", tokens["node-b"].kubeconfig, "--namespace", ns, "--node-name", "node-b", "--pool", "tenant-b",
			"--secret", isolationCreds["tenant-a"].secret, "--host-root", root, "--metrics-addr", "0")
		testsupport.Eventually(t, 20*time.Second, "pool B's agent is refused pool A's Secret", func() bool {
			return strings.Contains(thief.logs.String(), "forbidden")
		})
		thief.stop(t)
		if authIn(filepath.Join(root, kubeletFile), isolationCreds["tenant-a"].registry) != "" {
			t.Errorf("pool B's agent wrote pool A's credentials")
		}
		assertNoSecrets(t, "its log", thief.logs.String(), "iso-canary-a", testsupport.B64(isolationCreds["tenant-a"].userpass))
		// Its own Secret: files, annotations, condition, startup taint.
		if stderr, code := sync(tokens["node-b"].kubeconfig, "node-b", "tenant-b", isolationCreds["tenant-b"].secret); code != 0 {
			t.Fatalf("the agent of pool B with its Pod's token: exit %d\n%s", code, stderr)
		}
		cr := isolationCreds["tenant-b"]
		if authIn(filepath.Join(root, kubeletFile), cr.registry) != testsupport.B64(cr.userpass) {
			t.Errorf("pool B's credentials are not in node-b's kubelet file")
		}
		n := getNode(t, admin, "node-b")
		cond := condition(n)
		if n.Annotations["nodecreds.io/revision"] == "r0" || n.Annotations["nodecreds.io/synced-at"] == "" || cond == nil || cond.Status != corev1.ConditionTrue ||
			hasTaint(n, startup.Key) || !hasTaint(n, tenantB.Key) || n.Annotations["example.com/owner"] != "team-b" {
			t.Errorf("node-b after its agent's sync: annotations %v, condition %+v, taints %v", n.Annotations, cond, n.Spec.Taints)
		}
	})

	t.Run("relabel", func(t *testing.T) {
		// node-r's default agent runs (its Pod's token, the default
		// Secret) before an admin moves node-r into pool A.
		root := t.TempDir()
		addrD, addrA := testsupport.FreeAddr(t), testsupport.FreeAddr(t)
		def := startAgent(t, "--kubeconfig", tokens["node-r"].kubeconfig, "--namespace", ns, "--node-name", "node-r",
			"--secret", isolationCreds["default"].secret, "--host-root", root, "--metrics-addr", addrD)
		shared := isolationCreds["default"]
		testsupport.Eventually(t, 20*time.Second, "the default agent syncs node-r", func() bool {
			return authIn(filepath.Join(root, kubeletFile), shared.registry) == testsupport.B64(shared.userpass)
		})

		relabel(t, admin, "node-r", poolLabel, "tenant-a")
		var newPod *corev1.Pod
		testsupport.Eventually(t, 30*time.Second, "exactly one agent Pod on node-r, pool A's", func() bool {
			running := agentPods(t, admin, "node-r")
			if len(running) == 1 && owner(running[0]) == "nodecreds-tenant-a" {
				newPod = running[0]
				return true
			}
			return false
		})
		stopped(t, admin, pods["node-r"])

		// Pool A's new Pod starts while the default agent still runs: it
		// waits, and says so.
		kc, _, err := c.PodTokenKubeconfig(ctx, newPod)
		if err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, "--kubeconfig", kc, "--namespace", ns, "--node-name", "node-r", "--pool", "tenant-a",
			"--secret", isolationCreds["default"].secret+","+isolationCreds["tenant-a"].secret, "--host-root", root, "--metrics-addr", addrA)
		testsupport.Eventually(t, 20*time.Second, "pool A's agent reports that it waits for the default one", func() bool {
			code, body := httpGet("http://" + addrA + "/readyz")
			return code == 503 && strings.Contains(body, "two nodecreds pools select this node") && hasEvent(t, admin, "node-r", "TwoPoolsSelectNode")
		})
		if !strings.Contains(a.logs.String(), "two nodecreds pools select this node") {
			t.Errorf("pool A's agent does not log who it waits for:\n%s", a.logs.String())
		}
		poolA := isolationCreds["tenant-a"]
		if authIn(filepath.Join(root, kubeletFile), poolA.registry) != "" {
			t.Errorf("pool A's agent wrote node-r's files while the default one held them")
		}
		if code := def.stop(t); code != 0 {
			t.Errorf("the default agent exited %d", code)
		}
		testsupport.Eventually(t, 20*time.Second, "pool A's agent syncs node-r once the default one stopped", func() bool {
			code, _ := httpGet("http://" + addrA + "/readyz")
			return code == 200 && authIn(filepath.Join(root, kubeletFile), poolA.registry) == testsupport.B64(poolA.userpass)
		})

		// Moved back out of pool A, node-r loses pool A's key: the default
		// agent that takes over prunes what pool A's put there (the state
		// is the node's, not an agent's).
		unlabel(t, admin, "node-r", poolLabel)
		stopped(t, admin, newPod)
		testsupport.Eventually(t, 30*time.Second, "exactly one agent Pod on node-r, the default one", func() bool {
			running := agentPods(t, admin, "node-r")
			if len(running) == 1 && owner(running[0]) == "nodecreds" {
				newPod = running[0]
				return true
			}
			return false
		})
		kc, _, err = c.PodTokenKubeconfig(ctx, newPod)
		if err != nil {
			t.Fatal(err)
		}
		back := startAgent(t, "--kubeconfig", kc, "--namespace", ns, "--node-name", "node-r",
			"--secret", isolationCreds["default"].secret, "--host-root", root, "--metrics-addr", "0")
		testsupport.Eventually(t, 20*time.Second, "the default agent waits for pool A's", func() bool {
			return strings.Contains(back.logs.String(), "two nodecreds pools select this node")
		})
		if code := a.stop(t); code != 0 {
			t.Errorf("pool A's agent exited %d", code)
		}
		testsupport.Eventually(t, 20*time.Second, "pool A's key leaves node-r's files", func() bool {
			kubelet := filepath.Join(root, kubeletFile)
			return authIn(kubelet, poolA.registry) == "" && authIn(kubelet, shared.registry) == testsupport.B64(shared.userpass)
		})
	})

	var logs strings.Builder
	for _, ev := range events(t, admin) {
		logs.WriteString(ev.Message + "\n")
	}
	assertNoSecrets(t, "Events", logs.String(), "iso-canary-shared", "iso-canary-a", "iso-canary-b")
}

// startClusterWith starts a control plane with extra API server flags.
func startClusterWith(t *testing.T, extra ...string) *cluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no control plane")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "nodecreds-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Start(ctx, dir, extra...)
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("control plane files kept in %s", dir)
		}
	})
	return c
}

// schedulable creates node with the status a kubelet reports (capacity,
// Ready), so the scheduler places the DaemonSets' Pods on it.
func schedulable(t *testing.T, client kubernetes.Interface, node *corev1.Node) {
	t.Helper()
	if _, err := client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
	patch, _ := json.Marshal(map[string]any{"status": corev1.NodeStatus{Capacity: res, Allocatable: res,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}}}})
	if _, err := client.CoreV1().Nodes().PatchStatus(t.Context(), node.Name, patch); err != nil {
		t.Fatal(err)
	}
}

// agentPods are the nodecreds Pods bound to node that are not being
// deleted.
func agentPods(t *testing.T, client kubernetes.Interface, node string) []*corev1.Pod {
	t.Helper()
	list, err := client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node, LabelSelector: "app.kubernetes.io/part-of=nodecreds"})
	if err != nil {
		t.Fatal(err)
	}
	var out []*corev1.Pod
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			out = append(out, &list.Items[i])
		}
	}
	return out
}

func owner(p *corev1.Pod) string {
	if ref := metav1.GetControllerOf(p); ref != nil && ref.Kind == "DaemonSet" {
		return ref.Name
	}
	return ""
}

func relabel(t *testing.T, client kubernetes.Interface, node, key, value string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n := getNode(t, client, node)
		n.Labels[key] = value
		_, err := client.CoreV1().Nodes().Update(t.Context(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// stopped waits until the DaemonSet controller deletes pod (its node left
// the DaemonSet's nodes), then removes it as the kubelet does once its
// containers stopped (there is no kubelet here): the DaemonSet controller
// puts no new Pod of the same DaemonSet on a node until then.
func stopped(t *testing.T, client kubernetes.Interface, pod *corev1.Pod) {
	t.Helper()
	testsupport.Eventually(t, 30*time.Second, "the DaemonSet controller deletes "+pod.Name, func() bool {
		p, err := client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil
	})
	zero := int64(0)
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func unlabel(t *testing.T, client kubernetes.Interface, node, key string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n := getNode(t, client, node)
		delete(n.Labels, key)
		_, err := client.CoreV1().Nodes().Update(t.Context(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func events(t *testing.T, client kubernetes.Interface) []corev1.Event {
	t.Helper()
	list, err := client.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func hasEvent(t *testing.T, client kubernetes.Interface, node, reason string) bool {
	return slices.ContainsFunc(events(t, client), func(e corev1.Event) bool {
		return e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node && e.Reason == reason
	})
}

type nodePatcher interface {
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error)
}

func jsonPatch(ctx context.Context, nodes nodePatcher, node, patch string) error {
	_, err := nodes.Patch(ctx, node, types.JSONPatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

func strategic(ctx context.Context, nodes nodePatcher, node, patch string, sub ...string) error {
	_, err := nodes.Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, sub...)
	return err
}

func apply(ctx context.Context, nodes nodePatcher, node, obj string) error {
	force := true
	_, err := nodes.Patch(ctx, node, types.ApplyPatchType, []byte(obj), metav1.PatchOptions{FieldManager: "evil", Force: &force})
	return err
}

// tokenClient is a client with a token of namespace/name bound to nothing.
func tokenClient(t *testing.T, c *cluster.Cluster, namespace, name string) *kubernetes.Clientset {
	t.Helper()
	_, client, err := c.ServiceAccountKubeconfig(t.Context(), namespace, name)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// testCA is a client CA the API server trusts (--client-ca-file), to act
// as a kubelet (system:node:NAME in system:nodes) does with its client
// certificate.
type testCA struct {
	file string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nodecreds-test-client-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(t.TempDir(), "client-ca.crt")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testCA{file: file, cert: cert, key: key}
}

// client is a client with a certificate for user in group.
func (ca *testCA) client(t *testing.T, c *cluster.Cluster, user, group string) *kubernetes.Clientset {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: user, Organization: []string{group}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(&rest.Config{Host: c.URL, TLSClientConfig: rest.TLSClientConfig{
		CAFile:   c.CAFile,
		CertData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyData:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}})
	if err != nil {
		t.Fatal(fmt.Errorf("client for %s: %w", user, err))
	}
	return client
}
