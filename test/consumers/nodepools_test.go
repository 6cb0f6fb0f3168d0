package consumers

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubernetes/pkg/credentialprovider"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

// kubeletLookup is what the kubelet's own credential code finds for an
// image in a node's files: the first config.json that parses in its search
// order, through its keyring.
func kubeletLookup(root, image string) (user, password string, found bool) {
	cfg, err := credentialprovider.ReadDockerConfigJSONFile([]string{filepath.Join(root, "var/lib/kubelet")})
	if err != nil {
		return "", "", false
	}
	ring := &credentialprovider.BasicDockerKeyring{}
	ring.Add(nil, cfg)
	creds, ok := ring.Lookup(repoOf(image))
	if !ok || len(creds) == 0 {
		return "", "", false
	}
	return creds[0].Username, creds[0].Password, true
}

// startCluster starts a control plane (etcd, kube-apiserver) in a folder
// named after prefix, stopped when the test ends and kept when it fails.
func startCluster(t *testing.T, prefix string) *cluster.Cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Start(t.Context(), dir)
	if err != nil {
		t.Fatalf("starting the control plane (make controlplane builds it): %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	return c
}

// TestKubeletSeesNodePools: a Secret with nodecreds.io/node-selector
// pool=a, installed with deploy/daemonset.yaml on a real API server, two
// agents with their ServiceAccount's token: the kubelet's own code finds
// the credentials on the pool=a node only, keeps finding a foreign entry
// on the other, and follows a relabel both ways.
func TestKubeletSeesNodePools(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, "nodecreds-pools-")
	if err := cluster.Install(ctx, c.RESTConfig, filepath.Join(cluster.RepoRoot(), "deploy", "daemonset.yaml")); err != nil {
		t.Fatal(err)
	}
	const (
		ns    = "nodecreds"
		image = "pool.example.test/team/app:v1"
		other = "other.example.test/app"
	)
	nodes := c.Admin.CoreV1().Nodes()
	roots := map[string]string{}
	for name, pool := range map[string]string{"node-a": "a", "node-b": "b"} {
		if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"kubernetes.io/os": "linux", "pool": pool}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		roots[name] = t.TempDir()
	}
	testsupport.WriteFile(t, filepath.Join(roots["node-b"], "var/lib/kubelet/config.json"),
		`{"auths":{"other.example.test":{"auth":"`+testsupport.B64("theirs:their-pw")+`"}}}`, 0o600)
	if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry-credentials", Namespace: ns,
			Annotations: map[string]string{"nodecreds.io/node-selector": "pool=a"}},
		Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"pool.example.test":{"username":"alice","password":"pool-pw"}}}`)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, root := range roots {
		// The agent's token is bound to a Pod on its node, as the kubelet
		// gives it (nodecreds' admission policy requires it).
		kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", name)
		if err != nil {
			t.Fatal(err)
		}
		agent := exec.Command(binary, "sync", "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", name,
			"--host-root", root, "--metrics-addr", "0")
		testsupport.Start(t, "agent on "+name, agent)
	}
	// Both agents have reported their first sync.
	testsupport.Eventually(t, 20*time.Second, "both Nodes report RegistryCredentialsSynced=True", func() bool {
		for name := range roots {
			n, err := nodes.Get(ctx, name, metav1.GetOptions{})
			if err != nil || n.Annotations["nodecreds.io/revision"] == "" {
				return false
			}
		}
		return true
	})
	expect := func(node, img, user, pw string) bool {
		u, p, found := kubeletLookup(roots[node], img)
		if user == "" {
			return !found
		}
		return found && u == user && p == pw
	}
	for _, tc := range []struct{ node, img, user, pw string }{
		{"node-a", image, "alice", "pool-pw"},
		{"node-b", image, "", ""},
		{"node-b", other, "theirs", "their-pw"},
	} {
		if !expect(tc.node, tc.img, tc.user, tc.pw) {
			u, _, found := kubeletLookup(roots[tc.node], tc.img)
			t.Errorf("on %s the kubelet finds credentials for %s: %v (user %q); want user %q", tc.node, tc.img, found, u, tc.user)
		}
	}

	// The agents patch their Nodes meanwhile: read-modify-write, retried on
	// a conflict, as kubectl label is.
	relabel := func(name, pool string) {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := nodes.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Labels["pool"] = pool
			_, err = nodes.Update(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	relabel("node-b", "a")
	took := testsupport.Eventually(t, 10*time.Second, "the kubelet on node-b finds the pool's credentials after its relabel to a", func() bool {
		return expect("node-b", image, "alice", "pool-pw") && expect("node-b", other, "theirs", "their-pw")
	})
	t.Logf("relabel b→a to the kubelet's code finding the credentials: %s", took)
	relabel("node-a", "b")
	took = testsupport.Eventually(t, 10*time.Second, "the kubelet on node-a no longer finds them after its relabel to b", func() bool {
		return expect("node-a", image, "", "")
	})
	t.Logf("relabel a→b to the kubelet's code no longer finding them: %s", took)
}
