package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"
)

// This file runs rule unit tests in promtool's format (rule_files, tests,
// input_series, alert_rule_test: Prometheus' docs/configuration/
// unit_testing_rules.md) with Prometheus' own packages, as
// cmd/promtool/unittest.go does, without a promtool binary: promqltest's
// lazy loader holds the input series, rules.Manager loads the rule files
// and each group is evaluated at every step. Fields this runner does not
// implement (promql_expr_test, group_eval_order, ...) are refused, not
// ignored.

// ruleTestFile is one test file.
type ruleTestFile struct {
	RuleFiles          []string    `json:"rule_files"`
	EvaluationInterval string      `json:"evaluation_interval"`
	Tests              []testGroup `json:"tests"`
}

// testGroup is a set of input series and the alerts expected from them.
type testGroup struct {
	Name           string          `json:"name"`
	Interval       string          `json:"interval"`
	StartTimestamp json.RawMessage `json:"start_timestamp"`
	InputSeries    []inputSeries   `json:"input_series"`
	AlertRuleTests []alertTestCase `json:"alert_rule_test"`
}

type inputSeries struct {
	Series string `json:"series"`
	Values string `json:"values"`
}

type alertTestCase struct {
	EvalTime  string     `json:"eval_time"`
	Alertname string     `json:"alertname"`
	ExpAlerts []expAlert `json:"exp_alerts"`
}

type expAlert struct {
	ExpLabels      map[string]string `json:"exp_labels"`
	ExpAnnotations map[string]string `json:"exp_annotations"`
}

// runRuleTestFile runs the test file at path; its rule_files are read
// from ruleDir. Every failed expectation is an error.
func runRuleTestFile(ctx context.Context, path, ruleDir string) []error {
	b, err := os.ReadFile(path)
	if err != nil {
		return []error{err}
	}
	var f ruleTestFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return []error{fmt.Errorf("%s: %w", path, err)}
	}
	evalInterval, err := durationOr(f.EvaluationInterval, time.Minute)
	if err != nil {
		return []error{fmt.Errorf("evaluation_interval: %w", err)}
	}
	if len(f.RuleFiles) == 0 || len(f.Tests) == 0 {
		return []error{fmt.Errorf("%s: no rule_files or no tests", path)}
	}
	files := make([]string, len(f.RuleFiles))
	for i, rf := range f.RuleFiles {
		files[i] = filepath.Join(ruleDir, rf)
	}
	var errs []error
	for i, tg := range f.Tests {
		for _, err := range tg.run(ctx, evalInterval, files) {
			errs = append(errs, fmt.Errorf("test %d (%s): %w", i, tg.Name, err))
		}
	}
	return errs
}

func durationOr(s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := model.ParseDuration(s)
	return time.Duration(d), err
}

// start is start_timestamp: Unix seconds or RFC 3339, as promtool takes it;
// the Unix epoch when not given.
func (tg *testGroup) start() (time.Time, error) {
	if len(tg.StartTimestamp) == 0 {
		return time.Unix(0, 0).UTC(), nil
	}
	s := strings.Trim(string(tg.StartTimestamp), `"`)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*float64(time.Second))).UTC(), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// loadCommand is the input series in promqltest's `load` syntax.
func (tg *testGroup) loadCommand(interval time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "load %s\n", model.Duration(interval))
	for _, s := range tg.InputSeries {
		fmt.Fprintf(&b, "  %s %s\n", s.Series, s.Values)
	}
	return b.String()
}

// run evaluates the rule files over the group's series and compares the
// firing alerts with the expected ones at each eval_time.
func (tg *testGroup) run(ctx context.Context, evalInterval time.Duration, files []string) (errs []error) {
	interval, err := durationOr(tg.Interval, evalInterval)
	if err != nil {
		return []error{fmt.Errorf("interval: %w", err)}
	}
	mint, err := tg.start()
	if err != nil {
		return []error{fmt.Errorf("start_timestamp: %w", err)}
	}
	cases, maxEval, err := tg.casesByTime()
	if err != nil {
		return []error{err}
	}
	ll, err := promqltest.NewLazyLoader(tg.loadCommand(interval), promqltest.LazyLoaderOpts{
		EnableAtModifier: true, EnableNegativeOffset: true, StartTime: mint,
	})
	if err != nil {
		return []error{fmt.Errorf("input_series: %w", err)}
	}
	defer func() {
		if err := ll.Close(); err != nil {
			errs = append(errs, err)
		}
	}()
	ll.SubqueryInterval = evalInterval
	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(ll.QueryEngine(), ll.Storage()),
		AppendableV2: ll.Storage(),
		Context:      ctx,
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       promslog.NewNopLogger(),
	})
	groupMap, loadErrs := m.LoadGroups(interval, labels.EmptyLabels(), "", nil, false, files...)
	if len(loadErrs) > 0 {
		return loadErrs
	}
	groups := make([]*rules.Group, 0, len(groupMap))
	for _, g := range groupMap {
		groups = append(groups, g)
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				// As promtool: the ALERTS series exist from the first evaluation.
				ar.SetRestored(true)
			}
		}
	}
	slices.SortFunc(groups, func(a, b *rules.Group) int { return strings.Compare(a.File()+a.Name(), b.File()+b.Name()) })

	times := slices.Sorted(func(yield func(time.Duration) bool) {
		for d := range cases {
			if !yield(d) {
				return
			}
		}
	})
	next := 0
	for ts := mint; !ts.After(mint.Add(maxEval)); ts = ts.Add(evalInterval) {
		var evalErrs []error
		ll.WithSamplesTill(ts, func(err error) {
			if err != nil {
				evalErrs = append(evalErrs, err)
				return
			}
			for _, g := range groups {
				g.Eval(ll.Context(), ts)
				for _, r := range g.Rules() {
					if r.LastError() != nil {
						evalErrs = append(evalErrs, fmt.Errorf("rule %s at %s: %w", r.Name(), ts.Sub(mint), r.LastError()))
					}
				}
			}
		})
		if len(evalErrs) > 0 {
			return append(errs, evalErrs...)
		}
		// An eval_time between two evaluations is checked against the
		// earlier one, as promtool does.
		for next < len(times) && times[next] < ts.Add(evalInterval).Sub(mint) {
			for _, c := range cases[times[next]] {
				if err := c.check(groups); err != nil {
					errs = append(errs, fmt.Errorf("eval_time %s: %w", model.Duration(times[next]), err))
				}
			}
			next++
		}
	}
	return errs
}

// casesByTime groups the alert tests by eval_time and returns the last one.
func (tg *testGroup) casesByTime() (map[time.Duration][]alertTestCase, time.Duration, error) {
	cases := map[time.Duration][]alertTestCase{}
	var maxEval time.Duration
	for _, c := range tg.AlertRuleTests {
		if c.Alertname == "" {
			return nil, 0, fmt.Errorf("an alert_rule_test at eval_time %s names no alertname", c.EvalTime)
		}
		d, err := model.ParseDuration(c.EvalTime)
		if err != nil {
			return nil, 0, fmt.Errorf("eval_time: %w", err)
		}
		cases[time.Duration(d)] = append(cases[time.Duration(d)], c)
		maxEval = max(maxEval, time.Duration(d))
	}
	return cases, maxEval, nil
}

// check compares the firing alerts of c.Alertname (labels and annotations,
// exactly, as promtool does) with the expected ones.
func (c alertTestCase) check(groups []*rules.Group) error {
	var got, want []string
	found := false
	for _, g := range groups {
		for _, r := range g.Rules() {
			ar, ok := r.(*rules.AlertingRule)
			if !ok || ar.Name() != c.Alertname {
				continue
			}
			found = true
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					got = append(got, a.Labels.String()+" "+a.Annotations.String())
				}
			}
		}
	}
	if !found {
		return fmt.Errorf("no alerting rule %s", c.Alertname)
	}
	for _, e := range c.ExpAlerts {
		l := map[string]string{labels.AlertName: c.Alertname}
		for k, v := range e.ExpLabels {
			l[k] = v
		}
		want = append(want, labels.FromMap(l).String()+" "+labels.FromMap(e.ExpAnnotations).String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return errors.New(c.Alertname + ":\n  want " + strings.Join(want, "\n       ") + "\n  got  " + strings.Join(got, "\n       "))
	}
	return nil
}
