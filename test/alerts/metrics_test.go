package alerts

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/nodecreds/nodecreds/internal/metrics"
)

// agentSeries is every series name the agent exposes, from its own
// registry: each labelled metric of metrics.Metrics gets a child so that
// it is gathered, and a histogram's name stands for its _bucket, _sum and
// _count.
func agentSeries(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := reflect.ValueOf(metrics.NewMetrics(reg)).Elem()
	for i := range m.NumField() {
		get := m.Field(i).MethodByName("GetMetricWithLabelValues")
		if !get.IsValid() {
			continue // not labelled: always gathered
		}
		if err := withSomeLabels(get); err != nil {
			t.Fatalf("metrics.Metrics.%s: %v", m.Type().Field(i).Name, err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("the agent's registry gathers no metric")
	}
	return names
}

// withSomeLabels creates a child of a metric vector with as many label
// values as it takes (a wrong count is an error, not a panic).
func withSomeLabels(get reflect.Value) error {
	for n := 0; n <= 8; n++ {
		args := make([]reflect.Value, n)
		for i := range args {
			args[i] = reflect.ValueOf(fmt.Sprint("v", i))
		}
		if out := get.Call(args); out[1].IsNil() {
			return nil
		}
	}
	return fmt.Errorf("takes more than 8 labels")
}

// seriesNames is every metric name a PromQL expression selects.
func seriesNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == "__name__" {
					name = m.Value
				}
			}
			names = append(names, name)
		}
		return nil
	})
	if len(names) == 0 {
		return nil, fmt.Errorf("%q selects no series", expr)
	}
	return names, nil
}

// scrapeSeries are the series Prometheus itself adds to every target.
var scrapeSeries = map[string]bool{"up": true}

// checkNames reports each series expr selects that the agent does not expose.
func checkNames(t *testing.T, what, expr string, known map[string]bool) {
	t.Helper()
	names, err := seriesNames(expr)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	for _, n := range names {
		if !known[n] && !scrapeSeries[n] {
			t.Errorf("%s selects %s, which internal/metrics does not define", what, n)
		}
	}
}
