package test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/test/cluster"
)

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
	want, err := chartManifest("")
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
	for _, set := range []string{"", everyValue, "selector=team=a,secrets=null", "secrets=null", "secrets=null," + poolsSet} {
		if err := lintChart(set); err != nil {
			t.Errorf("helm lint with %q: %v", set, err)
		}
	}
}

const everyValue = "image.repository=reg.example.test/nodecreds,image.tag=9.9.9,image.digest=sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" +
	",image.pullPolicy=Always,imagePullSecrets[0].name=pull,secrets={first,second},targets={/var/lib/kubelet/config.json,/etc/containers/auth.json}" +
	",credentialProvider.enabled=true,runtimeAuth.containerdCertsDir=/etc/containerd/certs.d,priorityClassName=custom,nodeSelector.pool=a,tolerations[0].key=k,tolerations[0].operator=Exists" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=type" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=NotIn" +
	",affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=virtual-kubelet" +
	",resources.limits.memory=80Mi,podAnnotations.a=b,podLabels.team=x,extraArgs={--resync=10m},extraEnv[0].name=X,extraEnv[0].value=y" +
	",updateStrategy.rollingUpdate.maxUnavailable=2,metrics.port=9300,serviceMonitor.enabled=true,verify.spread=5s,verify.retry=1m" +
	",expiryWarning.share=0.25,expiryWarning.min=30m" +
	",credentialProvider.serviceAccount.enabled=true,credentialProvider.serviceAccount.audience=https://kubernetes.default.svc.cluster.local,credentialProvider.serviceAccount.serviceAccountNames={app}" +
	",flowControl.enabled=true,flowControl.matchingPrecedence=2000,flowControl.nominalConcurrencyShares=20,flowControl.lendablePercent=0" +
	",flowControl.queuing.queues=16,flowControl.queuing.handSize=4,flowControl.queuing.queueLengthLimit=100"

// TestChartValues renders each documented value and checks it lands where
// it should.
func TestChartValues(t *testing.T) {
	out, err := renderChart("", "ns1")
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
	if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--verify") }) {
		t.Errorf("verification's defaults rendered as flags: %v", c.Args)
	}
	out, err = renderChart("verify.enabled=false", "ns1")
	if err != nil {
		t.Fatal(err)
	}
	if ds, _ := find[appsv1.DaemonSet](t, objects(t, out), "DaemonSet"); !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--verify=off") {
		t.Errorf("verify.enabled=false: args %v", ds.Spec.Template.Spec.Containers[0].Args)
	}

	out, err = renderChart(everyValue, "ns1")
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
		{"runtimeAuth.containerdCertsDir", slices.Contains(c.Args, "--containerd-certs-dir=/etc/containerd/certs.d") && hasMount(c, "/host/etc/containerd/certs.d")},
		{"runtimeAuth: containerd's configuration folder read-only", slices.Contains(c.Args, "--containerd-config=/etc/containerd/config.toml") &&
			slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/host/etc/containerd" && m.ReadOnly })},
		{"priorityClassName", spec.PriorityClassName == "custom"},
		{"nodeSelector", spec.NodeSelector["pool"] == "a"},
		{"tolerations (and the startup taint's)", len(spec.Tolerations) == 2 && spec.Tolerations[0].Key == "k" && spec.Tolerations[1].Key == "nodecreds.io/not-ready"},
		{"affinity", spec.Affinity != nil && spec.Affinity.NodeAffinity != nil},
		{"resources", c.Resources.Limits.Memory().String() == "80Mi"},
		{"podAnnotations", ds.Spec.Template.Annotations["a"] == "b"},
		{"podLabels", ds.Spec.Template.Labels["team"] == "x" && ds.Spec.Template.Labels["app.kubernetes.io/name"] == "nodecreds"},
		{"extraArgs", slices.Contains(c.Args, "--resync=10m")},
		{"expiryWarning", slices.Contains(c.Args, "--expiry-warn-share=0.25") && slices.Contains(c.Args, "--expiry-warn-min=30m")},
		{"extraEnv", slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "X" && e.Value == "y" })},
		{"updateStrategy", ds.Spec.UpdateStrategy.RollingUpdate != nil && ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() == 2},
		{"metrics.port", c.Ports[0].ContainerPort == 9300 && slices.Contains(c.Args, "--metrics-addr=:9300")},
		{"verify.spread, verify.retry", slices.Contains(c.Args, "--verify-spread=5s") && slices.Contains(c.Args, "--verify-retry=1m")},
		{"credentialProvider.serviceAccount (cluster-wide node RBAC for the audience)", slices.ContainsFunc(all, func(o *unstructured.Unstructured) bool {
			var cr rbacv1.ClusterRole
			if o.GetKind() != "ClusterRole" || o.GetName() != "nodecreds-sa-token-audience" || runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cr) != nil {
				return false
			}
			return len(cr.Rules) == 1 && slices.Equal(cr.Rules[0].Resources, []string{"https://kubernetes.default.svc.cluster.local"}) && slices.Equal(cr.Rules[0].ResourceNames, []string{"app"})
		})},
		{"flowControl.*", func() bool {
			pl, ok := find[flowcontrolv1.PriorityLevelConfiguration](t, all, "PriorityLevelConfiguration")
			fs, ok2 := find[flowcontrolv1.FlowSchema](t, all, "FlowSchema")
			if !ok || !ok2 || pl.Spec.Limited == nil || pl.Spec.Limited.LimitResponse.Queuing == nil {
				return false
			}
			l, q := pl.Spec.Limited, pl.Spec.Limited.LimitResponse.Queuing
			return fs.Spec.MatchingPrecedence == 2000 && *l.NominalConcurrencyShares == 20 && *l.LendablePercent == 0 && q.Queues == 16 && q.HandSize == 4 && q.QueueLengthLimit == 100
		}()},
	}
	for _, ck := range checks {
		if !ck.ok {
			t.Errorf("%s: not rendered as documented", ck.what)
		}
	}
	if _, ok := find[unstructured.Unstructured](t, all, "ServiceMonitor"); !ok {
		t.Error("serviceMonitor.enabled renders no ServiceMonitor")
	}

	out, err = renderChart("selector=team=a", "ns1")
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
	out, err = renderChart("image.tag=1.2.3", "ns1")
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
// baseline Pod Security level by default, the docs' Helm path (create
// the namespace, label it privileged, install the chart) ends with the
// DaemonSet's Pods admitted; the rendered defaults pass a server-side dry
// run; in a namespace left at baseline the same Pod is refused (so the
// enforcement is real), and the chart's own check refuses to install into
// a namespace labelled baseline, naming the fix.
func TestChartOnRealAPIServer(t *testing.T) {
	c := startCluster(t, "baseline")
	ctx := t.Context()
	const ns = "nodecreds"
	// The docs' commands: kubectl create namespace; kubectl label.
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
		t.Errorf("a Pod of the chart's DaemonSet is refused in the docs' namespace: %v", err)
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
	return renderChartWithCluster(set, ns, c)
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

// poolsSet is two pools as the docs set them, the second with its own
// tolerations (its tenant taint).
const poolsSet = `pools[0].name=tenant-a,pools[0].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-a,pools[0].secrets={registry-credentials,tenant-a-registry}` +
	`,pools[1].name=tenant-b,pools[1].nodeSelector.node-restriction\.kubernetes\.io/pool=tenant-b,pools[1].secrets={registry-credentials,tenant-b-registry}` +
	`,pools[1].tolerations[0].key=tenant,pools[1].tolerations[0].value=b,pools[1].tolerations[0].effect=NoExecute`

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
	out, err := renderChart(poolsSet, "ns1")
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
	}{{"", []string{"registry-credentials"}}, {"tenant-a", []string{"registry-credentials", "tenant-a-registry"}}, {"tenant-b", []string{"registry-credentials", "tenant-b-registry"}}} {
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
		if pool.name == "tenant-b" && (!tolerates(spec, corev1.Taint{Key: "nodecreds.io/not-ready", Effect: corev1.TaintEffectNoSchedule}) ||
			!tolerates(spec, corev1.Taint{Key: "tenant", Value: "b", Effect: corev1.TaintEffectNoExecute})) {
			t.Errorf("a pool with its own tolerations does not tolerate the startup taint and its own: %v", spec.Tolerations)
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
	// The admission policy covers every agent by the chart's naming rule,
	// not by a list of today's pools: it renders the same whatever the
	// pools (so the policy in force already covers a pool that an upgrade
	// adds or renames), and names the release namespace's nodecreds and
	// nodecreds-<anything> accounts.
	vap := policyOf(t, objs)
	for _, set := range []string{"", "secrets=null", strings.ReplaceAll(poolsSet, "tenant-b", "tenant-c"), poolsSet + `,pools[2].name=x,pools[2].secrets={registry-credentials,x},pools[2].nodeSelector.node-restriction\.kubernetes\.io/pool=x`} {
		out, err := renderChart(set, "ns1")
		if err != nil {
			t.Fatal(err)
		}
		if other := policyOf(t, objects(t, out)); !reflect.DeepEqual(other, vap) {
			t.Errorf("the admission policy with %q differs from the one with pools", set)
		}
	}
	match, _, _ := unstructured.NestedSlice(vap.Object, "spec", "matchConditions")
	if s := fmt.Sprint(match); !strings.Contains(s, `== 'system:serviceaccount:ns1:nodecreds'`) || !strings.Contains(s, `.startsWith('system:serviceaccount:ns1:nodecreds-')`) {
		t.Errorf("the admission policy does not match the agents by name: %v", match)
	}
	if err := lintChart(poolsSet); err != nil {
		t.Errorf("helm lint with pools: %v", err)
	}
}

func policyOf(t *testing.T, objs []*unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	vap, ok := find[unstructured.Unstructured](t, objs, "ValidatingAdmissionPolicy")
	if !ok {
		t.Fatal("no ValidatingAdmissionPolicy")
	}
	return vap
}

// tolerates reports whether a Pod of spec tolerates taint, as the
// scheduler and the kubelet decide.
func tolerates(spec corev1.PodSpec, taint corev1.Taint) bool {
	return slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool { return tl.ToleratesTaint(klog.Background(), &taint, false) })
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
			out, err := renderChart(set[1:]+tc.extra, "ns1")
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
		{"containerd's folder as /etc", "runtimeAuth.containerdCertsDir=/etc", []string{"runtimeAuth.containerdCertsDir", "node folder /etc "}},
		{"containerd's folder relative", "runtimeAuth.containerdCertsDir=etc/containerd/certs.d", []string{"must be an absolute node path"}},
		{"containerd's configuration in /etc", "runtimeAuth.containerdCertsDir=/etc/containerd/certs.d,runtimeAuth.containerdConfig=/etc/config.toml", []string{"runtimeAuth.containerdConfig", "folder /etc read-only", "named containerd"}},
		{"containerd's configuration beside the cluster's keys", "runtimeAuth.containerdCertsDir=/etc/containerd/certs.d,runtimeAuth.containerdConfig=/etc/kubernetes/config.toml", []string{"folder /etc/kubernetes read-only"}},
		{"containerd's configuration climbing out", "runtimeAuth.containerdCertsDir=/etc/containerd/certs.d,runtimeAuth.containerdConfig=/etc/containerd/../kubernetes/pki/x.toml", []string{"folder /etc/kubernetes/pki read-only"}},
		{"containerd's configuration relative", "runtimeAuth.containerdCertsDir=/etc/containerd/certs.d,runtimeAuth.containerdConfig=config.toml", []string{"runtimeAuth.containerdConfig", "absolute node path"}},
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
			_, err := renderChart(tc.set, "ns1")
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
		if _, err := renderChart(set, "ns1"); err != nil {
			t.Errorf("%s refused: %v", set, err)
		}
	}
}

// readmeValues is the docs' two pools as a values file gives them,
// with the top-level secrets given (or left out when secrets is nil).
func readmeValues(secrets any, extra map[string]any) map[string]any {
	vals := map[string]any{"pools": []any{
		map[string]any{"name": "tenant-a", "nodeSelector": map[string]any{"node-restriction.kubernetes.io/pool": "tenant-a"}, "secrets": []any{"registry-credentials", "tenant-a-registry"}},
		map[string]any{"name": "tenant-b", "nodeSelector": map[string]any{"node-restriction.kubernetes.io/pool": "tenant-b"}, "secrets": []any{"registry-credentials", "tenant-b-registry"}},
	}}
	if secrets != nil {
		vals["secrets"] = secrets
	}
	maps.Copy(vals, extra)
	return vals
}

// withPool is readmeValues with pool i's key set to v.
func withPool(i int, key string, v any) map[string]any {
	vals := readmeValues(nil, nil)
	vals["pools"].([]any)[i].(map[string]any)[key] = v
	return vals
}

// TestChartRolesNameTheirSecrets: whatever shape the lists of Secrets take
// (helm --set or a values file), every rule the chart renders on Secrets
// names them — resourceNames neither empty (RBAC: every Secret) nor holding
// "" (RBAC: a list without a name), each name once — or the chart refuses
// the values naming the fix; only the top-level selector, which pools
// refuse, lists Secrets without names. Each agent's Role names exactly what
// its DaemonSet reads.
func TestChartRolesNameTheirSecrets(t *testing.T) {
	for _, tc := range []struct {
		name    string
		set     string
		vals    map[string]any
		refused []string
	}{
		{name: "--set secrets={} (one empty name)", set: "secrets={}," + poolsSet, refused: []string{"secrets[0] is empty", "secrets=null"}},
		{name: "--set secrets={} without pools", set: "secrets={}", refused: []string{"secrets[0] is empty"}},
		{name: "--set a pool's secrets={}", set: strings.Replace(poolsSet, "pools[1].secrets={registry-credentials,tenant-b-registry}", "pools[1].secrets={}", 1), refused: []string{"pools[1].secrets[0] is empty"}},
		{name: "--set secrets=null (no default agent)", set: "secrets=null," + poolsSet},
		{name: "--set two names, one empty", set: `secrets={registry-credentials,""}`, refused: []string{`secrets[1]: "\"\"" is not a Secret name`}},
		{name: "--set a number", set: "secrets={123}", refused: []string{"secrets[0]: 123 is not a string", "--set-string"}},
		{name: "--set a name twice", set: "secrets={a,b,a}", refused: []string{`secrets: "a" is listed twice`}},
		{name: "--set a pool's name twice", set: strings.Replace(poolsSet, "{registry-credentials,tenant-b-registry}", "{tenant-b-registry,tenant-b-registry}", 1), refused: []string{`pools[1].secrets: "tenant-b-registry" is listed twice`}},
		{name: "--set a string", set: "secrets=registry-credentials", refused: []string{"must be a list of Secret names"}},
		{name: "--set a bad name", set: "secrets={Tenant_A}", refused: []string{`"Tenant_A" is not a Secret name`}},
		{name: "secrets: [] (no default agent)", vals: readmeValues([]any{}, nil)},
		{name: "secrets: [] without pools (the policy only)", vals: map[string]any{"secrets": []any{}}},
		{name: "secrets: [\"\"]", vals: readmeValues([]any{""}, nil), refused: []string{"secrets[0] is empty"}},
		{name: "secrets: [null]", vals: readmeValues([]any{nil}, nil), refused: []string{"secrets[0]: <nil> is not a string"}},
		{name: "secrets: [{name: x}]", vals: readmeValues([]any{map[string]any{"name": "x"}}, nil), refused: []string{"secrets[0]", "is not a string"}},
		{name: "secrets: {}", vals: readmeValues(map[string]any{}, nil), refused: []string{"secrets: must be a list"}},
		{name: "secrets: a string", vals: readmeValues("registry-credentials", nil), refused: []string{"secrets: must be a list"}},
		{name: "a pool's secrets: []", vals: withPool(0, "secrets", []any{}), refused: []string{"pools[0] (tenant-a): secrets is empty"}},
		{name: "a pool's secrets: null", vals: withPool(0, "secrets", nil), refused: []string{"pools[0] (tenant-a): secrets is empty"}},
		{name: "a pool's secrets: [\"\"]", vals: withPool(1, "secrets", []any{""}), refused: []string{"pools[1].secrets[0] is empty"}},
		{name: "a pool's secrets: a string", vals: withPool(1, "secrets", "tenant-b-registry"), refused: []string{"pools[1].secrets: must be a list"}},
		{name: "a pool's secrets: [1]", vals: withPool(1, "secrets", []any{1}), refused: []string{"pools[1].secrets[0]: 1 is not a string"}},
		{name: "pools: a map", vals: map[string]any{"pools": map[string]any{"name": "a"}}, refused: []string{"pools: must be a list"}},
		{name: "the top-level lists a pool's Secret", vals: readmeValues([]any{"registry-credentials", "tenant-a-registry"}, nil),
			refused: []string{`secrets: "tenant-a-registry" is a Secret of pool tenant-a`, "every node in no pool", "keep it in its pools"}},
		{name: "the top-level lists a Secret of some pools", set: strings.Replace(poolsSet, "pools[1].secrets={registry-credentials,", "pools[1].secrets={", 1),
			refused: []string{`secrets: "registry-credentials" is a Secret of pool tenant-a`}},
		{name: "the README's pools", set: poolsSet},
		{name: "a selector without pools", set: "selector=team=a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out map[string]string
			var err error
			if tc.vals != nil {
				out, err = renderChartValues(t, tc.vals, "ns1")
			} else {
				out, err = renderChart(tc.set, "ns1")
			}
			if tc.refused != nil {
				if err == nil {
					t.Fatal("rendered; want a refusal")
				}
				for _, w := range tc.refused {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the refusal %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, out)
			roles := all[rbacv1.Role](t, objs, "Role")
			for name, role := range roles {
				for _, r := range role.Rules {
					if !slices.Contains(r.Resources, "secrets") {
						continue
					}
					if tc.set == "selector=team=a" && len(r.ResourceNames) == 0 && !slices.Contains(r.Verbs, "get") {
						continue
					}
					seen := map[string]bool{}
					for _, n := range r.ResourceNames {
						if n == "" || seen[n] {
							t.Errorf("Role %s names %q (empty or twice): %v", name, n, r.ResourceNames)
						}
						seen[n] = true
					}
					if len(r.ResourceNames) == 0 {
						t.Errorf("Role %s allows every Secret: %+v", name, r)
					}
				}
			}
			// Each DaemonSet's --secret is what its ServiceAccount's Role names.
			bindings := all[rbacv1.RoleBinding](t, objs, "RoleBinding")
			for _, ds := range all[appsv1.DaemonSet](t, objs, "DaemonSet") {
				var names []string
				for _, b := range bindings {
					if len(b.Subjects) == 1 && b.Subjects[0].Name == ds.Spec.Template.Spec.ServiceAccountName && roles["ns1/"+b.RoleRef.Name] != nil {
						names = append(names, roles["ns1/"+b.RoleRef.Name].Rules[0].ResourceNames...)
					}
				}
				if tc.set != "selector=team=a" && !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, "--secret="+strings.Join(names, ",")) {
					t.Errorf("DaemonSet %s reads %v; its Roles name %v", ds.Name, ds.Spec.Template.Spec.Containers[0].Args, names)
				}
			}
		})
	}
}

// TestChartWithoutDefaultAgent: with secrets empty (secrets: [] or
// --set secrets=null) and no selector, the chart renders no default
// ServiceAccount, Role or DaemonSet: a node in no pool runs no agent (and
// a pool's node exactly its pool's), checked with the scheduler's node
// affinity code; without pools as well, it renders the admission policy
// alone (the first step of an install with no window, docs/security.md).
func TestChartWithoutDefaultAgent(t *testing.T) {
	for _, vals := range []map[string]any{readmeValues([]any{}, nil), {"secrets": nil, "pools": readmeValues(nil, nil)["pools"]}} {
		out, err := renderChartValues(t, vals, "ns1")
		if err != nil {
			t.Fatal(err)
		}
		objs := objects(t, out)
		sets := all[appsv1.DaemonSet](t, objs, "DaemonSet")
		sas := all[corev1.ServiceAccount](t, objs, "ServiceAccount")
		roles := all[rbacv1.Role](t, objs, "Role")
		if sets["ns1/nodecreds"] != nil || sas["ns1/nodecreds"] != nil || roles["ns1/nodecreds-secrets"] != nil || len(sets) != 2 || len(sas) != 2 {
			t.Errorf("secrets %v: DaemonSets %v, ServiceAccounts %v, Roles %v; want only the pools'", vals["secrets"], slices.Sorted(maps.Keys(sets)), slices.Sorted(maps.Keys(sas)), slices.Sorted(maps.Keys(roles)))
		}
		crb, _ := find[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding")
		if slices.ContainsFunc(crb.Subjects, func(s rbacv1.Subject) bool { return s.Name == "nodecreds" }) {
			t.Errorf("the Node ClusterRole is bound to a default agent that does not exist: %v", crb.Subjects)
		}
		for _, pool := range []string{"", "tenant-a", "tenant-b", "tenant-c"} {
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"kubernetes.io/os": "linux"}}}
			if pool != "" {
				node.Labels["node-restriction.kubernetes.io/pool"] = pool
			}
			var running []string
			for name, ds := range sets {
				spec := ds.Spec.Template.Spec
				if ok, err := nodeaffinity.NewRequiredNodeAffinity(spec.NodeSelector, spec.Affinity).Match(node); err != nil {
					t.Fatal(err)
				} else if ok {
					running = append(running, name)
				}
			}
			want := []string{}
			if pool == "tenant-a" || pool == "tenant-b" {
				want = []string{"ns1/nodecreds-" + pool}
			}
			if !slices.Equal(append([]string{}, running...), want) {
				t.Errorf("a node of pool %q runs %v, want %v", pool, running, want)
			}
		}
	}
	out, err := renderChartValues(t, map[string]any{"secrets": []any{}}, "ns1")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objects(t, out) {
		kinds = append(kinds, o.GetKind())
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}) {
		t.Errorf("with no Secrets and no pools the chart renders %v, want the admission policy alone", kinds)
	}
	if !strings.Contains(out["NOTES.txt"], "No agent runs") {
		t.Errorf("NOTES do not say that no agent runs:\n%s", out["NOTES.txt"])
	}
}

// TestChartToleratesStartupTaint: every DaemonSet tolerates the
// nodecreds.io/not-ready startup taint (either effect) whatever the
// tolerations given — none, an empty list, others — as values.yaml
// promises, and each pool's agent the taints its own tolerations name.
func TestChartToleratesStartupTaint(t *testing.T) {
	tenantB := corev1.Taint{Key: "tenant", Value: "b", Effect: corev1.TaintEffectNoExecute}
	for _, tc := range []struct {
		name string
		vals map[string]any
	}{
		{"the defaults", nil},
		{"tolerations: []", map[string]any{"tolerations": []any{}}},
		{"tolerations: null", map[string]any{"tolerations": nil}},
		{"other tolerations", map[string]any{"tolerations": []any{map[string]any{"key": "x", "operator": "Exists", "effect": "NoSchedule"}}}},
		{"the startup taint's NoSchedule only", map[string]any{"tolerations": []any{map[string]any{"key": "nodecreds.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}}}},
		{"pools, tolerations: []", readmeValues(nil, map[string]any{"tolerations": []any{}})},
		{"a pool's own tolerations", func() map[string]any {
			v := withPool(1, "tolerations", []any{map[string]any{"key": "tenant", "value": "b", "effect": "NoExecute"}})
			v["tolerations"] = []any{}
			return v
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := renderChartValues(t, tc.vals, "ns1")
			if err != nil {
				t.Fatal(err)
			}
			for name, ds := range all[appsv1.DaemonSet](t, objects(t, out), "DaemonSet") {
				spec := ds.Spec.Template.Spec
				for _, effect := range []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectNoExecute} {
					if !tolerates(spec, corev1.Taint{Key: "nodecreds.io/not-ready", Effect: effect}) {
						t.Errorf("%s does not tolerate nodecreds.io/not-ready:%s: %v", name, effect, spec.Tolerations)
					}
				}
				if tc.name == "a pool's own tolerations" && name == "ns1/nodecreds-tenant-b" && !tolerates(spec, tenantB) {
					t.Errorf("%s does not tolerate its own pool's taint: %v", name, spec.Tolerations)
				}
			}
		})
	}
}

// podSecretRefs are the Secrets a Pod spec references, which the Node
// authorizer lets the kubelet of its node read.
func podSecretRefs(spec corev1.PodSpec) []string {
	var out []string
	for _, s := range spec.ImagePullSecrets {
		out = append(out, s.Name)
	}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				out = append(out, e.ValueFrom.SecretKeyRef.Name)
			}
		}
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				out = append(out, e.SecretRef.Name)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			out = append(out, v.Secret.SecretName)
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					out = append(out, s.Secret.Name)
				}
			}
		}
	}
	return out
}

// TestChartPoolSecretsStayInTheirPools: no value puts a Secret that some
// agents sync into the Pod spec of an agent that does not sync it (every
// node that runs such a Pod lets its kubelet read the Secret): a pool's
// Secret in imagePullSecrets or extraEnv (reaching the default agents' and
// the other pools' nodes), a default Secret there (reaching the pools'
// nodes). A Secret every agent syncs, or none (the image's own pull
// Secret), stays fine. Judged on every DaemonSet's rendered Pod spec.
func TestChartPoolSecretsStayInTheirPools(t *testing.T) {
	envFrom := func(name string) map[string]any {
		return map[string]any{"extraEnv": []any{map[string]any{"name": "X", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": name, "key": "k"}}}}}
	}
	pull := func(names ...string) map[string]any {
		var l []any
		for _, n := range names {
			l = append(l, map[string]any{"name": n})
		}
		return map[string]any{"imagePullSecrets": l}
	}
	for _, tc := range []struct {
		name    string
		vals    map[string]any
		refused []string
	}{
		{"a pool's Secret as imagePullSecrets", readmeValues(nil, pull("pull", "tenant-a-registry")), []string{`imagePullSecrets[1]: "tenant-a-registry" is a source Secret of tenant-a only`, "Node authorizer"}},
		{"a pool's Secret in extraEnv", readmeValues(nil, envFrom("tenant-b-registry")), []string{`extraEnv[0].valueFrom.secretKeyRef: "tenant-b-registry" is a source Secret of tenant-b only`}},
		{"a default Secret in the pools' Pods", readmeValues([]any{"registry-credentials", "default-only"}, pull("default-only")), []string{`"default-only" is a source Secret of the default agents only`}},
		{"a Secret of the pools but not of the default agents", readmeValues([]any{"default-only"}, envFrom("registry-credentials")), []string{`"registry-credentials" is a source Secret of tenant-a, tenant-b only`}},
		{"a Secret of every pool without a default agent", readmeValues([]any{}, pull("registry-credentials")), nil},
		{"a Secret every agent syncs", readmeValues(nil, pull("registry-credentials")), nil},
		{"the image's own pull Secret", readmeValues(nil, pull("nodecreds-pull")), nil},
		{"imagePullSecrets as names", readmeValues(nil, map[string]any{"imagePullSecrets": []any{"tenant-a-registry"}}), []string{"imagePullSecrets[0]: must be {name: SECRET}"}},
		{"extraEnv secretKeyRef without a name", readmeValues(nil, map[string]any{"extraEnv": []any{map[string]any{"name": "X", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"key": "k"}}}}}), []string{"extraEnv[0].valueFrom.secretKeyRef: must name a Secret"}},
		{"extraEnv not a list of variables", readmeValues(nil, map[string]any{"extraEnv": []any{"X=tenant-a-registry"}}), []string{"extraEnv[0]: must be an environment variable"}},
		// A line break in a value written as it is would add a field to
		// the Pod spec: such values are quoted or refused.
		{"a line break in priorityClassName", readmeValues(nil, map[string]any{"priorityClassName": "x\n      imagePullSecrets:\n        - name: tenant-a-registry"}), nil},
		{"a line break in image.tag", readmeValues(nil, map[string]any{"image": map[string]any{"tag": "1\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"image.tag", "is not an image tag"}},
		{"a line break in image.repository", readmeValues(nil, map[string]any{"image": map[string]any{"repository": "r\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"is not an image repository"}},
		{"a line break in image.pullPolicy", readmeValues(nil, map[string]any{"image": map[string]any{"pullPolicy": "Always\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"image.pullPolicy"}},
		{"a line break in a target", readmeValues(nil, map[string]any{"targets": []any{"/var/lib/kubelet/config.json\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"a node path here may hold"}},
		{"a line break in extraArgs", readmeValues(nil, map[string]any{"extraArgs": []any{"--x\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), nil},
		{"a line break in metrics.port", readmeValues(nil, map[string]any{"metrics": map[string]any{"port": "9102\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"metrics.port", "is not a port number"}},
		{"a line break in the plugin folder", readmeValues(nil, map[string]any{"credentialProvider": map[string]any{"enabled": true, "binDir": "/opt/x\n      imagePullSecrets: [{name: tenant-a-registry}]"}}), []string{"a node path here may hold"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := renderChartValues(t, tc.vals, "ns1")
			if tc.refused != nil {
				if err == nil {
					t.Fatal("rendered; want a refusal")
				}
				for _, w := range tc.refused {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the refusal %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sets := all[appsv1.DaemonSet](t, objects(t, out), "DaemonSet")
			if len(sets) < 2 {
				t.Fatalf("%d DaemonSets rendered, want the pools' at least", len(sets))
			}
			sources := map[string][]string{} // Secret → the DaemonSets that sync it
			for name, ds := range sets {
				for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
					if list, ok := strings.CutPrefix(a, "--secret="); ok {
						for _, s := range strings.Split(list, ",") {
							sources[s] = append(sources[s], name)
						}
					}
				}
			}
			for name, ds := range sets {
				for _, ref := range podSecretRefs(ds.Spec.Template.Spec) {
					if by := sources[ref]; len(by) > 0 && !slices.Contains(by, name) {
						t.Errorf("%s's Pods reference %s, a Secret of %v only", name, ref, by)
					}
				}
			}
		})
	}
}

// TestChartServiceAccountNodeRBAC: credentialProvider.serviceAccount renders
// the RBAC that lets the nodes request Pod tokens with the API server's
// audience for nodecreds-sa — the verb NodeRestriction asks RBAC about, on
// the audience string, bound to the group system:nodes — cluster-wide when
// no namespaces are given, a Role and RoleBinding in each one otherwise,
// narrowed to serviceAccountNames when given; nothing by default; a missing
// or malformed audience or list is refused naming the fix. On a real API
// server, both renders apply and RBAC answers a kubelet's question as the
// docs say: allowed for the audience (in the listed namespaces, for the
// listed names), refused for any other audience, namespace or name, and
// for anyone who is not a node.
func TestChartServiceAccountNodeRBAC(t *testing.T) {
	const aud = "https://kubernetes.default.svc.cluster.local"
	const on = "credentialProvider.serviceAccount.enabled=true,credentialProvider.serviceAccount.audience=" + aud
	type grant struct{ kind, namespace string }
	for _, tc := range []struct {
		name   string
		set    string
		grants []grant
		names  []string
	}{
		{name: "default: none", set: ""},
		{name: "audience without enabled: none", set: "credentialProvider.serviceAccount.audience=" + aud},
		{name: "cluster-wide", set: on, grants: []grant{{"ClusterRole", ""}}},
		{name: "per namespace", set: on + ",credentialProvider.serviceAccount.namespaces={tenant-a,tenant-b}", grants: []grant{{"Role", "tenant-a"}, {"Role", "tenant-b"}}},
		{name: "per namespace, some ServiceAccounts", set: on + ",credentialProvider.serviceAccount.namespaces={tenant-a},credentialProvider.serviceAccount.serviceAccountNames={app,builder}",
			grants: []grant{{"Role", "tenant-a"}}, names: []string{"app", "builder"}},
		{name: "with the plugin install", set: on + ",credentialProvider.enabled=true", grants: []grant{{"ClusterRole", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := renderChart(tc.set, "ns1")
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, out)
			var got []grant
			for _, o := range objs {
				if o.GetName() != "nodecreds-sa-token-audience" {
					continue
				}
				switch o.GetKind() {
				case "ClusterRole", "Role":
					got = append(got, grant{o.GetKind(), o.GetNamespace()})
					var rules []rbacv1.PolicyRule
					if o.GetKind() == "Role" {
						rules = all[rbacv1.Role](t, objs, "Role")[o.GetNamespace()+"/"+o.GetName()].Rules
					} else {
						rules = all[rbacv1.ClusterRole](t, objs, "ClusterRole")["/"+o.GetName()].Rules
					}
					want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{aud}, ResourceNames: tc.names, Verbs: []string{"request-serviceaccounts-token-audience"}}}
					if !reflect.DeepEqual(rules, want) {
						t.Errorf("%s %s/%s rules %+v, want %+v", o.GetKind(), o.GetNamespace(), o.GetName(), rules, want)
					}
				case "ClusterRoleBinding", "RoleBinding":
					var b rbacv1.RoleBinding // the same fields as a ClusterRoleBinding's
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &b); err != nil {
						t.Fatal(err)
					}
					wantRef := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: strings.TrimSuffix(o.GetKind(), "Binding"), Name: "nodecreds-sa-token-audience"}
					wantSubjects := []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:nodes"}}
					if b.RoleRef != wantRef || !reflect.DeepEqual(b.Subjects, wantSubjects) {
						t.Errorf("%s %s/%s: roleRef %+v subjects %+v, want %+v to the nodes' group", o.GetKind(), o.GetNamespace(), o.GetName(), b.RoleRef, b.Subjects, wantRef)
					}
				default:
					t.Errorf("unexpected %s %s", o.GetKind(), o.GetName())
				}
			}
			slices.SortFunc(got, func(a, b grant) int { return strings.Compare(a.namespace, b.namespace) })
			if !slices.Equal(got, tc.grants) {
				t.Errorf("node RBAC for the audience: %v, want %v", got, tc.grants)
			}
			// Each grant has its binding, and nothing else in the chart changed.
			bindings := len(all[rbacv1.RoleBinding](t, objs, "RoleBinding")) + len(all[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding"))
			if want := len(tc.grants) + 3; bindings != want { // the agent's Secrets, Node and Events bindings
				t.Errorf("%d bindings, want %d", bindings, want)
			}
		})
	}

	for _, tc := range []struct {
		name, set string
		want      []string
	}{
		{"no audience", "credentialProvider.serviceAccount.enabled=true", []string{"audience is empty", "kubectl create token default", "aud claim"}},
		{"an audience with a blank", on + `\ x`, []string{"audience", "blanks"}},
		{"an audience that is a number", "credentialProvider.serviceAccount.enabled=true,credentialProvider.serviceAccount.audience=5", []string{"audience is empty"}},
		{"a bad namespace", on + ",credentialProvider.serviceAccount.namespaces={Tenant_A}", []string{"namespaces[0]", "not a namespace name"}},
		{"an empty namespace", on + ",credentialProvider.serviceAccount.namespaces={}", []string{"namespaces[0]", "not a namespace name"}},
		{"a namespace twice", on + ",credentialProvider.serviceAccount.namespaces={a,a}", []string{"listed twice"}},
		{"namespaces as a string", on + ",credentialProvider.serviceAccount.namespaces=tenant-a", []string{"namespaces: must be a list"}},
		{"an empty ServiceAccount name", on + ",credentialProvider.serviceAccount.serviceAccountNames={}", []string{"serviceAccountNames[0]", "not a ServiceAccount name"}},
		{"a ServiceAccount twice", on + ",credentialProvider.serviceAccount.serviceAccountNames={app,app}", []string{"listed twice"}},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			_, err := renderChart(tc.set, "ns1")
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

	t.Run("real API server", func(t *testing.T) {
		c := startCluster(t)
		ctx := t.Context()
		for _, ns := range []string{"ns1", "tenant-a", "tenant-b", "tenant-c", "other"} {
			if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		node := authorizationv1.SubjectAccessReviewSpec{User: "system:node:node-1", Groups: []string{"system:nodes", "system:authenticated"}}
		notNode := authorizationv1.SubjectAccessReviewSpec{User: "system:serviceaccount:tenant-a:app", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:tenant-a", "system:authenticated"}}
		allowed := func(who authorizationv1.SubjectAccessReviewSpec, audience, ns, sa string) bool {
			t.Helper()
			who.ResourceAttributes = &authorizationv1.ResourceAttributes{Verb: "request-serviceaccounts-token-audience", Resource: audience, Namespace: ns, Name: sa}
			r, err := c.Admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: who}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return r.Status.Allowed
		}
		type q struct {
			who      authorizationv1.SubjectAccessReviewSpec
			audience string
			ns, sa   string
		}
		for _, variant := range []struct {
			name     string
			set      string
			allow    []q
			refuse   []q
			wantKind string
		}{
			// Before any install: a node may not (what the kubelet's log then says).
			{name: "none", set: "", refuse: []q{{node, aud, "tenant-a", "app"}}},
			{name: "per namespace", set: on + ",credentialProvider.serviceAccount.namespaces={tenant-a,tenant-b},credentialProvider.serviceAccount.serviceAccountNames={app}",
				allow:  []q{{node, aud, "tenant-a", "app"}, {node, aud, "tenant-b", "app"}},
				refuse: []q{{node, aud, "tenant-c", "app"}, {node, aud, "tenant-a", "builder"}, {node, "https://other.example", "tenant-a", "app"}, {notNode, aud, "tenant-a", "app"}}},
			{name: "cluster-wide", set: on,
				allow:  []q{{node, aud, "tenant-a", "app"}, {node, aud, "tenant-c", "builder"}, {node, aud, "other", "default"}},
				refuse: []q{{node, "https://other.example", "tenant-a", "app"}, {node, "", "tenant-a", "app"}, {notNode, aud, "tenant-a", "app"}}},
		} {
			objs := objects(t, renderWithCluster(t, c, variant.set, "ns1"))
			var rbac []*unstructured.Unstructured
			for _, o := range objs {
				if o.GetName() == "nodecreds-sa-token-audience" {
					rbac = append(rbac, o)
				}
			}
			if err := cluster.Apply(ctx, c.RESTConfig, rbac, false); err != nil {
				t.Fatalf("%s: applying the node RBAC: %v", variant.name, err)
			}
			for _, a := range variant.allow {
				// RBAC's authorizer learns new bindings through its informers.
				err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
					return allowed(a.who, a.audience, a.ns, a.sa), nil
				})
				if err != nil {
					t.Errorf("%s: %s may not request tokens for audience %q for %s/%s", variant.name, a.who.User, a.audience, a.ns, a.sa)
				}
			}
			for _, r := range variant.refuse {
				if allowed(r.who, r.audience, r.ns, r.sa) {
					t.Errorf("%s: %s may request tokens for audience %q for %s/%s", variant.name, r.who.User, r.audience, r.ns, r.sa)
				}
			}
		}
	})
}
