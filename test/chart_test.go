package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/scripts/chart/render"
	"github.com/nodecreds/nodecreds/test/cluster"
)

func chartDir() string { return filepath.Join(cluster.RepoRoot(), render.ChartDir) }

// objects splits rendered templates into typed-or-unstructured objects.
func objects(t *testing.T, out map[string]string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for name, text := range out {
		for _, doc := range strings.Split(text, "\n---") {
			if strings.TrimSpace(doc) == "" || !strings.Contains(doc, "kind:") {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("%s does not parse: %v\n%s", name, err, doc)
			}
			objs = append(objs, u)
		}
	}
	return objs
}

func find[T any](t *testing.T, objs []*unstructured.Unstructured, kind string) (*T, bool) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			var v T
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &v); err != nil {
				t.Fatal(err)
			}
			return &v, true
		}
	}
	return nil, false
}

// TestManifestIsTheChartsRender: deploy/daemonset.yaml is the chart rendered
// with its defaults (plus namespace.create=true); `make manifests` rewrites
// it. One source of truth for both install paths.
func TestManifestIsTheChartsRender(t *testing.T) {
	want, err := render.Manifest(chartDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("deploy/daemonset.yaml differs from the chart's render: run `make manifests`")
	}
}

// TestChartLint runs Helm's linter over the defaults and over every
// documented value set at once.
func TestChartLint(t *testing.T) {
	for _, set := range []string{"", everyValue, "selector=team=a,secrets=null"} {
		if err := render.Lint(chartDir(), set); err != nil {
			t.Errorf("helm lint with %q: %v", set, err)
		}
	}
}

const everyValue = "image.repository=reg.example.test/nodecreds,image.tag=9.9.9,image.digest=sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" +
	",image.pullPolicy=Always,imagePullSecrets[0].name=pull,secrets={first,second},targets={/var/lib/kubelet/config.json,/etc/containers/auth.json}" +
	",credentialProvider.enabled=true,priorityClassName=custom,nodeSelector.pool=a,tolerations[0].key=k,tolerations[0].operator=Exists" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=type" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=NotIn" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=virtual-kubelet" +
	",resources.limits.memory=80Mi,podAnnotations.a=b,podLabels.team=x,extraArgs={--resync=10m},extraEnv[0].name=X,extraEnv[0].value=y" +
	",updateStrategy.rollingUpdate.maxUnavailable=2,metrics.port=9300,serviceMonitor.enabled=true"

// TestChartValues renders each documented value and checks it lands where
// it should.
func TestChartValues(t *testing.T) {
	out, err := render.Render(chartDir(), "", "ns1")
	if err != nil {
		t.Fatal(err)
	}
	def := objects(t, out)
	ds, _ := find[appsv1.DaemonSet](t, def, "DaemonSet")
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/nodecreds/nodecreds:0.1.0" {
		t.Errorf("default image %s, want the appVersion tag", c.Image)
	}
	if _, ok := find[corev1.Namespace](t, def, "Namespace"); ok {
		t.Error("the chart creates a Namespace by default")
	}
	if ds.Namespace != "ns1" || ds.Spec.Template.Spec.PriorityClassName != "system-node-critical" || ds.Spec.Template.Spec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("defaults: namespace %s priority %q nodeSelector %v", ds.Namespace, ds.Spec.Template.Spec.PriorityClassName, ds.Spec.Template.Spec.NodeSelector)
	}
	if _, ok := find[unstructured.Unstructured](t, def, "ServiceMonitor"); ok {
		t.Error("ServiceMonitor rendered by default")
	}

	out, err = render.Render(chartDir(), everyValue, "ns1")
	if err != nil {
		t.Fatal(err)
	}
	all := objects(t, out)
	ds, _ = find[appsv1.DaemonSet](t, all, "DaemonSet")
	spec := ds.Spec.Template.Spec
	c = spec.Containers[0]
	role, _ := find[rbacv1.Role](t, all, "Role")
	checks := []struct {
		what string
		ok   bool
	}{
		{"image.digest wins over the tag", c.Image == "reg.example.test/nodecreds@sha256:"+strings.Repeat("a", 64)},
		{"image.pullPolicy", c.ImagePullPolicy == corev1.PullAlways},
		{"imagePullSecrets", len(spec.ImagePullSecrets) == 1 && spec.ImagePullSecrets[0].Name == "pull"},
		{"secrets → --secret in order", slices.Contains(c.Args, "--secret=first,second")},
		{"secrets → Role resourceNames", len(role.Rules) == 1 && slices.Equal(role.Rules[0].ResourceNames, []string{"first", "second"})},
		{"targets → --target", slices.Contains(c.Args, "--target=/var/lib/kubelet/config.json,/etc/containers/auth.json")},
		{"targets → mounts", hasMount(c, "/host/etc/containers") && hasMount(c, "/host/var/lib/kubelet") && !hasMount(c, "/host/root/.docker")},
		{"credentialProvider.enabled", slices.Contains(c.Args, "--install-credential-provider=/opt/nodecreds/bin") && hasMount(c, "/host/opt/nodecreds/bin")},
		{"priorityClassName", spec.PriorityClassName == "custom"},
		{"nodeSelector", spec.NodeSelector["pool"] == "a"},
		{"tolerations", len(spec.Tolerations) == 1 && spec.Tolerations[0].Key == "k"},
		{"affinity", spec.Affinity != nil && spec.Affinity.NodeAffinity != nil},
		{"resources", c.Resources.Limits.Memory().String() == "80Mi"},
		{"podAnnotations", ds.Spec.Template.Annotations["a"] == "b"},
		{"podLabels", ds.Spec.Template.Labels["team"] == "x" && ds.Spec.Template.Labels["app.kubernetes.io/name"] == "nodecreds"},
		{"extraArgs", slices.Contains(c.Args, "--resync=10m")},
		{"extraEnv", slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "X" && e.Value == "y" })},
		{"updateStrategy", ds.Spec.UpdateStrategy.RollingUpdate != nil && ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() == 2},
		{"metrics.port", c.Ports[0].ContainerPort == 9300 && slices.Contains(c.Args, "--metrics-addr=:9300")},
	}
	for _, ck := range checks {
		if !ck.ok {
			t.Errorf("%s: not rendered as documented", ck.what)
		}
	}
	if _, ok := find[unstructured.Unstructured](t, all, "ServiceMonitor"); !ok {
		t.Error("serviceMonitor.enabled renders no ServiceMonitor")
	}

	out, err = render.Render(chartDir(), "selector=team=a", "ns1")
	if err != nil {
		t.Fatal(err)
	}
	sel := objects(t, out)
	ds, _ = find[appsv1.DaemonSet](t, sel, "DaemonSet")
	role, _ = find[rbacv1.Role](t, sel, "Role")
	if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--selector=team=a") || slices.ContainsFunc(ds.Spec.Template.Spec.Containers[0].Args, func(a string) bool { return strings.HasPrefix(a, "--secret=") }) {
		t.Errorf("selector args: %v", ds.Spec.Template.Spec.Containers[0].Args)
	}
	if len(role.Rules) != 1 || len(role.Rules[0].ResourceNames) != 0 || !slices.Equal(role.Rules[0].Verbs, []string{"list", "watch"}) {
		t.Errorf("selector Role: %+v", role.Rules)
	}
	out, err = render.Render(chartDir(), "image.tag=1.2.3", "ns1")
	if err != nil {
		t.Fatal(err)
	}
	if ds, _ := find[appsv1.DaemonSet](t, objects(t, out), "DaemonSet"); ds.Spec.Template.Spec.Containers[0].Image != "ghcr.io/nodecreds/nodecreds:1.2.3" {
		t.Errorf("image.tag: %s", ds.Spec.Template.Spec.Containers[0].Image)
	}
}

func hasMount(c corev1.Container, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path })
}

// TestChartOnRealAPIServer: against an API server that enforces the
// baseline Pod Security level by default, the README's Helm path (create
// the namespace, label it privileged, install the chart) ends with the
// DaemonSet's Pods admitted; the rendered defaults pass a server-side dry
// run; in a namespace left at baseline the same Pod is refused (so the
// enforcement is real), and the chart's own check refuses to install into
// a namespace labelled baseline, naming the fix.
func TestChartOnRealAPIServer(t *testing.T) {
	c := startCluster(t, "baseline")
	ctx := t.Context()
	const ns = "nodecreds"
	// The README's commands: kubectl create namespace; kubectl label.
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labelNS(t, c, ns, "privileged")
	// helm install: rendered with the cluster (lookup sees the namespace).
	objs := objects(t, renderWithCluster(t, c, "", ns))
	if err := cluster.Apply(ctx, c.RESTConfig, objs, true); err != nil {
		t.Fatalf("server-side dry run of the chart's defaults: %v", err)
	}
	if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
		t.Fatalf("applying the chart's defaults: %v", err)
	}
	ds, _ := find[appsv1.DaemonSet](t, objs, "DaemonSet")
	if err := createPodFrom(ctx, c, ns, ds); err != nil {
		t.Errorf("a Pod of the chart's DaemonSet is refused in the README's namespace: %v", err)
	}

	// The same Pod in a namespace at the cluster's default (baseline).
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.CoreV1().ServiceAccounts("plain").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nodecreds"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := createPodFrom(ctx, c, "plain", ds); err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "hostPath") {
		t.Errorf("the Pod was not refused under baseline (so this test proves nothing): %v", err)
	}
	// The chart's check, for a namespace explicitly labelled baseline.
	labelNS(t, c, "plain", "baseline")
	if _, err := renderWithClusterErr(c, "", "plain"); err == nil || !strings.Contains(err.Error(), "pod-security.kubernetes.io/enforce=privileged") {
		t.Errorf("installing into a baseline namespace: want the chart to refuse naming the label, got %v", err)
	}
}

func labelNS(t *testing.T, c *cluster.Cluster, ns, level string) {
	t.Helper()
	n, err := c.Admin.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels["pod-security.kubernetes.io/enforce"] = level
	if _, err := c.Admin.CoreV1().Namespaces().Update(t.Context(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func renderWithCluster(t *testing.T, c *cluster.Cluster, set, ns string) map[string]string {
	t.Helper()
	out, err := renderWithClusterErr(c, set, ns)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func renderWithClusterErr(c *cluster.Cluster, set, ns string) (map[string]string, error) {
	return render.RenderWithCluster(chartDir(), set, ns, c.RESTConfig)
}

// createPodFrom creates (server-side dry run) the Pod the DaemonSet
// controller would create for a node: what Pod Security admission judges.
func createPodFrom(ctx context.Context, c *cluster.Cluster, ns string, ds *appsv1.DaemonSet) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "nodecreds-", Namespace: ns, Labels: ds.Spec.Template.Labels},
		Spec:       *ds.Spec.Template.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = "node-1"
	_, err := c.Admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

// poolsSet is two pools as the README sets them, the second with its own
// tolerations.
const poolsSet = `pools[0].name=tenant-a,pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-a,pools[0].secrets={registry-credentials,tenant-a-registry}` +
	`,pools[1].name=tenant-b,pools[1].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-b,pools[1].secrets={tenant-b-registry}` +
	`,pools[1].tolerations[0].key=tenant,pools[1].tolerations[0].value=b,pools[1].tolerations[0].effect=NoSchedule`

func all[T any](t *testing.T, objs []*unstructured.Unstructured, kind string) map[string]*T {
	t.Helper()
	out := map[string]*T{}
	for _, o := range objs {
		if o.GetKind() == kind {
			var v T
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &v); err != nil {
				t.Fatal(err)
			}
			out[o.GetNamespace()+"/"+o.GetName()] = &v
		}
	}
	return out
}

// TestChartPools: each pool gets its own ServiceAccount, a Role naming only
// its Secrets bound to that ServiceAccount only, and a DaemonSet on its
// nodes running as it, with --pool set; no DaemonSet's selector matches
// another's Pods; the Node ClusterRole, the Events Role (in default, create
// only) and the admission policy cover every agent.
func TestChartPools(t *testing.T) {
	out, err := render.Render(chartDir(), poolsSet, "ns1")
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, out)
	sets := all[appsv1.DaemonSet](t, objs, "DaemonSet")
	roles := all[rbacv1.Role](t, objs, "Role")
	bindings := all[rbacv1.RoleBinding](t, objs, "RoleBinding")
	sas := all[corev1.ServiceAccount](t, objs, "ServiceAccount")
	if len(sets) != 3 || len(sas) != 3 {
		t.Fatalf("%d DaemonSets and %d ServiceAccounts, want 3 of each", len(sets), len(sas))
	}
	for _, pool := range []struct {
		name    string
		secrets []string
	}{{"", []string{"registry-credentials"}}, {"tenant-a", []string{"registry-credentials", "tenant-a-registry"}}, {"tenant-b", []string{"tenant-b-registry"}}} {
		name, roleName := "nodecreds", "nodecreds-secrets"
		if pool.name != "" {
			name, roleName = "nodecreds-"+pool.name, "nodecreds-"+pool.name+"-secrets"
		}
		ds := sets["ns1/"+name]
		if ds == nil || sas["ns1/"+name] == nil {
			t.Fatalf("pool %q: no DaemonSet or ServiceAccount %s", pool.name, name)
		}
		spec := ds.Spec.Template.Spec
		c := spec.Containers[0]
		envPool := ""
		for _, e := range c.Env {
			if e.Name == "NODECREDS_POOL" {
				envPool = e.Value
			}
		}
		role, binding := roles["ns1/"+roleName], bindings["ns1/"+roleName]
		checks := []struct {
			what string
			ok   bool
		}{
			{"runs as its own ServiceAccount", spec.ServiceAccountName == name},
			{"reads its Secrets", slices.Contains(c.Args, "--secret="+strings.Join(pool.secrets, ","))},
			{"says its pool", envPool == pool.name},
			{"on its pool's nodes", pool.name == "" || spec.NodeSelector["node-restriction.kubernetes.io/pool"] == pool.name && spec.NodeSelector["kubernetes.io/os"] == "linux"},
			{"its Role names its Secrets only", role != nil && len(role.Rules) == 1 && slices.Equal(role.Rules[0].ResourceNames, pool.secrets)},
			{"bound to its ServiceAccount only", binding != nil && binding.RoleRef.Name == roleName && len(binding.Subjects) == 1 && binding.Subjects[0].Name == name},
			{"its Pods carry part-of (the metrics Service)", ds.Spec.Template.Labels["app.kubernetes.io/part-of"] == "nodecreds"},
			{"status finds it (app.kubernetes.io/name=nodecreds)", ds.Labels["app.kubernetes.io/name"] == "nodecreds" && ds.Labels["nodecreds.io/pool"] == pool.name},
		}
		for _, ck := range checks {
			if !ck.ok {
				t.Errorf("pool %q: %s: not rendered so", pool.name, ck.what)
			}
		}
		if pool.name == "tenant-b" && !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == "nodecreds.io/not-ready" }) {
			t.Errorf("a pool with its own tolerations does not tolerate the startup taint: %v", spec.Tolerations)
		}
		// No other DaemonSet's selector matches this one's Pods.
		for other, o := range sets {
			sel, err := metav1.LabelSelectorAsSelector(o.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			if other != "ns1/"+name && sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
				t.Errorf("DaemonSet %s selects the Pods of %s", other, name)
			}
		}
	}
	cr, _ := find[rbacv1.ClusterRole](t, objs, "ClusterRole")
	crb, _ := find[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding")
	if len(crb.Subjects) != 3 {
		t.Errorf("the Node ClusterRole is bound to %v, want the three agents' ServiceAccounts", crb.Subjects)
	}
	for _, r := range cr.Rules {
		if slices.Contains(r.Resources, "events") {
			t.Errorf("Events are granted cluster-wide: %+v", r)
		}
	}
	events := roles["default/nodecreds-events"]
	if events == nil || len(events.Rules) != 1 || !slices.Equal(events.Rules[0].Verbs, []string{"create"}) || !slices.Equal(events.Rules[0].Resources, []string{"events"}) ||
		len(bindings["default/nodecreds-events"].Subjects) != 3 {
		t.Errorf("Events Role in default: %+v, binding %+v", events, bindings["default/nodecreds-events"])
	}
	vap, ok := find[unstructured.Unstructured](t, objs, "ValidatingAdmissionPolicy")
	if !ok {
		t.Fatal("no ValidatingAdmissionPolicy")
	}
	match, _, _ := unstructured.NestedSlice(vap.Object, "spec", "matchConditions")
	for _, sa := range []string{"nodecreds", "nodecreds-tenant-a", "nodecreds-tenant-b"} {
		if !strings.Contains(fmt.Sprint(match), `"system:serviceaccount:ns1:`+sa+`"`) {
			t.Errorf("the admission policy does not cover %s: %v", sa, match)
		}
	}
	if err := render.Lint(chartDir(), poolsSet); err != nil {
		t.Errorf("helm lint with pools: %v", err)
	}
}

// TestChartPoolsOneAgentPerNode: whatever a node's labels, exactly one of
// the chart's DaemonSets would run on it (none where the user's own
// nodeSelector or affinity excludes it): that of the first pool that
// selects it, else the default one. Checked with the scheduler's own node
// affinity code over every combination of the labels involved, for pools of
// one and of several labels, with and without an affinity of the user's.
func TestChartPoolsOneAgentPerNode(t *testing.T) {
	const (
		pool = `node-restriction.kubernetes.io/pool`
		zone = `node-restriction.kubernetes.io/zone`
	)
	esc := func(k string) string { return strings.ReplaceAll(k, ".", `\.`) }
	userAffinity := ",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=type" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=NotIn" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=virtual-kubelet" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[0].key=type" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[0].operator=In" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[0].values[0]=virtual-kubelet" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[1].key=allow" +
		",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[1].matchExpressions[1].operator=Exists"
	type poolDef struct {
		name string
		sel  map[string]string
	}
	for _, tc := range []struct {
		name   string
		pools  []poolDef
		extra  string
		userOK func(labels.Set) bool // the user's own nodeSelector and affinity
	}{
		{"one label each", []poolDef{{"a", map[string]string{pool: "a"}}, {"b", map[string]string{pool: "b"}}}, "", nil},
		{"several labels, overlapping pools", []poolDef{
			{"a", map[string]string{pool: "a"}},
			{"bz", map[string]string{pool: "b", zone: "z1"}},
			{"z", map[string]string{zone: "z1"}},
			{"c2", map[string]string{pool: "c", zone: "z2"}},
		}, "", nil},
		{"with the user's affinity", []poolDef{{"a", map[string]string{pool: "a"}}, {"bz", map[string]string{pool: "b", zone: "z1"}}}, userAffinity,
			func(l labels.Set) bool { return l["type"] != "virtual-kubelet" || l.Has("allow") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := ""
			for i, p := range tc.pools {
				set += fmt.Sprintf(",pools[%d].name=%s,pools[%d].secrets={s-%s}", i, p.name, i, p.name)
				for k, v := range p.sel {
					set += fmt.Sprintf(",pools[%d].nodeSelector.%s=%s", i, esc(k), v)
				}
			}
			out, err := render.Render(chartDir(), set[1:]+tc.extra, "ns1")
			if err != nil {
				t.Fatal(err)
			}
			sets := all[appsv1.DaemonSet](t, objects(t, out), "DaemonSet")
			nodes := 0
			for _, os := range []string{"linux", "windows"} {
				for _, p := range []string{"", "a", "b", "c"} {
					for _, z := range []string{"", "z1", "z2"} {
						for _, typ := range []string{"", "virtual-kubelet"} {
							for _, allow := range []string{"", "yes"} {
								l := labels.Set{"kubernetes.io/os": os}
								for k, v := range map[string]string{pool: p, zone: z, "type": typ, "allow": allow} {
									if v != "" {
										l[k] = v
									}
								}
								nodes++
								node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: l}}
								var running []string
								for name, ds := range sets {
									spec := ds.Spec.Template.Spec
									if ok, err := nodeaffinity.NewRequiredNodeAffinity(spec.NodeSelector, spec.Affinity).Match(node); err != nil {
										t.Fatal(err)
									} else if ok {
										running = append(running, strings.TrimPrefix(name, "ns1/"))
									}
								}
								want := "nodecreds"
								for _, pd := range tc.pools {
									if labels.SelectorFromSet(pd.sel).Matches(l) {
										want = "nodecreds-" + pd.name
										break
									}
								}
								if os != "linux" || tc.userOK != nil && !tc.userOK(l) {
									want = ""
								}
								if want == "" && len(running) != 0 || want != "" && !slices.Equal(running, []string{want}) {
									t.Errorf("a node labelled %v runs %v, want %q", l, running, want)
								}
							}
						}
					}
				}
			}
			t.Logf("%d label combinations, %d DaemonSets", nodes, len(sets))
		})
	}
}

// TestChartRefuses: values that would break a promise fail the install
// with the reason and the fix.
func TestChartRefuses(t *testing.T) {
	pool := func(rest string) string {
		return `pools[0].name=a,pools[0].secrets={a-registry},pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=a` + rest
	}
	for _, tc := range []struct {
		name, set string
		want      []string
	}{
		{"a target in /", "targets={/config.json}", []string{`"/config.json"`, "node folder / read-write", "system folder"}},
		{"a target in /etc", "targets={/var/lib/kubelet/config.json,/etc/config.json}", []string{"node folder /etc "}},
		{"a target in /var/lib", "targets={/var/lib/config.json}", []string{"node folder /var/lib "}},
		{"a target in /root", "targets={/root/config.json}", []string{"node folder /root "}},
		{"a target that climbs", "targets={/var/lib/kubelet/../../config.json}", []string{"node folder /var "}},
		{"a target under /proc", "targets={/proc/1/root/config.json}", []string{"node folder /proc/1/root "}},
		{"a target under /usr/lib", "targets={/usr/lib/x/config.json}", []string{"node folder /usr/lib/x "}},
		{"a target in the state folder", "targets={/var/lib/nodecreds/config.json}", []string{"node folder /var/lib/nodecreds ", "state folder"}},
		{"a relative target", "targets={config.json}", []string{"absolute node path"}},
		{"the plugin in /usr/bin", "credentialProvider.enabled=true,credentialProvider.binDir=/usr/bin", []string{"credentialProvider.binDir", "node folder /usr/bin "}},
		{"the plugin in /", "credentialProvider.enabled=true,credentialProvider.binDir=/", []string{"node folder / "}},
		{"a surge rollout", "updateStrategy.rollingUpdate.maxSurge=1", []string{"maxSurge", "never finish", "maxUnavailable"}},
		{"a label a node sets itself", `pools[0].name=a,pools[0].secrets={x},pools[0].nodeSelector.pool=a`, []string{`key "pool"`, "NodeRestriction", "node-restriction.kubernetes.io/pool=a"}},
		{"a lookalike of the restricted prefix", `pools[0].name=a,pools[0].secrets={x},pools[0].nodeSelector.node-restriction\.kubernetes\.io\.example\.com/pool=a`, []string{"node-restriction.kubernetes.io.example.com/pool", "can set on itself"}},
		{"a kubernetes.io label", `pools[0].name=a,pools[0].secrets={x},pools[0].nodeSelector.kubernetes\.io/hostname=n1`, []string{"kubernetes.io/hostname", "can set on itself"}},
		{"no nodeSelector", `pools[0].name=a,pools[0].secrets={x}`, []string{"nodeSelector is missing"}},
		{"no Secrets", `pools[0].name=a,pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=a`, []string{"secrets is empty"}},
		{"a selector in a pool", pool(",pools[0].selector=team=a"), []string{"list every Secret in namespace ns1", "pools[0].secrets"}},
		{"a selector next to pools", pool(",selector=team=a"), []string{"default DaemonSet's agents list every Secret", "name the default Secrets"}},
		{"a bad name", `pools[0].name=Tenant_A,pools[0].secrets={x},pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=a`, []string{"DNS label"}},
		{"two pools of one name", pool(`,pools[1].name=a,pools[1].secrets={x},pools[1].nodeSelector.node-restriction\.kubernetes\.io/pool=b`), []string{"two pools have that name"}},
		{"a pool inside an earlier one", pool(`,pools[1].name=b,pools[1].secrets={x},pools[1].nodeSelector.node-restriction\.kubernetes\.io/pool=a,pools[1].nodeSelector.node-restriction\.kubernetes\.io/zone=z`), []string{"pools[1] (b) selects only nodes that pools[0] (a) selects"}},
		{"a misspelt key", pool(",pools[0].nodeselector.x=y"), []string{`unknown key "nodeselector"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render.Render(chartDir(), tc.set, "ns1")
			if err == nil {
				t.Fatalf("rendered; want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the refusal %q does not say %q", err, w)
				}
			}
		})
	}
	// What stays fine.
	for _, set := range []string{
		"targets={/var/lib/kubelet/config.json,/root/.docker/config.json,/etc/containers/auth.json,/run/containers/0/auth.json,/home/ci/.docker/config.json}",
		"credentialProvider.enabled=true",
		"updateStrategy.rollingUpdate.maxSurge=0",
		pool(`,pools[0].nodeSelector.example\.node-restriction\.kubernetes\.io/zone=z`),
	} {
		if _, err := render.Render(chartDir(), set, "ns1"); err != nil {
			t.Errorf("%s refused: %v", set, err)
		}
	}
}
