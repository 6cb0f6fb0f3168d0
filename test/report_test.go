package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// TestRotationIsOneWrite: with the manifest's RBAC and admission policy in
// force, an agent's report of a routine rotation is one request to the API
// server — a PATCH of nodes/status carrying the annotations and, when it
// changed, the condition — counted by the API server itself
// (apiserver_request_total). The API server keeps the annotations sent
// there, the policy admits the field ownership that follows (the agent's
// status entry owns nodecreds' annotations, taken over from the entry of
// an agent that annotated by a PATCH of the Node), and `status --wait`
// follows each step. CredentialsApplied is recorded when the condition
// turns True: at the first sync and on recovery, not per revision.
func TestRotationIsOneWrite(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	applyManifest(t, c)
	const node, one, two = "node-w", "one.example.test", "two.example.test"
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, registrySecret(dockerconfigjson(t, map[string]string{one: "u:write-canary-0"})), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createNode(t, c.Admin, node)
	kubeconfig, agentClient, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", node)
	if err != nil {
		t.Fatal(err)
	}
	nodes := agentClient.CoreV1().Nodes()
	// The API server loads a new policy in the background.
	testsupport.Eventually(t, 20*time.Second, "the nodecreds-agents policy is in force", func() bool {
		_, err := nodes.Patch(ctx, node, types.MergePatchType, []byte(`{"metadata":{"labels":{"example.com/probe":"x"}}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsForbidden(err)
	})
	// What an agent before this change left: its annotations, owned by its
	// entry of the Node itself.
	if _, err := nodes.Patch(ctx, node, types.MergePatchType, []byte(`{"metadata":{"annotations":{"nodecreds.io/revision":"r0","nodecreds.io/synced-at":"2026-11-30T12:00:00Z","nodecreds.io/sources":"x"}}}`), metav1.PatchOptions{FieldManager: "nodecreds"}); err != nil {
		t.Fatalf("annotating as an earlier agent did: %v", err)
	}

	applied := func() int { return nodeEvents(t, c.Admin, node, "CredentialsApplied") }
	before := nodeWrites(t, c)
	root := t.TempDir()
	startAgent(t, "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", node, "--host-root", root, "--metrics-addr", "0")

	for i, step := range []struct {
		what    string
		secret  map[string]string // nil: a Secret that does not validate
		ok      bool
		message string // in the condition's
		writes  map[string]float64
		applied int // CredentialsApplied Events so far
	}{
		{"first sync (an earlier agent's annotations on the Node)", map[string]string{one: "u:write-canary-0"}, true, "1 registry entries",
			map[string]float64{"PATCH nodes/status": 1, "POST events": 1}, 1},
		{"routine rotation", map[string]string{one: "u:write-canary-1"}, true, "1 registry entries",
			map[string]float64{"PATCH nodes/status": 1}, 1},
		{"rotation that changes the condition's message too", map[string]string{one: "u:write-canary-2", two: "u:write-canary-3"}, true, "2 registry entries",
			map[string]float64{"PATCH nodes/status": 1}, 1},
		{"a Secret that does not validate", nil, false, `registry "` + one + `"`,
			map[string]float64{"PATCH nodes/status": 1, "POST events": 1}, 1},
		{"recovery", map[string]string{one: "u:write-canary-4", two: "u:write-canary-3"}, true, "2 registry entries",
			map[string]float64{"PATCH nodes/status": 1, "POST events": 1}, 2},
	} {
		if i > 0 {
			data := []byte(`{"auths":{"` + one + `":{"auth":"` + testsupport.B64("no-colon") + `"}}}`)
			if step.secret != nil {
				data = dockerconfigjson(t, step.secret)
			}
			updateSecret(t, c.Admin, data)
		}
		var st statusOut
		testsupport.Eventually(t, 30*time.Second, step.what+": on the Node", func() bool {
			n := getNode(t, c.Admin, node)
			cond := condition(n)
			if cond == nil || (cond.Status == corev1.ConditionTrue) != step.ok || !strings.Contains(cond.Message, step.message) {
				return false
			}
			st, _, _ = status(t, c)
			return !step.ok || n.Annotations["nodecreds.io/revision"] == st.Revision
		})
		if step.ok {
			if st, stderr, code := status(t, c, "--wait", "--timeout", "20s"); code != 0 || !st.InSync {
				t.Errorf("%s: status --wait exit %d, %+v, %s", step.what, code, st, stderr)
			}
		}
		// The API server counts a request when it has answered it, just
		// after the Node shows it: wait for the count, then compare.
		var got map[string]float64
		if err := testsupport.WaitFor(ctx, 10*time.Second, 100*time.Millisecond, step.what+": the writes counted", func() bool {
			got = diffWrites(nodeWrites(t, c), before)
			return maps.Equal(got, step.writes)
		}); err != nil {
			t.Errorf("%s: the agent's writes %v, want %v", step.what, got, step.writes)
		}
		before = nodeWrites(t, c)
		if n := applied(); n != step.applied {
			t.Errorf("%s: %d CredentialsApplied Events, want %d", step.what, n, step.applied)
		}
	}

	// The annotations went by nodes/status only (no PATCH of the Node was
	// counted) and are on the Node, owned by the agent's status entry; the
	// earlier agent's entry of the Node keeps none of them.
	n := getNode(t, c.Admin, node)
	var ownsAnnotations bool
	for _, e := range n.ManagedFields {
		if e.Manager != "nodecreds" {
			continue
		}
		f := e.FieldsV1.GetRawString()
		t.Logf("managedFields: manager %s, subresource %q: %s", e.Manager, e.Subresource, f)
		switch e.Subresource {
		case "status":
			ownsAnnotations = strings.Contains(f, `"f:nodecreds.io/revision":{}`) && strings.Contains(f, `"f:nodecreds.io/synced-at":{}`) &&
				strings.Contains(f, `"f:nodecreds.io/sources":{}`) && strings.Contains(f, `RegistryCredentialsSynced`)
		default:
			if strings.Contains(f, "nodecreds.io/") {
				t.Errorf("the agent's entry of the Node itself still owns annotations: %s", f)
			}
		}
	}
	if !ownsAnnotations {
		raw, _ := json.Marshal(n.ManagedFields)
		t.Errorf("no entry of manager nodecreds, subresource status, owns nodecreds' annotations and condition: %s", raw)
	}
}

var requestTotal = regexp.MustCompile(`^apiserver_request_total\{(.*)\} ([0-9.eE+-]+)$`)
var metricLabel = regexp.MustCompile(`([a-z_]+)="([^"]*)"`)

// nodeWrites are the API server's counts of requests that change Nodes or
// create Events, by verb and resource[/subresource], from its own metrics.
// Refused requests count too (with their code, so a diff shows them).
func nodeWrites(t *testing.T, c *cluster.Cluster) map[string]float64 {
	t.Helper()
	raw, err := c.Admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("reading the API server's metrics: %v", err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := requestTotal.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		l := map[string]string{}
		for _, kv := range metricLabel.FindAllStringSubmatch(m[1], -1) {
			l[kv[1]] = kv[2]
		}
		if l["resource"] != "nodes" && l["resource"] != "events" || l["dry_run"] != "" ||
			l["verb"] == "GET" || l["verb"] == "LIST" || l["verb"] == "WATCH" {
			continue
		}
		key := l["verb"] + " " + l["resource"]
		if l["subresource"] != "" {
			key += "/" + l["subresource"]
		}
		if !strings.HasPrefix(l["code"], "2") {
			key += " " + l["code"]
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("apiserver_request_total{%s}: %v", m[1], err)
		}
		out[key] += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func diffWrites(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
