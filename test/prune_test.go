package test

import (
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestBrokenSourceHoldsOnlyItsOwn: four Secrets and four Nodes on a real
// API server, one agent per node. One Secret is broken from the start (its
// node selector does not parse) and another turns invalid while an agent
// is down, so that agent never sees it valid. Credentials whose source is
// known and no longer applies still leave every node — on a relabel, a
// deleted Secret, a deleted Node — while only the entries the unknown
// source wrote before stay, and the condition says so.
func TestBrokenSourceHoldsOnlyItsOwn(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	admin := c.Admin
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	creds := map[string]string{
		"shared.prune.test": "shared:pr-canary-shared",
		"a.pool.test":       "a:pr-canary-a",
		"b.pool.test":       "b:pr-canary-b",
		"broken.prune.test": "broken:pr-canary-broken",
		"flaky.prune.test":  "flaky:pr-canary-flaky",
	}
	secret := func(name, selector, reg string) *corev1.Secret {
		s := registrySecret(dockerconfigjson(t, map[string]string{reg: creds[reg]}))
		s.Name = name
		if selector != "" {
			s.Annotations = map[string]string{"nodecreds.io/node-selector": selector}
		}
		return s
	}
	for _, s := range []*corev1.Secret{
		secret("shared", "", "shared.prune.test"),
		secret("pool-a", "pool=a", "a.pool.test"),
		secret("pool-b", "pool=b", "b.pool.test"),
		secret("broken", "pool in (a", "broken.prune.test"),
		secret("flaky", "", "flaky.prune.test"),
	} {
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	labels := map[string]string{"n-a": "a", "n-b": "b", "n-c": "", "n-d": "a"}
	roots := map[string]string{}
	agents := map[string]*agentProc{}
	args := func(node string) []string {
		return []string{"--kubeconfig", c.Kubeconfig, "--namespace", ns, "--secret", "shared,pool-a,pool-b,broken,flaky",
			"--node-name", node, "--host-root", roots[node], "--metrics-addr", "0", "--log-level", "debug"}
	}
	for node, pool := range labels {
		createNode(t, admin, node)
		if pool != "" {
			relabelNode(t, admin, node, map[string]string{"pool": pool})
		}
		roots[node] = t.TempDir()
	}
	// A foreign entry for pool a's registry on n-a: displaced while pool a
	// applies there, back when it stops.
	foreign := testsupport.B64("theirs:pr-canary-foreign")
	testsupport.WriteFile(t, filepath.Join(roots["n-a"], kubeletFile), `{"auths":{"a.pool.test":{"auth":"`+foreign+`"}}}`, 0o600)
	for node := range labels {
		agents[node] = startAgent(t, args(node)...)
	}
	has := func(node string, regs ...string) func() bool {
		return func() bool {
			got := map[string]string{}
			for _, r := range []string{"shared.prune.test", "a.pool.test", "b.pool.test", "broken.prune.test", "flaky.prune.test"} {
				if a := authIn(filepath.Join(roots[node], kubeletFile), r); a != "" {
					got[r] = a
				}
			}
			want := map[string]string{}
			for _, r := range regs {
				if r == "foreign" {
					want["a.pool.test"] = foreign
					continue
				}
				want[r] = testsupport.B64(creds[r])
			}
			return maps.Equal(got, want)
		}
	}
	wait := func(what string, node string, regs ...string) {
		t.Helper()
		testsupport.Eventually(t, 20*time.Second, what+": "+node+"'s kubelet file holds exactly "+strings.Join(regs, ", "), has(node, regs...))
	}
	wait("start", "n-a", "shared.prune.test", "flaky.prune.test", "a.pool.test")
	wait("start", "n-b", "shared.prune.test", "flaky.prune.test", "b.pool.test")
	wait("start", "n-c", "shared.prune.test", "flaky.prune.test")
	wait("start", "n-d", "shared.prune.test", "flaky.prune.test", "a.pool.test")

	// With the broken Secret never valid, a relabel still takes pool a's
	// key off n-a (and gives back what it displaced).
	relabelNode(t, admin, "n-a", map[string]string{"pool": "b"})
	wait("relabel with a broken Secret", "n-a", "shared.prune.test", "flaky.prune.test", "b.pool.test", "foreign")
	// A deleted Secret leaves the nodes it was on.
	if err := admin.CoreV1().Secrets(ns).Delete(ctx, "pool-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("deleted Secret with a broken one", "n-d", "shared.prune.test", "flaky.prune.test")
	// A deleted Node: Secrets for some nodes apply nowhere, so pool b's
	// key leaves n-b, whose agent cannot tell any more.
	if err := admin.CoreV1().Nodes().Delete(ctx, "n-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("deleted Node", "n-b", "shared.prune.test", "flaky.prune.test")

	// n-c's agent restarts while flaky turns invalid: it never sees flaky
	// valid, so what flaky wrote there before stays; the condition says
	// so. The other agents keep flaky's last good content.
	if code := agents["n-c"].stop(t); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	bad, err := admin.CoreV1().Secrets(ns).Get(ctx, "flaky", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths":{"flaky.prune.test":{"auth":"%%%"}}}`)
	if _, err := admin.CoreV1().Secrets(ns).Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	agents["n-c"] = startAgent(t, args("n-c")...)
	testsupport.Eventually(t, 20*time.Second, "n-c says flaky's entries are held", func() bool {
		cond := condition(getNode(t, admin, "n-c"))
		return cond != nil && cond.Status == corev1.ConditionFalse && strings.Contains(cond.Message, "entries written before from "+ns+"/flaky stay on the node")
	})
	if !has("n-c", "shared.prune.test", "flaky.prune.test")() {
		t.Errorf("n-c lost the entry of the source it cannot read, or kept another")
	}
	// And still prunes what another, known source no longer gives it.
	relabelNode(t, admin, "n-c", map[string]string{"pool": "b"})
	wait("relabel into b with flaky unknown", "n-c", "shared.prune.test", "flaky.prune.test", "b.pool.test")
	relabelNode(t, admin, "n-c", map[string]string{"pool": ""})
	wait("relabel out of b with flaky unknown", "n-c", "shared.prune.test", "flaky.prune.test")

	var logs strings.Builder
	for _, a := range agents {
		logs.WriteString(a.logs.String())
	}
	var canaries []string
	for _, v := range creds {
		canaries = append(canaries, v, strings.SplitN(v, ":", 2)[1], testsupport.B64(v))
	}
	assertNoSecrets(t, "agent logs", logs.String(), append(canaries, "pr-canary-foreign", foreign)...)
}

// relabelNode sets (or, with "", removes) labels on a Node, retried on a
// conflict: the agents patch their Nodes meanwhile.
func relabelNode(t *testing.T, client kubernetes.Interface, name string, set map[string]string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n := getNode(t, client, name)
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		for k, v := range set {
			if v == "" {
				delete(n.Labels, k)
			} else {
				n.Labels[k] = v
			}
		}
		_, err := client.CoreV1().Nodes().Update(t.Context(), n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
