package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const poolLabel = "node-restriction.kubernetes.io/pool"

// readmePools is docs/node-pools.md's pools example ("Different
// credentials for different node pools", once the README's), taken apart.
type readmePools struct {
	pools   map[string]string // node → pool
	taints  map[string][]corev1.Taint
	secret  *corev1.Secret // tenant A's
	helmSet string         // every --set, joined
	values  map[string]any // the values-file form
	status  [][]string     // nodecreds status arguments
	first   firstInstall   // "A first install with the policy in force first"
}

// firstInstall is the docs' install of the admission policy alone, the
// operator's check that it is enforced, and the upgrade that adds the
// agents.
type firstInstall struct {
	set                     string // helm install --set
	as, asGroup, probe      string // kubectl patch --as, --as-group, -p
	upgradeSet, probeDryRun string
}

func readReadmePools(t *testing.T) readmePools {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "docs", "node-pools.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "\n## Different credentials for different node pools")
	if start < 0 {
		t.Fatal(`docs/node-pools.md has no section "Different credentials for different node pools"`)
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	r := readmePools{pools: map[string]string{}, taints: map[string][]corev1.Taint{}}
	cut := strings.Index(section, "\n### A first install")
	if cut < 0 {
		t.Fatal(`docs/node-pools.md has no section "A first install with the policy in force first" in its pools section`)
	}
	first := strings.TrimPrefix(section[cut+1:], "### A first install")
	section = section[:cut]
	for re, into := range map[string]*string{
		`(?m)^helm install nodecreds \S+ --namespace \S+ --set (\S+)$`: &r.first.set,
		`--as=(\S+)`:       &r.first.as,
		`--as-group=(\S+)`: &r.first.asGroup,
		`-p '([^']+)'`:     &r.first.probe,
		`--dry-run=(\S+)`:  &r.first.probeDryRun,
		`(?m)^helm upgrade nodecreds .*\n\s*--set (\S+)`: &r.first.upgradeSet,
	} {
		m := regexp.MustCompile(re).FindStringSubmatch(first)
		if m == nil {
			t.Fatalf("the docs' first install lacks %s", re)
		}
		*into = strings.ReplaceAll(m[1], `'`, "") // as the shell reads it
	}
	for _, m := range regexp.MustCompile(`(?m)^kubectl label nodes? (\S+) `+regexp.QuoteMeta(poolLabel)+`=(\S+)$`).FindAllStringSubmatch(section, -1) {
		r.pools[m[1]] = m[2]
	}
	for _, m := range regexp.MustCompile(`(?m)^kubectl taint nodes? (\S+) ([^=\s]+)=([^:\s]+):(\w+)$`).FindAllStringSubmatch(section, -1) {
		r.taints[m[1]] = append(r.taints[m[1]], corev1.Taint{Key: m[2], Value: m[3], Effect: corev1.TaintEffect(m[4])})
	}
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		switch {
		case strings.Contains(m[1], "kind: Secret"):
			r.secret = &corev1.Secret{}
			if err := yaml.UnmarshalStrict([]byte(m[1]), r.secret); err != nil {
				t.Fatalf("the docs' Secret does not parse: %v", err)
			}
		case strings.HasPrefix(m[1], "pools:"):
			if err := yaml.Unmarshal([]byte(m[1]), &r.values); err != nil {
				t.Fatalf("the docs' values do not parse: %v", err)
			}
		}
	}
	var sets []string
	for _, m := range regexp.MustCompile(`--set '([^']+)'`).FindAllStringSubmatch(section, -1) {
		sets = append(sets, m[1])
	}
	r.helmSet = strings.Join(sets, ",")
	for _, m := range regexp.MustCompile(`(?m)^nodecreds (status .*)$`).FindAllStringSubmatch(section, -1) {
		r.status = append(r.status, strings.Fields(m[1]))
	}
	if len(r.pools) != 2 || len(r.taints) == 0 || r.secret == nil || r.values == nil || r.helmSet == "" || len(r.status) == 0 {
		t.Fatalf("the docs' pools example lacks a part: %+v", r)
	}
	return r
}

// nodeOf is the docs' node of pool.
func (r readmePools) nodeOf(t *testing.T, pool string) string {
	for n, p := range r.pools {
		if p == pool {
			return n
		}
	}
	t.Fatalf("the docs label no node into pool %s", pool)
	return ""
}

type isolationCred struct{ secret, registry, userpass string }

// TestNodePoolIsolation runs the docs' pools example on a real API
// server set up as a production one is (the Node authorizer and the
// NodeRestriction admission plugin, the DaemonSet controller and the
// scheduler), and attacks as whoever is root on a tenant-B node would: with
// the agent's Pod-bound token and with the kubelet's own credentials.
//
//   - each pool's agent reads its own Secrets and the shared one, and gets
//     403 on the other pool's (the default agent on both);
//   - the admission policy keeps an agent's token to nodecreds' own
//     annotations, condition and startup taint on its own Node: it cannot
//     relabel its Node into pool A, touch another Node, or change labels,
//     other annotations, finalizers, taints, other spec or status fields,
//     by any patch type or subresource; a token not bound to a Pod changes
//     no Node;
//   - the kubelet cannot set the pool label, change its taints, read pool
//     A's Secret, get a token of pool A's ServiceAccount, run a static Pod
//     as it, or register another Node into pool A;
//   - the real agent binary on every node, as its DaemonSet runs it with
//     its Pod's token, writes its pool's credentials only, annotates its
//     Node, sets its condition and removes its startup taint; asked for
//     pool A's Secret, pool B's agent is refused; the docs' status
//     commands agree;
//   - the DaemonSet controller runs exactly one agent on every node; a node
//     relabelled from the default pool into pool A, and back, ends with
//     exactly one agent, the right one;
//   - two agents on one node's files: the second (the new pool's, while the
//     old one still runs) waits, and says so in its log, on /readyz and in
//     an Event on the Node; it syncs once the first stops, and a node
//     moved out of pool A loses pool A's key.
func TestNodePoolIsolation(t *testing.T) {
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
	// The docs' helm --set and its values file are one install.
	fromValues, err := renderChartValues(t, readme.values, ns)
	if err != nil {
		t.Fatal(err)
	}
	fromSet, err := renderChart(readme.helmSet, ns)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(fromValues, fromSet) {
		t.Errorf("the docs' values file and its helm --set render differently")
	}
	objs := objects(t, renderWithCluster(t, c, readme.helmSet, ns))
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		t.Fatalf("applying the chart with the docs' pools: %v", err)
	}
	sets := all[appsv1.DaemonSet](t, objs, "DaemonSet")

	// The docs' Secret for tenant A, tenant B's "the same way", and the
	// default one.
	var auths struct {
		Auths map[string]struct{ Username, Password string } `json:"auths"`
	}
	if err := json.Unmarshal([]byte(readme.secret.StringData[corev1.DockerConfigJsonKey]), &auths); err != nil {
		t.Fatal(err)
	}
	creds := map[string]isolationCred{
		"default":  {"registry-credentials", "shared.example.test", "shared:iso-canary-shared"},
		"tenant-b": {"tenant-b-registry", "registry.tenant-b.example", "tenant-b-puller:iso-canary-b"},
	}
	for reg, a := range auths.Auths {
		creds["tenant-a"] = isolationCred{readme.secret.Name, reg, a.Username + ":" + a.Password}
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, readme.secret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the docs' Secret: %v", err)
	}
	for _, pool := range []string{"default", "tenant-b"} {
		sec := registrySecret(dockerconfigjson(t, map[string]string{creds[pool].registry: creds[pool].userpass}))
		sec.Name = creds[pool].secret
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The docs' tenant nodes, labelled and tainted as it says; tenant
	// B's registered with the startup taint too and carrying someone
	// else's annotation; node-d and node-r in no pool.
	nodeA, nodeB := readme.nodeOf(t, "tenant-a"), readme.nodeOf(t, "tenant-b")
	startup := corev1.Taint{Key: "nodecreds.io/not-ready", Effect: corev1.TaintEffectNoSchedule}
	pools := map[string]string{nodeA: "tenant-a", nodeB: "tenant-b", "node-d": "", "node-r": ""}
	for name, pool := range pools {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		if pool != "" {
			node.Labels[poolLabel] = pool
		}
		node.Spec.Taints = readme.taints[name]
		if name == nodeB {
			node.Spec.Taints = append(node.Spec.Taints, startup)
			node.Annotations = map[string]string{"example.com/owner": "team-b"}
		}
		schedulable(t, admin, node)
	}
	if len(readme.taints[nodeB]) != 1 {
		t.Fatalf("the docs taint %s with %v, want one tenant taint", nodeB, readme.taints[nodeB])
	}
	tenantB := readme.taints[nodeB][0]
	// The kubelet admits a Pod bound by spec.nodeName, which skips the
	// scheduler, against NoExecute taints only
	// (pkg/kubelet/lifecycle/predicate.go, v1.37): a tenant taint of
	// another effect keeps no Pod off a node.
	for node, taints := range readme.taints {
		for _, tn := range taints {
			if tn.Effect != corev1.TaintEffectNoExecute {
				t.Errorf("the docs taint %s with %s=%s:%s; a tenant taint must be NoExecute", node, tn.Key, tn.Value, tn.Effect)
			}
		}
	}
	// Node B's provisioning applies its pool label and taints (server-side
	// apply), so it owns them: an agent must not hand them away
	// (managedFields), and its removal of the startup taint moves only the
	// taints' ownership.
	provisioned := `{"apiVersion":"v1","kind":"Node","metadata":{"name":"` + nodeB + `","labels":{"` + poolLabel + `":"tenant-b"}},"spec":{"taints":` + mustJSON(t, append([]corev1.Taint{tenantB}, startup)) + `}}`
	force := true
	if _, err := admin.CoreV1().Nodes().Patch(ctx, nodeB, types.ApplyPatchType, []byte(provisioned), metav1.PatchOptions{FieldManager: "provisioner", Force: &force}); err != nil {
		t.Fatal(err)
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
		for _, tc := range []struct{ node, pool string }{{nodeA, "tenant-a"}, {nodeB, "tenant-b"}, {"node-d", "default"}} {
			for pool, cr := range creds {
				allowed := pool == tc.pool || pool == "default" // the docs' pools share registry-credentials
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
		b := tokens[nodeB].client.CoreV1().Nodes()
		// The API server loads a new policy in the background.
		testsupport.Eventually(t, 20*time.Second, "the nodecreds-agents policy is in force", func() bool {
			_, err := b.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"labels":{"example.com/probe":"x"}}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
			return apierrors.IsForbidden(err)
		})
		merge := func(node, patch string, sub ...string) error {
			_, err := b.Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "nodecreds"}, sub...)
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
			{"relabel its Node into pool A", merge(nodeB, `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`)},
			{"relabel its Node into pool A (JSON patch)", jsonPatch(ctx, b, nodeB, `[{"op":"replace","path":"/metadata/labels/node-restriction.kubernetes.io~1pool","value":"tenant-a"}]`)},
			{"relabel its Node into pool A (server-side apply)", apply(ctx, b, nodeB, `{"apiVersion":"v1","kind":"Node","metadata":{"name":"`+nodeB+`","labels":{"`+poolLabel+`":"tenant-a"}}}`)},
			{"relabel its Node into pool A (strategic merge, status subresource)", strategic(ctx, b, nodeB, `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`, "status")},
			{"add a label", merge(nodeB, `{"metadata":{"labels":{"example.com/x":"y"}}}`)},
			{"remove a label", merge(nodeB, `{"metadata":{"labels":{"kubernetes.io/os":null}}}`)},
			{"add another annotation", merge(nodeB, `{"metadata":{"annotations":{"example.com/x":"y"}}}`)},
			{"change another annotation", merge(nodeB, `{"metadata":{"annotations":{"example.com/owner":"me"}}}`)},
			{"remove another annotation", merge(nodeB, `{"metadata":{"annotations":{"example.com/owner":null}}}`)},
			{"add a finalizer", merge(nodeB, `{"metadata":{"finalizers":["example.com/hold"]}}`)},
			{"add a taint", merge(nodeB, taints(startup, tenantB, other))},
			{"remove another taint", merge(nodeB, taints(startup))},
			{"remove another taint with the startup one", merge(nodeB, taints())},
			{"change the startup taint", merge(nodeB, taints(startupNoExecute, tenantB))},
			{"cordon its Node", merge(nodeB, `{"spec":{"unschedulable":true}}`)},
			{"set a provider ID", merge(nodeB, `{"spec":{"providerID":"evil://x"}}`)},
			// The agent's reports go to nodes/status, which keeps the
			// metadata sent with it: the same refusals there.
			{"add another annotation (status subresource)", strategic(ctx, b, nodeB, `{"metadata":{"annotations":{"example.com/x":"y"}}}`, "status")},
			{"remove another annotation (status subresource)", strategic(ctx, b, nodeB, `{"metadata":{"annotations":{"example.com/owner":null}}}`, "status")},
			{"add a finalizer (status subresource)", merge(nodeB, `{"metadata":{"finalizers":["example.com/hold"]}}`, "status")},
			{"set another condition", strategic(ctx, b, nodeB, `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Evil"}]}}`, "status")},
			{"set its addresses", merge(nodeB, `{"status":{"addresses":[{"type":"InternalIP","address":"10.6.6.6"}]}}`, "status")},
			{"set its capacity", merge(nodeB, `{"status":{"capacity":{"pods":"1000"}}}`, "status")},
			{"annotate another Node", merge(nodeA, `{"metadata":{"annotations":{"nodecreds.io/revision":"forged"}}}`)},
			{"remove another Node's startup taint", merge("node-d", taints())},
			{"set another Node's condition", strategic(ctx, b, nodeA, `{"status":{"conditions":[{"type":"RegistryCredentialsSynced","status":"False","reason":"Forged"}]}}`, "status")},
			{"relabel another Node out of its pool", merge(nodeA, `{"metadata":{"labels":{"`+poolLabel+`":null}}}`)},
		}
		for _, f := range forbidden {
			if !apierrors.IsForbidden(f.err) {
				t.Errorf("pool B's agent token can %s (err %v), want Forbidden", f.what, f.err)
			}
		}

		// Field ownership: a later server-side apply by a manager drops the
		// fields it owned alone and no longer sets, so an agent handing the
		// provisioner's label and taints to another manager (or taking them
		// away) would let that apply strip them.
		others := func() []metav1.ManagedFieldsEntry {
			return slices.DeleteFunc(getNode(t, admin, nodeB).ManagedFields, func(e metav1.ManagedFieldsEntry) bool { return e.Manager == "nodecreds" })
		}
		before := others()
		owners := func(edit func(e map[string]any)) string {
			raw, _ := json.Marshal(getNode(t, admin, nodeB).ManagedFields)
			var entries []map[string]any
			if err := json.Unmarshal(raw, &entries); err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				edit(e)
			}
			return mustJSON(t, map[string]any{"metadata": map[string]any{"managedFields": entries}})
		}
		fields := func(e map[string]any) map[string]any { return e["fieldsV1"].(map[string]any) }
		withTaintRemoval := func(patch string) string {
			var p map[string]any
			_ = json.Unmarshal([]byte(patch), &p)
			p["spec"] = map[string]any{"taints": []corev1.Taint{tenantB}}
			return mustJSON(t, p)
		}
		dropProvisionerLabel := owners(func(e map[string]any) {
			if e["manager"] == "provisioner" {
				delete(fields(e), "f:metadata")
			}
		})
		forceApply := true
		ownershipAttacks := []struct {
			what string
			err  error
		}{
			// The reviewer's: the label and taints claimed for a manager that
			// will apply without them.
			{"give the pool label and the taints to another manager", merge(nodeB, `{"metadata":{"managedFields":[{"manager":"provisioner","operation":"Apply","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:node-restriction.kubernetes.io/pool":{}}},"f:spec":{"f:taints":{}}}}]}}`)},
			{"reset every manager's ownership", merge(nodeB, `{"metadata":{"managedFields":[{}]}}`)},
			{"take the pool label from the provisioner", merge(nodeB, dropProvisionerLabel)},
			{"take the pool label while removing the startup taint", merge(nodeB, withTaintRemoval(dropProvisionerLabel))},
			{"reset ownership while removing the startup taint", merge(nodeB, withTaintRemoval(`{"metadata":{"managedFields":[{}]}}`))},
			{"give another manager the taints", merge(nodeB, owners(func(e map[string]any) {
				if e["manager"] != "provisioner" && e["manager"] != "nodecreds" && e["subresource"] == nil {
					fields(e)["f:spec"] = map[string]any{"f:taints": map[string]any{}}
				}
			}))},
			{"own the pool label as nodecreds", merge(nodeB, owners(func(e map[string]any) {
				if e["manager"] == "provisioner" {
					e["manager"] = "nodecreds"
					e["operation"] = "Update"
				}
			}))},
			{"own its fields by server-side apply", func() error {
				_, err := b.Patch(ctx, nodeB, types.ApplyPatchType, []byte(`{"apiVersion":"v1","kind":"Node","metadata":{"name":"`+nodeB+`","annotations":{"nodecreds.io/revision":"r9"}}}`), metav1.PatchOptions{FieldManager: "nodecreds", Force: &forceApply})
				return err
			}()},
			{"remove an entry (JSON patch)", jsonPatch(ctx, b, nodeB, `[{"op":"remove","path":"/metadata/managedFields/0"}]`)},
			{"rewrite ownership (strategic merge)", strategic(ctx, b, nodeB, dropProvisionerLabel)},
			{"annotate as another field manager", func() error {
				_, err := b.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r8"}}}`), metav1.PatchOptions{FieldManager: "provisioner"})
				return err
			}()},
			{"annotate as a new field manager", func() error {
				_, err := b.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r7"}}}`), metav1.PatchOptions{})
				return err
			}()},
		}
		for _, f := range ownershipAttacks {
			if f.err == nil || !strings.Contains(f.err.Error(), "nodecreds-agents") {
				t.Errorf("pool B's agent token can %s (err %v), want refused by the nodecreds-agents policy", f.what, f.err)
			}
		}
		// Through the status subresource the API server ignores the
		// managedFields a request sends and keeps the live object's
		// (apimachinery's fieldmanager, decodeLiveOrNew): the rewrite the
		// agent's reports could carry changes nothing, which the check
		// below sees.
		if err := merge(nodeB, dropProvisionerLabel, "status"); err != nil && !strings.Contains(err.Error(), "nodecreds-agents") {
			t.Errorf("rewriting ownership through the status subresource: %v", err)
		}
		if after := others(); !reflect.DeepEqual(before, after) {
			t.Errorf("the other managers' ownership of %s changed:\n%v\n→\n%v", nodeB, before, after)
		}

		// The API server keeps at most 10 update entries: the agent's first
		// write on node-d, which has 10, makes it merge the oldest into
		// "ancient-changes". That is allowed; a merge made up by the agent
		// (fields no update entry held, an entry dropped without its
		// fields, an applier's entry merged) is not.
		d := tokens["node-d"].client.CoreV1().Nodes()
		if _, err := admin.CoreV1().Nodes().Patch(ctx, "node-d", types.ApplyPatchType, []byte(`{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-d","labels":{"example.com/rack":"r1"}}}`), metav1.PatchOptions{FieldManager: "provisioner", Force: &force}); err != nil {
			t.Fatal(err)
		}
		updates := func() int {
			n := 0
			for _, e := range getNode(t, admin, "node-d").ManagedFields {
				if e.Operation == metav1.ManagedFieldsOperationUpdate {
					n++
				}
			}
			return n
		}
		for i := 0; updates() < 10; i++ {
			if _, err := admin.CoreV1().Nodes().Patch(ctx, "node-d", types.MergePatchType, []byte(fmt.Sprintf(`{"metadata":{"annotations":{"example.com/m%d":"x"}}}`, i)), metav1.PatchOptions{FieldManager: fmt.Sprintf("tool-%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.Patch(ctx, "node-d", types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r0"}}}`), metav1.PatchOptions{FieldManager: "nodecreds"}); err != nil {
			t.Errorf("the agent's first write on a Node with 10 update entries is refused: %v", err)
		}
		if !slices.ContainsFunc(getNode(t, admin, "node-d").ManagedFields, func(e metav1.ManagedFieldsEntry) bool { return e.Manager == "ancient-changes" }) {
			t.Errorf("the API server merged no entry into ancient-changes: this case tests nothing")
		}
		forge := func(edit func(entries []map[string]any) []map[string]any) string {
			raw, _ := json.Marshal(getNode(t, admin, "node-d").ManagedFields)
			var entries []map[string]any
			if err := json.Unmarshal(raw, &entries); err != nil {
				t.Fatal(err)
			}
			return mustJSON(t, map[string]any{"metadata": map[string]any{"managedFields": edit(entries)}})
		}
		bucket := func(entries []map[string]any) map[string]any {
			for _, e := range entries {
				if e["manager"] == "ancient-changes" {
					return fields(e)
				}
			}
			t.Fatal("no ancient-changes entry")
			return nil
		}
		// own makes path (keys of fieldsV1) a member of set.
		own := func(set map[string]any, path ...string) {
			for _, k := range path {
				if set[k] == nil {
					set[k] = map[string]any{}
				}
				set = set[k].(map[string]any)
			}
		}
		// mergeOne merges a tool's entry into ancient-changes, as the API
		// server would, and then applies extra.
		mergeOne := func(extra func(entries []map[string]any)) func([]map[string]any) []map[string]any {
			return func(entries []map[string]any) []map[string]any {
				for i, e := range entries {
					if strings.HasPrefix(e["manager"].(string), "tool-") {
						for k := range fields(e)["f:metadata"].(map[string]any)["f:annotations"].(map[string]any) {
							own(bucket(entries), "f:metadata", "f:annotations", k)
						}
						entries = slices.Delete(entries, i, i+1)
						break
					}
				}
				if extra != nil {
					extra(entries)
				}
				return entries
			}
		}
		for what, patch := range map[string]string{
			"merge an entry into ancient-changes with a field no update entry held": forge(mergeOne(func(entries []map[string]any) {
				own(bucket(entries), "f:metadata", "f:labels", "f:example.com/rack")
			})),
			"drop an update entry without its fields": forge(func(entries []map[string]any) []map[string]any {
				i := slices.IndexFunc(entries, func(e map[string]any) bool { return strings.HasPrefix(e["manager"].(string), "tool-") })
				return slices.Delete(entries, i, i+1)
			}),
			"merge the applier's entry into ancient-changes": forge(func(entries []map[string]any) []map[string]any {
				own(bucket(entries), "f:metadata", "f:labels", "f:example.com/rack")
				return slices.DeleteFunc(entries, func(e map[string]any) bool { return e["manager"] == "provisioner" })
			}),
			"take a field from ancient-changes": forge(func(entries []map[string]any) []map[string]any {
				b := bucket(entries)
				for k := range b {
					delete(b, k)
					break
				}
				return entries
			}),
		} {
			if _, err := d.Patch(ctx, "node-d", types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "nodecreds"}); err == nil || !strings.Contains(err.Error(), "nodecreds-agents") {
				t.Errorf("the default agent's token can %s: %v", what, err)
			}
		}
		// The label attempt is refused by the policy (RBAC allows patch).
		if err := merge(nodeB, `{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`); err == nil || !strings.Contains(err.Error(), "nodecreds-agents") {
			t.Errorf("relabelling is not refused by the nodecreds-agents policy: %v", err)
		}
		// What the agent does on its own Node is allowed.
		if err := merge(nodeB, `{"metadata":{"annotations":{"nodecreds.io/revision":"r0","nodecreds.io/synced-at":"2026-11-30T12:00:00Z","nodecreds.io/sources":"x"}}}`); err != nil {
			t.Errorf("the agent cannot annotate its own Node: %v", err)
		}
		if err := strategic(ctx, b, nodeB, `{"status":{"conditions":[{"type":"RegistryCredentialsSynced","status":"False","reason":"Starting"}]}}`, "status"); err != nil {
			t.Errorf("the agent cannot set its condition on its own Node: %v", err)
		}
		// A token of the same ServiceAccount that is not bound to a Pod
		// (so to no node) changes no Node, not even its own annotations.
		unbound := tokenClient(t, c, ns, "nodecreds-tenant-b")
		if _, err := unbound.CoreV1().Nodes().Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r1"}}}`), metav1.PatchOptions{FieldManager: "nodecreds"}); !apierrors.IsForbidden(err) {
			t.Errorf("a token not bound to a Pod annotates a Node: %v", err)
		}
		n := getNode(t, admin, nodeB)
		if n.Labels[poolLabel] != "tenant-b" || n.Labels["example.com/x"] != "" || n.Annotations["example.com/owner"] != "team-b" ||
			!hasTaint(n, startup.Key) || !hasTaint(n, tenantB.Key) || hasTaint(n, other.Key) || n.Spec.Unschedulable {
			t.Errorf("%s changed: labels %v annotations %v taints %v", nodeB, n.Labels, n.Annotations, n.Spec.Taints)
		}
	})

	t.Run("kubelet", func(t *testing.T) {
		kubelet := userClient(t, c, "system:node:"+nodeB, "system:nodes")
		nodes := kubelet.CoreV1().Nodes()
		_, labelErr := nodes.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"metadata":{"labels":{"`+poolLabel+`":"tenant-a"}}}`), metav1.PatchOptions{})
		_, taintErr := nodes.Patch(ctx, nodeB, types.MergePatchType, []byte(`{"spec":{"taints":[]}}`), metav1.PatchOptions{})
		_, secretErr := kubelet.CoreV1().Secrets(ns).Get(ctx, creds["tenant-a"].secret, metav1.GetOptions{})
		tokenFor := func(pod *corev1.Pod) error {
			_, err := kubelet.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "nodecreds-tenant-a", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
				BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}, metav1.CreateOptions{})
			return err
		}
		_, unboundErr := kubelet.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "nodecreds-tenant-a", &authv1.TokenRequest{}, metav1.CreateOptions{})
		// A static Pod of pool A's ServiceAccount on its node, whose token
		// the kubelet would then request.
		_, mirrorErr := kubelet.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "static-" + nodeB, Namespace: ns, Annotations: map[string]string{corev1.MirrorPodAnnotationKey: "x"}},
			Spec:       corev1.PodSpec{NodeName: nodeB, ServiceAccountName: "nodecreds-tenant-a", Containers: []corev1.Container{{Name: "x", Image: "x.invalid/x"}}},
		}, metav1.CreateOptions{})
		// A second Node, registered into pool A.
		_, twinErr := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeB + "-twin", Labels: map[string]string{poolLabel: "tenant-a"}}}, metav1.CreateOptions{})
		for what, err := range map[string]error{
			"set the pool label on its Node":                   labelErr,
			"remove its Node's taints":                         taintErr,
			"read pool A's Secret":                             secretErr,
			"get a token of pool A's agent (its Pod's)":        tokenFor(pods[nodeA]),
			"get a token of pool A's agent (bound to its Pod)": tokenFor(pods[nodeB]),
			"get a token of pool A's agent (unbound)":          unboundErr,
			"run a static Pod as pool A's agent":               mirrorErr,
			"register another Node into pool A":                twinErr,
		} {
			if err == nil {
				t.Errorf("%s's kubelet can %s", nodeB, what)
			}
		}
		// The kubelet can still do its own job (so the refusals above are
		// about what it asked, not about who it is).
		if _, err := kubelet.CoreV1().Nodes().Get(ctx, nodeB, metav1.GetOptions{}); err != nil {
			t.Errorf("%s's kubelet cannot read its Node: %v", nodeB, err)
		}
	})

	t.Run("tenants", func(t *testing.T) {
		// Tenant B may create Pods in its namespace, nothing else. A Pod
		// bound by spec.nodeName to tenant A's node skips the scheduler
		// and needs no toleration to be stored; A's NoExecute taint is what
		// keeps it off: the kubelet refuses it at admission (v1.37
		// pkg/kubelet/lifecycle/predicate.go checks NoExecute taints only)
		// and the taint eviction controller deletes it, which is what an API
		// server without a kubelet shows.
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tenant-b"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.RbacV1().Roles("tenant-b").Create(ctx, &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "pods"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"create", "get"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.RbacV1().RoleBindings("tenant-b").Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "dev"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pods"},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "tenant-b-dev"}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		dev := userClient(t, c, "tenant-b-dev", "tenants")
		pod, err := dev.CoreV1().Pods("tenant-b").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "on-" + nodeA, Namespace: "tenant-b"},
			Spec:       corev1.PodSpec{NodeName: nodeA, Containers: []corev1.Container{{Name: "app", Image: creds["tenant-a"].registry + "/private/app:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("tenant B's Pod bound to %s: %v", nodeA, err)
		}
		testsupport.Eventually(t, 30*time.Second, "tenant B's Pod bound to "+nodeA+" is evicted by its NoExecute tenant taint", func() bool {
			p, err := dev.CoreV1().Pods("tenant-b").Get(ctx, pod.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil
		})
	})

	t.Run("agent", func(t *testing.T) {
		// Pool B's agent asked for pool A's Secret is refused it.
		root := t.TempDir()
		thief := startAgent(t, "--kubeconfig", tokens[nodeB].kubeconfig, "--namespace", ns, "--node-name", nodeB, "--pool", "tenant-b",
			"--secret", creds["tenant-a"].secret, "--host-root", root, "--metrics-addr", "0")
		testsupport.Eventually(t, 20*time.Second, "pool B's agent is refused pool A's Secret", func() bool {
			return strings.Contains(thief.logs.String(), "forbidden")
		})
		thief.stop(t)
		if authIn(filepath.Join(root, kubeletFile), creds["tenant-a"].registry) != "" {
			t.Errorf("pool B's agent wrote pool A's credentials")
		}
		assertNoSecrets(t, "its log", thief.logs.String(), creds["tenant-a"].userpass, testsupport.B64(creds["tenant-a"].userpass))

		// Every node's agent as its DaemonSet runs it (its args, its pool,
		// its Pod's token): files, annotations, condition, startup taint.
		for node, pool := range pools {
			ds := sets[ns+"/"+dsOf(pool)]
			args := []string{"sync", "--once", "--kubeconfig", tokens[node].kubeconfig, "--namespace", ns, "--node-name", node,
				"--pool", pool, "--host-root", filepath.Join(root, node), "--metrics-addr", "0"}
			for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
				if strings.HasPrefix(a, "--secret=") {
					args = append(args, a)
				}
			}
			if err := os.MkdirAll(filepath.Join(root, node), 0o700); err != nil {
				t.Fatal(err)
			}
			if _, stderr, code := run(t, args...); code != 0 {
				t.Fatalf("the agent of %s on %s with its Pod's token: exit %d\n%s", dsOf(pool), node, code, stderr)
			}
		}
		for node, want := range map[string][]string{nodeA: {"default", "tenant-a"}, nodeB: {"default", "tenant-b"}, "node-d": {"default"}} {
			got := map[string]bool{}
			for pool, cr := range creds {
				if auth := authIn(filepath.Join(root, node, kubeletFile), cr.registry); auth != "" {
					got[pool] = auth == testsupport.B64(cr.userpass)
				}
			}
			if len(got) != len(want) || !got[want[0]] || !got[want[len(want)-1]] {
				t.Errorf("%s's kubelet file has the credentials of %v, want those of %v", node, got, want)
			}
		}
		n := getNode(t, admin, nodeB)
		cond := condition(n)
		if n.Annotations["nodecreds.io/revision"] == "r0" || n.Annotations["nodecreds.io/synced-at"] == "" || cond == nil || cond.Status != corev1.ConditionTrue ||
			hasTaint(n, startup.Key) || !hasTaint(n, tenantB.Key) || n.Annotations["example.com/owner"] != "team-b" {
			t.Errorf("%s after its agent's sync: annotations %v, condition %+v, taints %v", nodeB, n.Annotations, cond, n.Spec.Taints)
		}
		// Removing the startup taint moved the taints' ownership (an atomic
		// list) to the agent, as the API server does; the provisioner still
		// owns the pool label, and nothing else changed hands.
		for _, e := range n.ManagedFields {
			f := e.FieldsV1.GetRawString()
			switch {
			case e.Manager == "provisioner" && f != `{"f:metadata":{"f:labels":{"f:`+poolLabel+`":{}}}}`:
				t.Errorf("after the agent's sync the provisioner owns %s, want the pool label only", f)
			case e.Manager == "nodecreds" && e.Subresource == "" && !strings.Contains(f, `"f:spec":{"f:taints":{}}`):
				t.Errorf("after removing the startup taint the agent owns %s, without the taints", f)
			case e.Manager != "nodecreds" && e.Manager != "provisioner" && strings.Contains(f, "f:taints"):
				t.Errorf("after the agent removed the startup taint %s still owns the taints: %s", e.Manager, f)
			}
		}
		// The docs' status commands: each pool's nodes, and the
		// default DaemonSet's, have applied their Secrets.
		for _, args := range readme.status {
			if out, stderr, code := run(t, append(args, "--kubeconfig", c.Kubeconfig, "--namespace", ns, "--timeout", "20s")...); code != 0 {
				t.Errorf("the docs' nodecreds %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, stderr)
			}
		}
	})

	t.Run("relabel", func(t *testing.T) {
		// node-r's default agent runs (its Pod's token, the default
		// Secret) before an admin moves node-r into pool A.
		root := t.TempDir()
		addrD, addrA := testsupport.FreeAddr(t), testsupport.FreeAddr(t)
		def := startAgent(t, "--kubeconfig", tokens["node-r"].kubeconfig, "--namespace", ns, "--node-name", "node-r",
			"--secret", creds["default"].secret, "--host-root", root, "--metrics-addr", addrD)
		shared := creds["default"]
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
			"--secret", creds["default"].secret+","+creds["tenant-a"].secret, "--host-root", root, "--metrics-addr", addrA)
		testsupport.Eventually(t, 20*time.Second, "pool A's agent reports that it waits for the default one", func() bool {
			code, body := httpGet("http://" + addrA + "/readyz")
			return code == 503 && strings.Contains(body, "two nodecreds pools select this node") && hasEvent(t, admin, "node-r", "TwoPoolsSelectNode")
		})
		if !strings.Contains(a.logs.String(), "two nodecreds pools select this node") {
			t.Errorf("pool A's agent does not log who it waits for:\n%s", a.logs.String())
		}
		poolA := creds["tenant-a"]
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

		// A rollout's new Pod of pool A meanwhile: it waits for the running
		// one, quietly (no Event within the grace), and stops cleanly if
		// stopped while waiting.
		dup := startAgent(t, "--kubeconfig", kc, "--namespace", ns, "--node-name", "node-r", "--pool", "tenant-a",
			"--secret", creds["default"].secret+","+creds["tenant-a"].secret, "--host-root", root, "--metrics-addr", "0",
			"--install-credential-provider", "/opt/nodecreds/bin")
		testsupport.Eventually(t, 20*time.Second, "a second agent of pool A waits for the first", func() bool {
			return strings.Contains(dup.logs.String(), "of the same pool, which holds this node's files")
		})
		if _, err := os.Lstat(filepath.Join(root, "opt/nodecreds/bin/nodecreds")); !os.IsNotExist(err) {
			t.Errorf("a waiting agent installed the plugin binary (%v)", err)
		}
		if code := dup.stop(t); code != 0 || !strings.Contains(dup.logs.String(), "stopped while waiting") {
			t.Errorf("a waiting agent stopped: exit %d\n%s", code, dup.logs.String())
		}
		if hasEvent(t, admin, "node-r", "WaitingForAgent") {
			t.Errorf("a rollout's brief wait was reported on the Node")
		}

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
			"--secret", creds["default"].secret, "--host-root", root, "--metrics-addr", "0")
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
	var canaries []string
	for _, cr := range creds {
		canaries = append(canaries, cr.userpass, strings.SplitN(cr.userpass, ":", 2)[1])
	}
	assertNoSecrets(t, "Events", logs.String(), canaries...)
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

// jsonPatch, strategic and merge patches sign as the agent's field manager,
// so that a refusal is about what they change, not about who signs.
func jsonPatch(ctx context.Context, nodes nodePatcher, node, patch string) error {
	_, err := nodes.Patch(ctx, node, types.JSONPatchType, []byte(patch), metav1.PatchOptions{FieldManager: "nodecreds"})
	return err
}

func strategic(ctx context.Context, nodes nodePatcher, node, patch string, sub ...string) error {
	_, err := nodes.Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "nodecreds"}, sub...)
	return err
}

func apply(ctx context.Context, nodes nodePatcher, node, obj string) error {
	force := true
	_, err := nodes.Patch(ctx, node, types.ApplyPatchType, []byte(obj), metav1.PatchOptions{FieldManager: "evil", Force: &force})
	return err
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
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

// userClient is a client with a certificate for user in group (the
// cluster's client CA), to act as a kubelet or a tenant does.
func userClient(t *testing.T, c *cluster.Cluster, user, group string) *kubernetes.Clientset {
	t.Helper()
	cfg, err := c.UserConfig(user, group)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(fmt.Errorf("client for %s: %w", user, err))
	}
	return client
}
