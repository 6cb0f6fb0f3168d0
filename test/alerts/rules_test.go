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

// TestAlertTunables: the chart's values reach the rules. Each case renders
// the chart with one value changed and runs a test in promtool's format
// that the defaults would fail.
func TestAlertTunables(t *testing.T) {
	for _, tc := range []struct{ name, set, test string }{
		{"expiringMinSeconds: a 30-minute floor", "prometheusRule.expiringMinSeconds=1800", `
    input_series:
      - series: 'nodecreds_credentials_expiry_timestamp_seconds{secret="s",registry="r"}'
        values: '3600x40'
      - series: 'nodecreds_credentials_lifetime_seconds{secret="s",registry="r"}'
        values: '3600x40'
    alert_rule_test:
      - eval_time: 29m
        alertname: NodecredsCredentialsExpiring
      - eval_time: 31m
        alertname: NodecredsCredentialsExpiring
        exp_alerts:
          - exp_labels: {severity: warning, secret: s, registry: r}
            exp_annotations:
              summary: The credentials of s for r expire in 29m 0s
              description: 'Secret s (nodecreds.io/expires-at) says its credentials for r expire in 29m 0s, and nothing has renewed it: whatever refreshes it (an ExternalSecret, a job) may have stopped.'
              runbook_url: https://github.com/nodecreds/nodecreds/blob/main/docs/alerts.md#nodecredscredentialsexpiring`},
		{"expiringShare: 50 %", "prometheusRule.expiringShare=0.5", `
    input_series:
      - series: 'nodecreds_credentials_expiry_timestamp_seconds{secret="s",registry="r"}'
        values: '7200x70'
      - series: 'nodecreds_credentials_lifetime_seconds{secret="s",registry="r"}'
        values: '7200x70'
    alert_rule_test:
      - eval_time: 59m
        alertname: NodecredsCredentialsExpiring
      - eval_time: 61m
        alertname: NodecredsCredentialsExpiring
        exp_alerts:
          - exp_labels: {severity: warning, secret: s, registry: r}
            exp_annotations:
              summary: The credentials of s for r expire in 59m 0s
              description: 'Secret s (nodecreds.io/expires-at) says its credentials for r expire in 59m 0s, and nothing has renewed it: whatever refreshes it (an ExternalSecret, a job) may have stopped.'
              runbook_url: https://github.com/nodecreds/nodecreds/blob/main/docs/alerts.md#nodecredscredentialsexpiring`},
		{"agentSelector and agentDownFor", "prometheusRule.agentSelector=job=\"agents\"\\,team=\"x\",prometheusRule.agentDownFor=2m", `
    input_series:
      - series: 'up{job="agents",team="x",instance="i",pod="p",node="n"}'
        values: '0x10'
      - series: 'up{job="nodecreds-metrics",instance="j",pod="q",node="m"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 2m
        alertname: NodecredsAgentDown
        exp_alerts:
          - exp_labels: {severity: warning, job: agents, team: x, instance: i, pod: p, node: "n"}
            exp_annotations:
              summary: The nodecreds agent on n is not reporting
              description: 'Prometheus cannot scrape p on node n (i): its node gets no rotation while it is down.'
              runbook_url: https://github.com/nodecreds/nodecreds/blob/main/docs/alerts.md#nodecredsagentdown`},
		{"laggingFor and runbookURL", "prometheusRule.laggingFor=3m,prometheusRule.runbookURL=https://wiki.example.test/nodecreds/", `
    input_series:
      - series: 'nodecreds_source_version_info{source="s",node="a",version="1"}'
        values: '1x10'
      - series: 'nodecreds_source_version_info{source="s",node="b",version="2"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 2m
        alertname: NodecredsRevisionLagging
      - eval_time: 3m
        alertname: NodecredsRevisionLagging
        exp_alerts:
          - exp_labels: {severity: warning, source: s, version: "1"}
            exp_annotations:
              summary: Nodes disagree on the version of s
              description: '1 node(s) apply version 1 of s while others apply another one, and have for 3m.'
              runbook_url: https://wiki.example.test/nodecreds#nodecredsrevisionlagging
          - exp_labels: {severity: warning, source: s, version: "2"}
            exp_annotations:
              summary: Nodes disagree on the version of s
              description: '1 node(s) apply version 2 of s while others apply another one, and have for 3m.'
              runbook_url: https://wiki.example.test/nodecreds#nodecredsrevisionlagging`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			renderedRules(t, tc.set, dir)
			path := filepath.Join(dir, "test.yaml")
			test := "rule_files: [" + ruleFileName + "]\ntests:\n  - interval: 1m" + tc.test + "\n"
			if err := os.WriteFile(path, []byte(test), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, err := range runRuleTestFile(t.Context(), path, dir) {
				t.Error(err)
			}
		})
	}
}
