package test

import (
	"context"
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
	"k8s.io/apimachinery/pkg/runtime"
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
