package test

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// readmeNodePools is docs/node-pools.md's "Placing Secrets on some nodes
// of a pool" example (once the README's), taken apart: the node commands,
// the Secret, the helm --set value and the status command.
type readmeNodePools struct {
	labels  map[string]map[string]string // node → labels
	taints  map[string][]corev1.Taint
	secret  *corev1.Secret
	helmSet string
	status  []string // nodecreds status arguments
}

func readReadmeNodePools(t *testing.T) readmeNodePools {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "docs", "node-pools.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "\n## Placing Secrets on some nodes of a pool")
	if start < 0 {
		t.Fatal(`docs/node-pools.md has no section "Placing Secrets on some nodes of a pool"`)
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	r := readmeNodePools{labels: map[string]map[string]string{}, taints: map[string][]corev1.Taint{}}
	label := regexp.MustCompile(`(?m)^kubectl label nodes? (\S+) ([^=\s]+)=(\S+)$`)
	for _, m := range label.FindAllStringSubmatch(section, -1) {
		if r.labels[m[1]] == nil {
			r.labels[m[1]] = map[string]string{}
		}
		r.labels[m[1]][m[2]] = m[3]
	}
	taint := regexp.MustCompile(`(?m)^kubectl taint nodes? (\S+) ([^=\s]+)=([^:\s]+):(\w+)$`)
	for _, m := range taint.FindAllStringSubmatch(section, -1) {
		r.taints[m[1]] = append(r.taints[m[1]], corev1.Taint{Key: m[2], Value: m[3], Effect: corev1.TaintEffect(m[4])})
	}
	yamlBlock := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(section)
	if yamlBlock == nil {
		t.Fatal("the docs' node-pool section has no yaml block")
	}
	r.secret = &corev1.Secret{}
	if err := yaml.UnmarshalStrict([]byte(yamlBlock[1]), r.secret); err != nil {
		t.Fatalf("the docs' Secret does not parse: %v", err)
	}
	if m := regexp.MustCompile(`--set '([^']+)'`).FindStringSubmatch(section); m != nil {
		r.helmSet = m[1]
	}
	if m := regexp.MustCompile(`(?m)^nodecreds (status .*)$`).FindStringSubmatch(section); m != nil {
		r.status = strings.Fields(m[1])
	}
	if len(r.labels) == 0 || len(r.taints) == 0 || r.helmSet == "" || len(r.status) == 0 {
		t.Fatalf("the docs' node-pool example lacks a part: %+v", r)
	}
	return r
}

// poolAgent is one node: its Node object, its root, its agent and the
// agent's token (bound to a Pod on the node, as the kubelet gives it).
type poolAgent struct {
	node       string
	root       string
	agent      *agentProc
	kubeconfig string
}

func (p *poolAgent) start(t *testing.T, args []string) {
	p.agent = startAgent(t, append([]string{"--kubeconfig", p.kubeconfig, "--namespace", ns, "--node-name", p.node,
		"--host-root", p.root, "--metrics-addr", "0", "--log-level", "debug"}, args...)...)
}

// registries returns the auths of a node's kubelet file (without
// foreignOnly) and docker file.
func (p *poolAgent) registries(t *testing.T) (kubelet, docker map[string]string) {
	t.Helper()
	read := func(rel string) map[string]string {
		data, err := os.ReadFile(filepath.Join(p.root, rel))
		if err != nil {
			return nil
		}
		var doc struct {
			Auths map[string]struct {
				Auth string `json:"auth"`
			} `json:"auths"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s of %s: %v", rel, p.node, err)
		}
		out := map[string]string{}
		for k, v := range doc.Auths {
			out[k] = v.Auth
		}
		return out
	}
	kubelet, docker = read(kubeletFile), read(dockerFile)
	delete(kubelet, foreignOnly)
	return kubelet, docker
}

// has reports whether both files hold exactly want: the kubelet file with
// the foreign entries it had, the docker file (which had none) without.
func (p *poolAgent) has(t *testing.T, want map[string]string) bool {
	kubelet, docker := p.registries(t)
	wantDocker := maps.Clone(want)
	if wantDocker["pool-a.example.test"] == testsupport.B64(foreignPoolA) {
		delete(wantDocker, "pool-a.example.test")
	}
	return maps.Equal(kubelet, want) && maps.Equal(docker, wantDocker)
}

// The credentials each Secret of the test provides, by registry (poolCreds
// is reset from basePoolCreds at the start of the test, which rotates some).
var poolCreds, basePoolCreds = map[string]string{}, map[string]string{
	"shared.example.test":  "shared:np-canary-shared",
	"pool-a.example.test":  "pool-a:np-canary-a",
	"pool-bc.example.test": "pool-bc:np-canary-bc",
	"broken.example.test":  "broken:np-canary-broken",
}

// foreignOnly is in node-a's kubelet file before nodecreds runs;
// foreignPoolA is a foreign entry there for the registry pool-a provides:
// displaced while pool-a applies, back when it stops applying.
const (
	foreignOnly  = "foreign.example.test"
	foreignPoolA = "pool-a:np-canary-foreign"
)

func wantSet(regs ...string) map[string]string {
	out := map[string]string{}
	for _, r := range regs {
		out[r] = testsupport.B64(poolCreds[r])
	}
	return out
}

func poolSecret(t *testing.T, name, nodeSelector string, regs ...string) *corev1.Secret {
	creds := map[string]string{}
	for _, r := range regs {
		creds[r] = poolCreds[r]
	}
	sec := registrySecret(dockerconfigjson(t, creds))
	sec.Name = name
	if nodeSelector != "" {
		sec.Annotations = map[string]string{"nodecreds.io/node-selector": nodeSelector}
	}
	return sec
}

// TestNodePools: Secrets limited to node pools with
// nodecreds.io/node-selector, on a real API server with three agents, each
// with its own Node, root and ServiceAccount token. First the docs'
// example as written; then Secrets with no selector, pool=a, pool in (b,c)
// and an invalid one; a relabel (timed); an annotation removed; `status
// --wait` both ways; and RBAC.
func TestNodePools(t *testing.T) {
	readme := readReadmeNodePools(t)
	poolCreds = maps.Clone(basePoolCreds)
	c := startCluster(t)
	ctx := t.Context()
	admin := c.Admin

	// The docs' install: the namespace labelled, the chart with its --set.
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labelNS(t, c, ns, "privileged")
	install := func(set string) []string {
		t.Helper()
		objs := objects(t, renderWithCluster(t, c, set, ns))
		if err := cluster.Apply(ctx, c.RESTConfig, objs, false); err != nil {
			t.Fatalf("applying the chart with %q: %v", set, err)
		}
		ds, _ := find[appsv1.DaemonSet](t, objs, "DaemonSet")
		var args []string
		for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--secret=") || strings.HasPrefix(a, "--selector=") {
				args = append(args, a)
			}
		}
		return args
	}
	args := install(readme.helmSet)
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "not-for-nodecreds", Namespace: ns},
		StringData: map[string]string{"password": "np-canary-other"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Three nodes: the docs' tenant node, node-a, node-b.
	var tenantNode string
	for name := range readme.labels {
		tenantNode = name
	}
	nodes := map[string]*poolAgent{}
	for _, name := range []string{tenantNode, "node-a", "node-b"} {
		createNode(t, admin, name)
		nodes[name] = &poolAgent{node: name, root: t.TempDir()}
	}
	// The agents patch their Nodes meanwhile: read-modify-write, retried on
	// a conflict, as kubectl label and taint are.
	updateNode := func(name string, change func(*corev1.Node)) {
		t.Helper()
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n := getNode(t, admin, name)
			change(n)
			_, err := admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	relabel := func(name string, set map[string]string) {
		t.Helper()
		updateNode(name, func(n *corev1.Node) {
			for k, v := range set {
				if v == "" {
					delete(n.Labels, k)
				} else {
					n.Labels[k] = v
				}
			}
		})
	}
	for name, lbls := range readme.labels {
		relabel(name, lbls)
	}
	for name, taints := range readme.taints {
		updateNode(name, func(n *corev1.Node) { n.Spec.Taints = append(n.Spec.Taints, taints...) })
	}
	relabel("node-a", map[string]string{"pool": "a"})
	relabel("node-b", map[string]string{"pool": "b"})
	testsupport.WriteFile(t, filepath.Join(nodes["node-a"].root, kubeletFile),
		`{"auths":{"`+foreignOnly+`":{"auth":"`+testsupport.B64("f:np-canary-f")+`"},"pool-a.example.test":{"auth":"`+testsupport.B64(foreignPoolA)+`"}}}`, 0o600)

	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, poolSecret(t, secretName, "", "shared.example.test"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, readme.secret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the docs' Secret: %v", err)
	}
	var readmeRegs []string
	var tenantAuths struct {
		Auths map[string]struct{ Username, Password string } `json:"auths"`
	}
	if err := json.Unmarshal([]byte(readme.secret.StringData[".dockerconfigjson"]), &tenantAuths); err != nil {
		t.Fatal(err)
	}
	for reg, a := range tenantAuths.Auths {
		readmeRegs = append(readmeRegs, reg)
		poolCreds[reg] = a.Username + ":" + a.Password
	}

	var sa *kubernetes.Clientset
	for _, p := range nodes {
		var client *kubernetes.Clientset
		var err error
		if p.kubeconfig, client, _, err = c.AgentKubeconfig(ctx, ns, "nodecreds", p.node); err != nil {
			t.Fatal(err)
		}
		if p.node == "node-a" {
			sa = client
		}
	}
	for _, p := range nodes {
		p.start(t, args)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, p := range nodes {
				kubelet, docker := p.registries(t)
				t.Logf("%s has %v in its kubelet file, %v in its docker file", name, slices.Sorted(maps.Keys(kubelet)), slices.Sorted(maps.Keys(docker)))
			}
		}
	})
	waitSets := func(what string, want map[string]map[string]string) time.Duration {
		t.Helper()
		return testsupport.Eventually(t, 20*time.Second, what, func() bool {
			for name, w := range want {
				if !nodes[name].has(t, w) {
					return false
				}
			}
			return true
		})
	}
	withForeign := func(m map[string]string) map[string]string {
		m["pool-a.example.test"] = testsupport.B64(foreignPoolA)
		return m
	}
	waitSets("the docs' example: the tenant's key on its node only", map[string]map[string]string{
		tenantNode: wantSet(append([]string{"shared.example.test"}, readmeRegs...)...),
		"node-a":   withForeign(wantSet("shared.example.test")),
		"node-b":   wantSet("shared.example.test"),
	})
	if out, stderr, code := run(t, append(readme.status, "--kubeconfig", c.Kubeconfig, "--namespace", ns, "--timeout", "20s")...); code != 0 {
		t.Fatalf("the docs' status command: exit %d\n%s\n%s", code, out, stderr)
	}

	// helm upgrade with more Secrets: no selector, pool=a, pool in (b,c),
	// and one that will turn invalid. The DaemonSet rolls: agents restart.
	for _, s := range []*corev1.Secret{
		poolSecret(t, "pool-a", "pool=a", "pool-a.example.test"),
		poolSecret(t, "pool-bc", "pool in (b,c)", "pool-bc.example.test"),
		poolSecret(t, "broken", "pool=none", "broken.example.test"),
	} {
		if _, err := admin.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	args = install("secrets={" + secretName + "," + readme.secret.Name + ",pool-a,pool-bc,broken}")
	for _, p := range nodes {
		if code := p.agent.stop(t); code != 0 {
			t.Fatalf("agent on %s exited %d", p.node, code)
		}
		p.start(t, args)
	}
	statusArgs := []string{"--secret", strings.TrimPrefix(args[0], "--secret=")}
	everyone := map[string]map[string]string{
		tenantNode: wantSet(append([]string{"shared.example.test"}, readmeRegs...)...),
		"node-a":   wantSet("shared.example.test", "pool-a.example.test"),
		"node-b":   wantSet("shared.example.test", "pool-bc.example.test"),
	}
	waitSets("each node has exactly its own set", everyone)
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "20s")...); code != 0 {
		t.Fatalf("status --wait with every node on its own set: exit %d: %s", code, stderr)
	}

	t.Run("rbac", func(t *testing.T) {
		if _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=node-a"}); err != nil {
			t.Errorf("the agent cannot list its Node: %v", err)
		}
		w, err := sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=node-a"})
		if err != nil {
			t.Errorf("the agent cannot watch its Node: %v", err)
		} else {
			w.Stop()
		}
		if _, err := sa.CoreV1().Secrets(ns).Get(ctx, "pool-a", metav1.GetOptions{}); err != nil {
			t.Errorf("the agent cannot read a source Secret: %v", err)
		}
		forbidden := map[string]error{}
		_, forbidden["get another Secret"] = sa.CoreV1().Secrets(ns).Get(ctx, "not-for-nodecreds", metav1.GetOptions{})
		_, forbidden["list Secrets in its namespace"] = sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		_, forbidden["list Secrets cluster-wide"] = sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
		_, forbidden["update a Node"] = sa.CoreV1().Nodes().Update(ctx, getNode(t, admin, "node-b"), metav1.UpdateOptions{})
		for what, err := range forbidden {
			if !apierrors.IsForbidden(err) {
				t.Errorf("the agent can %s (err %v), want Forbidden", what, err)
			}
		}
	})

	// Relabel node-a from a to b: pool-a's entry leaves (the foreign one it
	// displaced comes back), pool-bc's arrives.
	relabel("node-a", map[string]string{"pool": "b"})
	took := waitSets("node-a's files follow its relabel", map[string]map[string]string{
		"node-a": withForeign(wantSet("shared.example.test", "pool-bc.example.test")),
	})
	t.Logf("relabel a→b to both of node-a's files: %s", took)
	everyone["node-a"] = withForeign(wantSet("shared.example.test", "pool-bc.example.test"))
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "20s")...); code != 0 {
		t.Fatalf("status --wait after the relabel: exit %d: %s", code, stderr)
	}

	// An invalid selector: that Secret is refused on every node, naming it
	// and the annotation; the others stay.
	setSelector(t, admin, "broken", "pool in (a")
	for name := range nodes {
		testsupport.Eventually(t, 20*time.Second, name+" reports the invalid selector", func() bool {
			cond := condition(getNode(t, admin, name))
			return cond != nil && cond.Status == corev1.ConditionFalse && cond.Reason == "SourceInvalid" &&
				strings.Contains(cond.Message, ns+"/broken") && strings.Contains(cond.Message, "nodecreds.io/node-selector")
		})
	}
	waitSets("the other Secrets still apply", everyone)
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "2s")...); code != 1 || !strings.Contains(stderr, "SourceInvalid") {
		t.Errorf("status --wait with an invalid Secret: exit %d: %s", code, stderr)
	}
	setSelector(t, admin, "broken", "pool=none")
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "20s")...); code != 0 {
		t.Fatalf("status --wait after fixing the selector: exit %d: %s", code, stderr)
	}

	// A node whose agent is down lags a rotation: status names it and the
	// Secret it waits for.
	if code := nodes["node-b"].agent.stop(t); code != 0 {
		t.Fatalf("agent exit %d", code)
	}
	poolCreds["pool-bc.example.test"] = "pool-bc:np-canary-bc-2"
	rotated := poolSecret(t, "pool-bc", "pool in (b,c)", "pool-bc.example.test")
	cur, err := admin.CoreV1().Secrets(ns).Get(ctx, "pool-bc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Data = rotated.Data
	if _, err := admin.CoreV1().Secrets(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	everyone["node-a"]["pool-bc.example.test"] = testsupport.B64(poolCreds["pool-bc.example.test"])
	waitSets("node-a has the rotated pool-bc", map[string]map[string]string{"node-a": everyone["node-a"]})
	st, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "2s")...)
	if code != 1 || !slices.Equal(st.Lagging, []string{"node-b"}) || !strings.Contains(stderr, "node-b ("+ns+"/pool-bc applied at an older version)") {
		t.Errorf("status --wait with node-b's agent down: exit %d, lagging %v: %s", code, st.Lagging, stderr)
	}
	nodes["node-b"].start(t, args)
	everyone["node-b"] = wantSet("shared.example.test", "pool-bc.example.test")
	waitSets("node-b catches up", everyone)
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "20s")...); code != 0 {
		t.Fatalf("status --wait after node-b caught up: exit %d: %s", code, stderr)
	}

	// The annotation removed: pool-a applies everywhere (after the
	// Secrets before it, whose registries differ).
	setSelector(t, admin, "pool-a", "")
	for name := range everyone {
		everyone[name]["pool-a.example.test"] = testsupport.B64(poolCreds["pool-a.example.test"])
	}
	took = waitSets("pool-a everywhere once its annotation is gone", everyone)
	t.Logf("annotation removed to every node's files: %s", took)
	if _, stderr, code := status(t, c, append(statusArgs, "--wait", "--timeout", "20s")...); code != 0 {
		t.Fatalf("status --wait after removing the annotation: exit %d: %s", code, stderr)
	}

	var logs strings.Builder
	for _, p := range nodes {
		logs.WriteString(p.agent.logs.String())
	}
	table, _, _ := run(t, "status", "--kubeconfig", c.Kubeconfig, "--namespace", ns, "--secret", statusArgs[1])
	logs.WriteString(table)
	for _, n := range []string{tenantNode, "node-a", "node-b"} {
		node := getNode(t, admin, n)
		logs.WriteString(condition(node).Message + "\n")
		for _, v := range node.Annotations {
			logs.WriteString(v + "\n")
		}
	}
	var canaries []string
	for _, v := range poolCreds {
		canaries = append(canaries, v, strings.SplitN(v, ":", 2)[1], testsupport.B64(v))
	}
	canaries = append(canaries, "np-canary-other", foreignPoolA, testsupport.B64(foreignPoolA), "np-canary-f")
	assertNoSecrets(t, "agent logs, status, conditions, annotations", logs.String(), canaries...)
}

func setSelector(t *testing.T, client kubernetes.Interface, name, selector string) {
	t.Helper()
	sec, err := client.CoreV1().Secrets(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if selector == "" {
		delete(sec.Annotations, "nodecreds.io/node-selector")
	} else {
		sec.Annotations["nodecreds.io/node-selector"] = selector
	}
	if _, err := client.CoreV1().Secrets(ns).Update(t.Context(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
