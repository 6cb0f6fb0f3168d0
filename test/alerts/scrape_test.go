package alerts

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
)

// monitor is the part of a Prometheus server an end-to-end test needs: it
// scrapes one target, appends the samples of the series kept to a TSDB at
// the scrape's time with the target's labels (with `up`, and staleness
// markers for series gone since the last scrape, as a scrape does), and
// then evaluates the rule files at that time with Prometheus' own engine
// and rule manager, as the runner of ruletest_test.go does for promtool's
// format.
type monitor struct {
	url    string
	target labels.Labels // what service discovery and relabelling give the target
	keep   func(name string) bool
	db     *teststorage.TestStorage
	groups []*rules.Group
	last   map[string]labels.Labels // the series of the last scrape
	client *http.Client
}

type sample struct {
	Labels labels.Labels
	Value  float64
}

// observation is one scrape and the rule evaluation at its time.
type observation struct {
	At   time.Time
	Body string // the target's answer, for the leak check
	// Samples are the samples kept, with the target's labels.
	Samples []sample
	// Alerts are the state of each alerting rule (its most advanced
	// alert) and the labels and annotations of its active alerts.
	States map[string]rules.AlertState
	Active map[string][]string
}

// newMonitor loads the rule files for a target at url, labelled target.
func newMonitor(t *testing.T, url string, target labels.Labels, keep func(string) bool, ruleFiles ...string) *monitor {
	t.Helper()
	m := &monitor{url: url, target: target, keep: keep, db: teststorage.New(t), client: &http.Client{Timeout: 2 * time.Second}}
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples: 100000, Timeout: 10 * time.Second,
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Second.Milliseconds() },
	})
	t.Cleanup(func() { _ = engine.Close() })
	mgr := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(engine, m.db),
		AppendableV2: m.db,
		Context:      t.Context(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       promslog.NewNopLogger(),
	})
	groups, errs := mgr.LoadGroups(time.Second, labels.EmptyLabels(), "", nil, false, ruleFiles...)
	if len(errs) > 0 {
		t.Fatalf("loading %v: %v", ruleFiles, errs)
	}
	for _, g := range groups {
		m.groups = append(m.groups, g)
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				// No earlier state to restore: as promtool, from the start.
				ar.SetRestored(true)
			}
		}
	}
	return m
}

// rule is the alerting rule named name.
func (m *monitor) rule(t *testing.T, name string) *rules.AlertingRule {
	t.Helper()
	for _, g := range m.groups {
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok && ar.Name() == name {
				return ar
			}
		}
	}
	t.Fatalf("no alerting rule %s", name)
	return nil
}

// scrape scrapes the target now and evaluates the rules at that time.
func (m *monitor) scrape(ctx context.Context) (observation, error) {
	o := observation{At: time.Now(), States: map[string]rules.AlertState{}, Active: map[string][]string{}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return o, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return o, fmt.Errorf("scraping %s: %w", m.url, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return o, fmt.Errorf("scraping %s: %w", m.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return o, fmt.Errorf("scraping %s: %s", m.url, resp.Status)
	}
	o.Body = string(body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return o, fmt.Errorf("parsing the scrape of %s: %w", m.url, err)
	}

	ts := o.At.UnixMilli()
	app := m.db.AppenderV2(ctx)
	seen := map[string]labels.Labels{}
	add := func(ls labels.Labels, v float64) error {
		if _, err := app.Append(0, ls, 0, ts, v, nil, nil, storage.AppendV2Options{}); err != nil {
			return fmt.Errorf("appending %s: %w", ls, err)
		}
		seen[ls.String()] = ls
		o.Samples = append(o.Samples, sample{ls, v})
		return nil
	}
	up := labels.NewBuilder(m.target).Set(model.MetricNameLabel, "up").Labels()
	if err := add(up, 1); err != nil {
		return o, err
	}
	for name, f := range families {
		if !m.keep(name) {
			continue
		}
		for _, s := range f.GetMetric() {
			v, ok := sampleValue(f.GetType(), s)
			if !ok {
				return o, fmt.Errorf("%s is a %s: only gauges, counters and untyped series are kept", name, f.GetType())
			}
			b := labels.NewBuilder(m.target).Set(model.MetricNameLabel, name)
			for _, l := range s.GetLabel() {
				if m.target.Has(l.GetName()) {
					// honor_labels: false, as the ServiceMonitor leaves it.
					b.Set("exported_"+l.GetName(), l.GetValue())
					continue
				}
				b.Set(l.GetName(), l.GetValue())
			}
			if err := add(b.Labels(), v); err != nil {
				return o, err
			}
		}
	}
	for key, ls := range m.last {
		if _, ok := seen[key]; !ok {
			if _, err := app.Append(0, ls, 0, ts, math.Float64frombits(value.StaleNaN), nil, nil, storage.AppendV2Options{}); err != nil {
				return o, fmt.Errorf("marking %s stale: %w", ls, err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		return o, err
	}
	m.last = seen

	for _, g := range m.groups {
		g.Eval(ctx, o.At)
		for _, r := range g.Rules() {
			if err := r.LastError(); err != nil {
				return o, fmt.Errorf("rule %s at %s: %w", r.Name(), o.At.Format(time.RFC3339Nano), err)
			}
			ar, ok := r.(*rules.AlertingRule)
			if !ok {
				continue
			}
			o.States[ar.Name()] = rules.StateInactive
			for _, a := range ar.ActiveAlerts() {
				o.States[ar.Name()] = max(o.States[ar.Name()], a.State)
				o.Active[ar.Name()] = append(o.Active[ar.Name()], a.State.String()+" "+a.Labels.String()+" "+a.Annotations.String())
			}
		}
	}
	return o, nil
}

func sampleValue(typ dto.MetricType, s *dto.Metric) (float64, bool) {
	switch typ {
	case dto.MetricType_GAUGE:
		return s.GetGauge().GetValue(), true
	case dto.MetricType_COUNTER:
		return s.GetCounter().GetValue(), true
	case dto.MetricType_UNTYPED:
		return s.GetUntyped().GetValue(), true
	}
	return 0, false
}

// value is the value of the kept series named name whose labels include
// want (false when there is none).
func (o observation) value(name string, want map[string]string) (float64, bool) {
	for _, s := range o.Samples {
		match := s.Labels.Get(model.MetricNameLabel) == name
		for k, w := range want {
			match = match && s.Labels.Get(k) == w
		}
		if match {
			return s.Value, true
		}
	}
	return 0, false
}
