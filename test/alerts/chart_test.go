package alerts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// chartTool is scripts/chart (its own Go module, Helm's library), built by
// TestMain: the rules and the dashboard tested here are read out of the
// chart as Helm renders it, so the tests test what ships.
var chartTool string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nodecreds-alerts-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	chartTool = filepath.Join(dir, "chart")
	cmd := exec.Command("go", "build", "-o", chartTool, ".")
	cmd.Dir = filepath.Join(repoRoot(), "scripts", "chart")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the chart tool (scripts/chart):", err)
		return 1
	}
	return m.Run()
}

// repoRoot is two folders up: this module lives in test/alerts.
func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Join(wd, "..", "..")
}

func chartDir() string { return filepath.Join(repoRoot(), "deploy", "helm", "nodecreds") }

// chart runs the chart tool; its error is Helm's message.
func chart(cmd string, args ...string) ([]byte, error) {
	c := exec.Command(chartTool, append([]string{cmd, "-chart", chartDir()}, args...)...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("chart %s: %w", cmd, err)
	}
	return out, nil
}

// object is a rendered Kubernetes object, as YAML decodes it.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec json.RawMessage   `json:"spec"`
	Data map[string]string `json:"data"`
}

// render renders the chart with set (helm --set syntax) in namespace ns
// and returns its objects by kind.
func render(t *testing.T, set, ns string) map[string][]object {
	t.Helper()
	out, err := chart("render", "-namespace", ns, "-set", set)
	if err != nil {
		t.Fatalf("rendering the chart with %q: %v", set, err)
	}
	var files map[string]string
	if err := json.Unmarshal(out, &files); err != nil {
		t.Fatalf("the chart tool's render: %v", err)
	}
	objs := map[string][]object{}
	for name, text := range files {
		for _, doc := range strings.Split(text, "\n---") {
			if !strings.Contains(doc, "kind:") {
				continue
			}
			var o object
			if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
				t.Fatalf("%s does not parse: %v\n%s", name, err, doc)
			}
			objs[o.Kind] = append(objs[o.Kind], o)
		}
	}
	return objs
}

// only returns the one object of kind, failing unless there is exactly one.
func only(t *testing.T, objs map[string][]object, kind string) object {
	t.Helper()
	if n := len(objs[kind]); n != 1 {
		t.Fatalf("%d %s rendered, want 1", n, kind)
	}
	return objs[kind][0]
}

// renderedRules is the PrometheusRule's spec as the chart renders it with
// the rules on, written out as a Prometheus rule file in dir.
func renderedRules(t *testing.T, set, dir string) string {
	t.Helper()
	if set != "" {
		set = "," + set
	}
	rule := only(t, render(t, "prometheusRule.enabled=true"+set, "nodecreds"), "PrometheusRule")
	var spec any
	if err := json.Unmarshal(rule.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ruleFileName)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ruleFileName is the name the test files' rule_files give the chart's rules.
const ruleFileName = "nodecreds-rules.yaml"

// TestChartMonitoringValues: off by default; on, the PrometheusRule and
// the dashboard ConfigMap carry the labels and namespace asked for.
func TestChartMonitoringValues(t *testing.T) {
	def := render(t, "", "ns1")
	for _, kind := range []string{"PrometheusRule", "ConfigMap"} {
		if n := len(def[kind]); n != 0 {
			t.Errorf("%d %s rendered by default", n, kind)
		}
	}

	on := render(t, "prometheusRule.enabled=true,grafanaDashboard.enabled=true", "ns1")
	rule := only(t, on, "PrometheusRule")
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Metadata.Namespace != "ns1" || rule.Metadata.Labels["app.kubernetes.io/name"] != "nodecreds" {
		t.Errorf("PrometheusRule %s in %q labels %v", rule.APIVersion, rule.Metadata.Namespace, rule.Metadata.Labels)
	}
	cm := only(t, on, "ConfigMap")
	if cm.Metadata.Namespace != "ns1" || cm.Metadata.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap in %q labels %v, want ns1 and grafana_dashboard: \"1\"", cm.Metadata.Namespace, cm.Metadata.Labels)
	}
	file, err := os.ReadFile(filepath.Join(chartDir(), "dashboards", "nodecreds.json"))
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["nodecreds.json"] != strings.TrimRight(string(file), "\n") {
		t.Error("the ConfigMap's nodecreds.json is not dashboards/nodecreds.json")
	}

	custom := render(t, "prometheusRule.enabled=true,prometheusRule.labels.release=kube-prometheus-stack"+
		",grafanaDashboard.enabled=true,grafanaDashboard.namespace=grafana,grafanaDashboard.labelKey=dashboards"+
		",grafanaDashboard.labelValue=nodecreds,grafanaDashboard.annotations.grafana_folder=Nodes", "ns1")
	if l := only(t, custom, "PrometheusRule").Metadata.Labels; l["release"] != "kube-prometheus-stack" {
		t.Errorf("prometheusRule.labels not on the PrometheusRule: %v", l)
	}
	cm = only(t, custom, "ConfigMap")
	if cm.Metadata.Namespace != "grafana" || cm.Metadata.Labels["dashboards"] != "nodecreds" || cm.Metadata.Labels["grafana_dashboard"] != "" ||
		cm.Metadata.Annotations["grafana_folder"] != "Nodes" {
		t.Errorf("dashboard ConfigMap in %q labels %v annotations %v", cm.Metadata.Namespace, cm.Metadata.Labels, cm.Metadata.Annotations)
	}
}

// TestChartLintWithMonitoring runs Helm's linter with every monitoring
// value on.
func TestChartLintWithMonitoring(t *testing.T) {
	set := "serviceMonitor.enabled=true,prometheusRule.enabled=true,prometheusRule.labels.release=x,grafanaDashboard.enabled=true,grafanaDashboard.namespace=grafana"
	if _, err := chart("lint", "-set", set); err != nil {
		t.Errorf("helm lint with %q: %v", set, err)
	}
}

// TestServiceMonitorLabelsTheNode: the alerts and the dashboard name the
// node, from the target's Pod.
func TestServiceMonitorLabelsTheNode(t *testing.T) {
	sm := only(t, render(t, "serviceMonitor.enabled=true", "ns1"), "ServiceMonitor")
	var spec struct {
		Endpoints []struct {
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(sm.Spec, &spec); err != nil {
		t.Fatal(err)
	}
	for _, e := range spec.Endpoints {
		for _, r := range e.Relabelings {
			if r.TargetLabel == "node" && len(r.SourceLabels) == 1 && r.SourceLabels[0] == "__meta_kubernetes_pod_node_name" {
				return
			}
		}
	}
	t.Errorf("no relabeling sets node from __meta_kubernetes_pod_node_name: %s", sm.Spec)
}
