package test

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

	"github.com/nodecreds/nodecreds/test/cluster"
)

// chartTool is the chart command (scripts/chart), built by TestMain. It is
// its own Go module, so Helm is no requirement of this one: the tests run
// it as `make manifests` and `make release` do.
var chartTool string

// buildChartTool builds scripts/chart into out, from its module.
func buildChartTool(out string) error {
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = filepath.Join(cluster.RepoRoot(), "scripts", "chart")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the chart tool (scripts/chart): %w", err)
	}
	return nil
}

func chartDir() string { return filepath.Join(cluster.RepoRoot(), "deploy", "helm", "nodecreds") }

// chart runs the chart tool over the chart; its error is the tool's
// message, as Helm gave it.
func chart(cmd string, args ...string) ([]byte, error) {
	c := exec.Command(chartTool, append([]string{cmd, "-chart", chartDir()}, args...)...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		if msg := strings.TrimSpace(strings.TrimPrefix(stderr.String(), "chart: ")); msg != "" {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("chart %s: %w", cmd, err)
	}
	return out, nil
}

// renderChart renders the chart with set (helm --set syntax) over its
// defaults as release "nodecreds" in namespace ns: template → YAML.
func renderChart(set, ns string) (map[string]string, error) {
	return renderOut(chart("render", "-namespace", ns, "-set", set))
}

// renderChartValues is renderChart with values as a values file gives
// them (helm -f).
func renderChartValues(t *testing.T, vals map[string]any, ns string) (map[string]string, error) {
	t.Helper()
	b, err := json.Marshal(vals) // JSON is YAML: Helm reads it as a values file
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "values-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return renderOut(chart("render", "-namespace", ns, "-values", f.Name()))
}

// renderChartWithCluster is renderChart as `helm install` does it against
// c: the chart's lookup calls read from its API server.
func renderChartWithCluster(set, ns string, c *cluster.Cluster) (map[string]string, error) {
	return renderOut(chart("render", "-namespace", ns, "-set", set, "-kubeconfig", c.Kubeconfig))
}

func renderOut(out []byte, err error) (map[string]string, error) {
	if err != nil {
		return nil, err
	}
	var tmpl map[string]string
	if err := json.Unmarshal(out, &tmpl); err != nil {
		return nil, fmt.Errorf("the chart tool's render: %w", err)
	}
	return tmpl, nil
}

// chartManifest is the all-in-one manifest (`make manifests`) with set.
func chartManifest(set string) (string, error) {
	out, err := chart("manifest", "-set", set)
	return string(out), err
}

// lintChart runs Helm's linter over the chart with set.
func lintChart(set string) error {
	_, err := chart("lint", "-set", set)
	return err
}
