package rollout

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"

	"github.com/nodecreds/nodecreds/internal/kube/kubetest"
)

func node(name, rev string, status corev1.ConditionStatus) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
	if rev != "" {
		n.Annotations[nodestatus.AnnotationRevision] = rev
	}
	if status != "" {
		n.Status.Conditions = []corev1.NodeCondition{{Type: nodestatus.ConditionType, Status: status, Reason: "R", Message: "m"}}
	}
	return n
}

// TestGet checks the in-sync rule with client-go's fake clientset (a narrow
// unit test; test/ runs `nodecreds status --wait` against a real API server).
func TestGet(t *testing.T) {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", UID: "u", ResourceVersion: "5"}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{".dockerconfigjson": []byte(`{"auths":{}}`)}}
	cur := source.Revision([]source.Snapshot{source.FromSecret(sec)})
	client := fake.NewClientset(sec,
		node("a", cur, corev1.ConditionTrue),
		node("b", "old", corev1.ConditionTrue),
		node("c", cur, corev1.ConditionFalse),
		node("d", "", ""),
	)
	st, err := Get(t.Context(), kubetest.FromClientset(client), Options{Namespace: "ns", Secrets: []string{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != cur || st.InSync {
		t.Errorf("status = %+v", st)
	}
	want := map[string]bool{"a": true, "b": false, "c": false, "d": false}
	for _, n := range st.Nodes {
		if n.InSync != want[n.Name] {
			t.Errorf("node %s in sync = %v", n.Name, n.InSync)
		}
	}
	if len(st.Lagging) != 3 || st.Lagging[0] != "b" {
		t.Errorf("lagging = %v", st.Lagging)
	}
	// Wait gives up at the timeout and returns the last status.
	st, err = Wait(t.Context(), kubetest.FromClientset(client), Options{Namespace: "ns", Secrets: []string{"s"}}, 300*time.Millisecond, 50*time.Millisecond)
	if err != nil || st.InSync || len(st.Lagging) != 3 {
		t.Errorf("wait: %v %+v", err, st)
	}
	// A missing Secret still gives a revision to compare with.
	st, err = Get(t.Context(), kubetest.FromClientset(client), Options{Namespace: "ns", Secrets: []string{"gone"}})
	if err != nil || st.Revision == "" || st.Revision == cur {
		t.Errorf("missing Secret: %v %+v", err, st.Revision)
	}
}

// TestScope: only nodes a nodecreds DaemonSet would run on are counted; a
// Windows node, or a node with a taint the DaemonSet does not tolerate, is
// ignored; without a DaemonSet every node counts.
func TestScope(t *testing.T) {
	linux := func(n *corev1.Node) *corev1.Node { n.Labels = map[string]string{"kubernetes.io/os": "linux"}; return n }
	win := node("win", "", "")
	win.Labels = map[string]string{"kubernetes.io/os": "windows"}
	tainted := linux(node("tainted", "", ""))
	tainted.Spec.Taints = []corev1.Taint{{Key: "virtual-kubelet.io/provider", Value: "x", Effect: corev1.TaintEffectNoSchedule}}
	ds := func(tols ...corev1.Toleration) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "nodecreds", Labels: map[string]string{"app.kubernetes.io/name": "nodecreds"}},
			Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
				Tolerations:  tols,
			}}},
		}
	}
	tests := []struct {
		name    string
		ds      *appsv1.DaemonSet
		counted []string
		ignored []string
	}{
		{"tolerating everything", ds(corev1.Toleration{Operator: corev1.TolerationOpExists}), []string{"l", "tainted"}, []string{"win"}},
		{"tolerating nothing", ds(), []string{"l"}, []string{"tainted", "win"}},
		{"no DaemonSet", nil, []string{"l", "tainted", "win"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := []runtime.Object{linux(node("l", "", "")), win.DeepCopy(), tainted.DeepCopy()}
			if tt.ds != nil {
				objs = append(objs, tt.ds)
			}
			st, err := Get(t.Context(), kubetest.FromClientset(fake.NewClientset(objs...)), Options{Namespace: "ns", Secrets: []string{"s"}})
			if err != nil {
				t.Fatal(err)
			}
			var counted []string
			for _, n := range st.Nodes {
				counted = append(counted, n.Name)
			}
			if !slices.Equal(counted, tt.counted) || !slices.Equal(st.Ignored, tt.ignored) {
				t.Errorf("counted %v ignored %v, want %v and %v (scope %q)", counted, st.Ignored, tt.counted, tt.ignored, st.Scope)
			}
		})
	}
}

// TestScopePools: with the chart's pools, the default DaemonSet's nodes are
// counted without --pool, a pool's with it: each pool's nodes apply that
// pool's Secrets only, so the others would lag for ever.
func TestScopePools(t *testing.T) {
	const poolKey = "node-restriction.kubernetes.io/pool"
	n := func(name, pool string) *corev1.Node {
		nd := node(name, "", "")
		nd.Labels = map[string]string{"kubernetes.io/os": "linux"}
		if pool != "" {
			nd.Labels[poolKey] = pool
		}
		return nd
	}
	ds := func(name, pool string) *appsv1.DaemonSet {
		d := &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{"app.kubernetes.io/name": "nodecreds"}},
			Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
				Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			}}},
		}
		if pool == "" {
			d.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: poolKey, Operator: corev1.NodeSelectorOpNotIn, Values: []string{"a", "b"}}}}}}}}
		} else {
			d.Labels[PoolLabel] = pool
			d.Spec.Template.Spec.NodeSelector[poolKey] = pool
		}
		return d
	}
	client := kubetest.FromClientset(fake.NewClientset(n("d1", ""), n("a1", "a"), n("a2", "a"), n("b1", "b"),
		ds("nodecreds", ""), ds("nodecreds-a", "a"), ds("nodecreds-b", "b")))
	for _, tt := range []struct {
		pool             string
		counted, ignored []string
	}{
		{"", []string{"d1"}, []string{"a1", "a2", "b1"}},
		{"a", []string{"a1", "a2"}, []string{"b1", "d1"}},
		{"b", []string{"b1"}, []string{"a1", "a2", "d1"}},
	} {
		st, err := Get(t.Context(), client, Options{Namespace: "ns", Secrets: []string{"s"}, Pool: tt.pool})
		if err != nil {
			t.Fatal(err)
		}
		var counted []string
		for _, row := range st.Nodes {
			counted = append(counted, row.Name)
		}
		if !slices.Equal(counted, tt.counted) || !slices.Equal(st.Ignored, tt.ignored) {
			t.Errorf("pool %q: counted %v ignored %v, want %v and %v (scope %q)", tt.pool, counted, st.Ignored, tt.counted, tt.ignored, st.Scope)
		}
	}
}

// TestStatusAndAgentAgree: the revision `nodecreds status` expects is the
// one the agent's Secret source computes, for --secret a,b (with one
// missing) and for --selector, so `status --wait` converges.
func TestStatusAndAgentAgree(t *testing.T) {
	secret := func(name, rv string, labels map[string]string, nodeSelector string) *corev1.Secret {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("u-" + name), ResourceVersion: rv, Labels: labels},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": []byte(`{"auths":{}}`)}}
		if nodeSelector != "" {
			sec.Annotations = map[string]string{source.AnnotationNodeSelector: nodeSelector}
		}
		return sec
	}
	team := map[string]string{"team": "a"}
	pooled := map[string]string{"team": "a", "pooled": "yes"}
	tests := []struct {
		name     string
		secrets  []string
		selector string
		node     string // the agent's node; its labels pool=b
		applies  []string
	}{
		{"--secret b,a,missing", []string{"b", "a", "missing"}, "", "", []string{"ns/b", "ns/a", "ns/missing"}},
		{"--selector team=a,!pooled", nil, "team=a,!pooled", "", []string{"ns/a", "ns/b"}},
		{"--secret with node selectors", []string{"b", "a", "pool-a", "pool-bc"}, "", "n1", []string{"ns/b", "ns/a", "ns/pool-bc"}},
		{"--selector with node selectors", nil, "team=a", "n1", []string{"ns/a", "ns/b", "ns/pool-bc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n1 := node("n1", "", "")
			n1.Labels = map[string]string{"pool": "b"}
			client := fake.NewClientset(secret("b", "3", team, ""), secret("a", "5", team, ""), secret("c", "7", nil, ""),
				secret("pool-a", "8", pooled, "pool=a"), secret("pool-bc", "9", pooled, "pool in (b,c)"), n1)
			src := source.NewSecrets(kubetest.FromClientset(client), "ns", tt.secrets, tt.selector, tt.node, logrus.NewEntry(logrus.New()))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go func() { _ = src.Run(ctx) }()
			select {
			case <-src.Ready():
			case <-time.After(10 * time.Second):
				t.Fatal("caches did not sync")
			}
			agentSnaps := src.Snapshots()
			st, err := Get(t.Context(), kubetest.FromClientset(client), Options{Namespace: "ns", Secrets: tt.secrets, Selector: tt.selector})
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Nodes) != 1 || st.Nodes[0].Expected != source.Revision(agentSnaps) || !slices.Equal(st.Nodes[0].Sources, tt.applies) {
				t.Fatalf("status expects %+v, the agent applies %s %v", st.Nodes, source.Revision(agentSnaps), tt.applies)
			}
		})
	}
}

// TestPerNodeRevisions: with a Secret limited to pool=a, each node is
// compared with its own set, and a lagging node is named with the Secret it
// waits for.
func TestPerNodeRevisions(t *testing.T) {
	mk := func(name, rv, nodeSelector string) *corev1.Secret {
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("u-" + name), ResourceVersion: rv},
			Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockerconfigjson": []byte(`{"auths":{}}`)}}
		if nodeSelector != "" {
			sec.Annotations = map[string]string{source.AnnotationNodeSelector: nodeSelector}
		}
		return sec
	}
	all, poolA := mk("all", "1", ""), mk("pool-a", "2", "pool=a")
	everywhere := []source.Snapshot{source.FromSecret(all)}
	both := []source.Snapshot{source.FromSecret(all), source.FromSecret(poolA)}
	reported := func(name, pool string, snaps []source.Snapshot) *corev1.Node {
		n := node(name, source.Revision(snaps), corev1.ConditionTrue)
		n.Labels = map[string]string{"pool": pool}
		n.Annotations[nodestatus.AnnotationSources] = source.Versions(snaps)
		return n
	}
	client := fake.NewClientset(all, poolA,
		reported("a1", "a", both),       // has its set
		reported("b1", "b", everywhere), // has its set
		reported("b2", "b", both),       // was relabelled from a; still has pool-a
		reported("a2", "a", everywhere), // relabelled to a; pool-a not yet applied
	)
	st, err := Get(t.Context(), kubetest.FromClientset(client), Options{Namespace: "ns", Secrets: []string{"all", "pool-a"}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.PerNode || st.Revision != "" || !slices.Equal(st.Lagging, []string{"a2", "b2"}) {
		t.Fatalf("rollout = %+v", st)
	}
	want := map[string][]string{"a1": {}, "b1": {}, "a2": {"ns/pool-a not applied"}, "b2": {"ns/pool-a still applied, no longer meant for this node"}}
	for _, n := range st.Nodes {
		if !slices.Equal(n.Waiting, want[n.Name]) {
			t.Errorf("node %s waits for %q, want %q", n.Name, n.Waiting, want[n.Name])
		}
	}
	if got := st.LaggingSummary(); got != "a2 (ns/pool-a not applied); b2 (ns/pool-a still applied, no longer meant for this node)" {
		t.Errorf("summary %q", got)
	}
}

// TestExpiries: `status` lists each Secret's expiry, earliest first, with
// the time left or "expired", and an annotation that does not parse with
// why; in the table and in JSON.
func TestExpiries(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	secret := func(name, expiresAt string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "nodecreds", Name: name}, Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{".dockerconfigjson": []byte(`{"auths":{"r.test":{"auth":"dTpw"}}}`)}}
		if expiresAt != "" {
			s.Annotations = map[string]string{source.AnnotationExpiresAt: expiresAt}
		}
		return s
	}
	var snaps []source.Snapshot
	for _, s := range []*corev1.Secret{
		secret("gar", "2026-12-01T09:00:00Z"),
		secret("plain", ""),
		secret("typo", "1764583200"),
		secret("ecr", "2026-12-01T07:59:00Z"),
		secret("acr", "2026-12-01T09:30:15+01:00"),
	} {
		snaps = append(snaps, source.FromSecret(s))
	}
	got := expiries(snaps, now)
	want := []struct {
		secret, left string
		expired      bool
		problem      bool
	}{
		{"nodecreds/ecr", "expired", true, false},
		{"nodecreds/acr", "30m15s", false, false},
		{"nodecreds/gar", "1h0m0s", false, false},
		{"nodecreds/typo", "", false, true},
	}
	if len(got) != len(want) {
		t.Fatalf("expiries = %+v", got)
	}
	for i, w := range want {
		if g := got[i]; g.Secret != w.secret || g.Left != w.left || g.Expired != w.expired || (g.Problem != "") != w.problem {
			t.Errorf("expiry %d = %+v, want %+v", i, g, w)
		}
	}
	if got[1].ExpiresAt != "2026-12-01T08:30:15Z" || got[1].LeftSeconds != 1815 {
		t.Errorf("acr: %+v", got[1])
	}
	r := Rollout{Sources: []string{"nodecreds/ecr"}, Nodes: []NodeRow{}, Expiries: got}
	var table, js strings.Builder
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"expires:", "nodecreds/ecr at 2026-12-01T07:59:00Z (expired)", "nodecreds/acr at 2026-12-01T08:30:15Z (in 30m15s)", "nodecreds/typo: nodecreds.io/expires-at annotation ignored (", "Unix seconds"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table does not say %q:\n%s", want, table.String())
		}
	}
	var back struct {
		Expiries []Expiry `json:"expiries"`
	}
	if err := json.Unmarshal([]byte(js.String()), &back); err != nil || len(back.Expiries) != 4 || back.Expiries[0].Left != "expired" || !back.Expiries[0].Expired || back.Expiries[2].LeftSeconds != 3600 {
		t.Errorf("JSON expiries: %v\n%s", err, js.String())
	}
}
