package alerts

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

// grafanaVariables are what Grafana substitutes in a query before
// Prometheus sees it, with values of the right kind.
var grafanaVariables = strings.NewReplacer(
	"$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "${datasource}", "x",
)

// TestDashboard decodes the dashboard strictly with Grafana's schema
// (grafana-foundation-sdk: no unknown field, every required one, each
// panel's options and targets by its plugin), and checks that each panel
// is of a known type, queries Prometheus with an expression Prometheus
// parses, and selects only series the agent exposes.
func TestDashboard(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile(filepath.Join(chartDir(), "dashboards", "nodecreds.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The classic JSON model is what the sidecar provisions and every Grafana
	// imports; the SDK marks it deprecated in favour of the v2 resource.
	var d dashboard.Dashboard //nolint:staticcheck // the classic model is the one shipped
	if err := buildErrors(d.UnmarshalJSONStrict(raw)); err != nil {
		t.Errorf("dashboards/nodecreds.json against Grafana's schema: %v", err)
	}
	if err := buildErrors(d.Validate()); err != nil {
		t.Fatalf("dashboards/nodecreds.json: %v", err)
	}
	if d.Uid == nil || *d.Uid == "" || d.Title == nil || *d.Title == "" {
		t.Error("the dashboard has no uid or title")
	}
	// v0.0.22's PanelOrRowPanel decoder reports a panel's errors but drops
	// the panel itself (it takes the empty error list its Panel decoder
	// returns for a failure), so each panel is decoded again here.
	var raws struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &raws); err != nil {
		t.Fatal(err)
	}
	if len(raws.Panels) == 0 {
		t.Fatal("the dashboard has no panel")
	}
	known := agentSeries(t)
	seen := map[string]bool{}
	for i, rawPanel := range raws.Panels {
		panel := &dashboard.Panel{}
		if err := buildErrors(panel.UnmarshalJSONStrict(rawPanel)); err != nil {
			t.Errorf("panel %d: %v", i, err)
			continue
		}
		title := "panel " + panel.Type
		if panel.Title != nil {
			title = *panel.Title
		}
		if _, ok := cog.ConfigForPanelcfgVariant(panel.Type); !ok {
			t.Errorf("%s: panel type %q is none of Grafana's", title, panel.Type)
		}
		// Targets are decoded here too: the SDK drops those it decodes
		// (as panels above).
		var targets struct {
			Targets []json.RawMessage `json:"targets"`
		}
		if err := json.Unmarshal(rawPanel, &targets); err != nil {
			t.Fatal(err)
		}
		if len(targets.Targets) == 0 {
			t.Errorf("%s: no query", title)
		}
		for j, rawTarget := range targets.Targets {
			q := &prometheus.Dataquery{}
			if err := buildErrors(q.UnmarshalJSONStrict(rawTarget)); err != nil {
				t.Errorf("%s: query %d: %v", title, j, err)
				continue
			}
			if q.Datasource == nil || q.Datasource.Type == nil || *q.Datasource.Type != "prometheus" {
				t.Errorf("%s: query %d is not Prometheus'", title, j)
			}
			checkNames(t, title, grafanaVariables.Replace(q.Expr), known)
			for _, n := range mustNames(q.Expr) {
				seen[n] = true
			}
		}
	}
	// The panels the issue asks for.
	for _, want := range []string{
		"nodecreds_source_version_info", "nodecreds_rotation_seconds_bucket", "nodecreds_sync_duration_seconds_bucket",
		"nodecreds_credentials_expiry_timestamp_seconds", "nodecreds_credentials_rejected", "nodecreds_logins_total",
		"nodecreds_writes_total", "nodecreds_drift_corrections_total",
	} {
		if !seen[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}

// buildErrors is err, or nil for an empty list of the SDK's errors: its
// generated decoders return their (nil) list as an error.
func buildErrors(err error) error {
	var list cog.BuildErrors
	if errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

func mustNames(expr string) []string {
	names, _ := seriesNames(grafanaVariables.Replace(expr))
	return names
}
