package alerts

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// alertRule is what these tests read of a rule.
type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// chartAlerts is every alerting rule in the rule file at path.
func chartAlerts(t *testing.T, path string) []alertRule {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var out []alertRule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("the chart's PrometheusRule has no alert")
	}
	return out
}

// ruleTests is every test file in testdata.
func ruleTests(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule test in testdata (%v)", err)
	}
	return files
}

// TestAlertRules runs every test file in testdata (promtool's format)
// over the chart's rules, rendered with its defaults.
func TestAlertRules(t *testing.T) {
	dir := t.TempDir()
	renderedRules(t, "", dir)
	for _, f := range ruleTests(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			for _, err := range runRuleTestFile(t.Context(), f, dir) {
				t.Error(err)
			}
		})
	}
}

// TestRunnerFailsWhatItShould: the runner is no rubber stamp; an alert
// expected but not firing, one firing but not expected, and a wrong
// annotation each fail.
func TestRunnerFailsWhatItShould(t *testing.T) {
	dir := t.TempDir()
	renderedRules(t, "", dir)
	base := `
rule_files: [` + ruleFileName + `]
tests:
  - interval: 1m
    input_series:
      - series: 'nodecreds_watch_polling{namespace="nodecreds",pod="p",node="n",watch="targets"}'
        values: '1x30'
    alert_rule_test:
`
	for name, tc := range map[string]string{
		"expected, not firing": `
      - eval_time: 5m
        alertname: NodecredsWatchPolling
        exp_alerts: [{exp_labels: {severity: info, namespace: nodecreds, pod: p, node: n, watch: targets}}]`,
		"firing, not expected": `
      - eval_time: 20m
        alertname: NodecredsWatchPolling`,
		"no such alert": `
      - eval_time: 20m
        alertname: NodecredsNoSuchAlert`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "test.yaml")
			if err := os.WriteFile(path, []byte(base+strings.TrimPrefix(tc, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if errs := runRuleTestFile(t.Context(), path, dir); len(errs) == 0 {
				t.Error("passed")
			}
		})
	}
}

// TestEveryAlertIsTested: each alert of the chart is expected to fire in
// some test and expected silent in another, carries a severity, a summary,
// a description and a runbook_url whose section docs/alerts.md has, and
// selects only series the agent (or Prometheus' scrape) has.
func TestEveryAlertIsTested(t *testing.T) {
	fires, silent := testedAlerts(t)
	doc, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "alerts.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\S+)$`).FindAllStringSubmatch(string(doc), -1) {
		sections["#"+strings.ToLower(m[1])] = true
	}
	known := agentSeries(t)
	for _, r := range chartAlerts(t, renderedRules(t, "", t.TempDir())) {
		if !fires[r.Alert] || !silent[r.Alert] {
			t.Errorf("%s: tested firing %v, tested silent %v; want both", r.Alert, fires[r.Alert], silent[r.Alert])
		}
		if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: severity %q, summary %q, description %q", r.Alert, r.Labels["severity"], r.Annotations["summary"], r.Annotations["description"])
		}
		url := r.Annotations["runbook_url"]
		if _, anchor, _ := strings.Cut(url, "#"); !strings.HasSuffix(url, "/docs/alerts.md#"+anchor) || !sections["#"+anchor] ||
			anchor != strings.ToLower(r.Alert) {
			t.Errorf("%s: runbook_url %q is no section of docs/alerts.md named after it", r.Alert, url)
		}
		checkNames(t, r.Alert, r.Expr, known)
	}
}

// testedAlerts reads the test files: the alerts some test expects to
// fire, and those some test expects silent.
func testedAlerts(t *testing.T) (fires, silent map[string]bool) {
	t.Helper()
	fires, silent = map[string]bool{}, map[string]bool{}
	for _, path := range ruleTests(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var f ruleTestFile
		if err := yaml.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		for _, tg := range f.Tests {
			for _, c := range tg.AlertRuleTests {
				if len(c.ExpAlerts) > 0 {
					fires[c.Alertname] = true
				} else {
					silent[c.Alertname] = true
				}
			}
		}
	}
	return fires, silent
}
