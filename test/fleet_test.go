package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodecreds/nodecreds/test/cluster"
)

// fleetResults is the part of scripts/fleet's results this test reads.
type fleetResults struct {
	Agents         int
	APIConnections int
	Cold           fleetPhase
	Rotations      []fleetPhase
	Restart        struct {
		Phase       fleetPhase
		ProbeDuring struct{ Requests, Throttled, Failed int }
	}
	Summary struct {
		KubeletEventsPerNode float64
		RequestsPerNode      map[string]float64
	}
}

type fleetPhase struct {
	Name       string
	Files      []float64
	Reported   []float64
	Dispatched map[string]float64
}

// TestFleet is `make fleet` at 50 hollow nodes (make fleet runs the same
// code at 1,000 and more, docs/scale.md): real agents, each with its own
// connection, token, Node and root, and a kubelet's watch of each Node,
// against a local API server with priority and fairness on and the chart's
// FlowSchema installed. Every node gets every rotation, in its file and on
// its Node, at one write to the API server per node per rotation; a restart
// of every agent at once with a rotation pending lands too, while another
// workload's requests are all answered.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no control plane")
	}
	const agents = 50
	bin := filepath.Join(t.TempDir(), "fleet")
	build := exec.Command("go", "build", "-o", bin, "./scripts/fleet")
	build.Dir = cluster.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building scripts/fleet: %v\n%s", err, out)
	}
	out := t.TempDir()
	run := exec.CommandContext(t.Context(), bin, "-agents", "50", "-rotations", "3", "-restart", "-flowcontrol",
		"-chart", chartTool, "-label", "test", "-out", out)
	if b, err := run.CombinedOutput(); err != nil {
		t.Fatalf("fleet: %v\n%s", err, b)
	} else {
		t.Logf("fleet:\n%s", b)
	}
	b, err := os.ReadFile(filepath.Join(out, "test-00050-flowcontrol-restart.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r fleetResults
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Rotations) != 3 {
		t.Fatalf("%d rotations measured, want 3", len(r.Rotations))
	}
	for _, p := range append([]fleetPhase{r.Cold, r.Restart.Phase}, r.Rotations...) {
		if len(p.Files) != agents || len(p.Reported) != agents {
			t.Errorf("%s: %d files and %d Nodes seen updated, want %d each", p.Name, len(p.Files), len(p.Reported), agents)
		}
	}
	// An agent and a kubelet per node, each on a connection of its own.
	if r.APIConnections < 2*agents {
		t.Errorf("%d connections to the API server, want at least %d (one per hollow agent and one per hollow kubelet)", r.APIConnections, 2*agents)
	}
	if r.Summary.KubeletEventsPerNode < 1 {
		t.Errorf("the hollow kubelets saw %.2f Node events per node per rotation, want at least 1 (the report)", r.Summary.KubeletEventsPerNode)
	}
	// One write per node per rotation: the report.
	var writes float64
	for k, v := range r.Summary.RequestsPerNode {
		if strings.HasSuffix(k, " nodes") || strings.HasSuffix(k, " nodes/status") || strings.HasSuffix(k, " events") {
			if !strings.HasPrefix(k, "GET ") && !strings.HasPrefix(k, "LIST ") && !strings.HasPrefix(k, "WATCH ") {
				writes += v
			}
		}
	}
	if writes < 0.99 || writes > 1.01 {
		t.Errorf("%.2f writes per node per rotation (%v), want 1", writes, r.Summary.RequestsPerNode)
	}
	if r.Restart.Phase.Dispatched["nodecreds"] < agents {
		t.Errorf("restart: %.0f requests in the priority level nodecreds (the chart's FlowSchema), want at least one per agent: %v", r.Restart.Phase.Dispatched["nodecreds"], r.Restart.Phase.Dispatched)
	}
	if d := r.Restart.ProbeDuring; d.Requests == 0 || d.Failed != 0 || d.Throttled != 0 {
		t.Errorf("restart: the other workload's client sent %d requests, %d throttled, %d failed; want some, none refused", d.Requests, d.Throttled, d.Failed)
	}
}
